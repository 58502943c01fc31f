//! Parallel loops of the fused ops, run on candle's own CPU workers (the calling thread and
//! candle's barrier pool) rather than on a second pool of threads.
//!
//! candle runs its elementwise kernels on its barrier pool, whose worker spins for a while after
//! each kernel waiting for the next one. With our loops on rayon's pool as well, a 2-core
//! machine had three or four busy threads, the spinning one taking a core from the workers of
//! the next matrix product. On one pool the spinning worker is the one that picks up our next
//! loop, and the calling thread works instead of sleeping until the pool is done.
//!
//! The pool hands out index ranges from a shared cursor, so a loop's work is split the same
//! way on every run, whichever thread takes which part; callers combine partial results by
//! index, never by arrival, which keeps results bitwise reproducible.
//!
//! Loops must not nest: a parallel loop inside another one's body would wait on the pool that
//! is running it.

use candle_core::utils::barrier_pool;
use std::mem::MaybeUninit;
use std::ops::Range;

/// The number of threads that run a parallel loop.
pub fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// `f(range)` for consecutive ranges that together cover `0..n`, spread over the threads.
pub fn for_ranges(n: usize, f: impl Fn(Range<usize>) + Sync) {
    if n == 1 || threads() == 1 {
        f(0..n);
    } else if n > 1 {
        barrier_pool().execute_chunked(n, f);
    }
}

/// `f(i)` for every i in `0..n`, spread over the threads.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    for_ranges(n, |range| range.for_each(&f));
}

/// `f(i)` for every i in `0..n`, collected in index order.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    chunks_mut(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
    out.into_iter()
        .map(|r| r.expect("every index was computed"))
        .collect()
}

/// [`chunks_mut`] where each chunk also gives a result: the results in chunk order.
pub fn map_chunks_mut<T: Send, R: Send>(
    data: &mut [T],
    size: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..data.len().div_ceil(size.max(1)))
        .map(|_| None)
        .collect();
    chunks2_mut(data, size, &mut out, 1, |i, chunk, slot| {
        slot[0] = Some(f(i, chunk))
    });
    out.into_iter()
        .map(|r| r.expect("every chunk was computed"))
        .collect()
}

/// Values per task of [`zeros`] and of the elementwise loops that use [`fill`].
pub const FILL_CHUNK: usize = 1 << 15;

/// `len` zeros, written in parallel: a freshly allocated buffer is usually memory the allocator
/// kept, which `vec![0.0; len]` would clear on the calling thread alone.
pub fn zeros(len: usize) -> Vec<f32> {
    fill(len, FILL_CHUNK, |_, part| part.fill(MaybeUninit::new(0.0)))
}

/// A vector of `len` values whose chunks of `size` values `write(i, chunk)` writes, in
/// parallel, with no pass that zeroes it first. `write` must write every value of its chunk:
/// one it leaves would be read uninitialised, so this is only for the kernels of
/// [`crate::nn::ops`], each of which writes whole chunks.
pub(super) fn fill(
    len: usize,
    size: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    chunks_mut(&mut out.spare_capacity_mut()[..len], size, write);
    // SAFETY: each chunk was written by `write`, as its contract requires.
    unsafe { out.set_len(len) };
    out
}

/// [`fill`] for two vectors of `len` values at once: `write(i, a_i, b_i)` writes the i-th
/// chunks of both (every value, as for [`fill`]).
pub(super) fn fill2(
    len: usize,
    size: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let (sa, sb) = (
        &mut a.spare_capacity_mut()[..len],
        &mut b.spare_capacity_mut()[..len],
    );
    chunks2_mut(sa, size, sb, size, write);
    // SAFETY: each chunk of both was written by `write`, as its contract requires.
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

/// One vector of `len_a + len_b` values, [a; b], whose i-th chunks of a (`size_a` values) and
/// of b (`size_b`) `write(i, a_i, b_i)` writes in parallel; both parts must have as many
/// chunks, and `write` must write every value of both.
pub(super) fn fill_parts(
    (len_a, size_a): (usize, usize),
    (len_b, size_b): (usize, usize),
    write: impl Fn(usize, &mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let (size_a, size_b) = (size_a.max(1), size_b.max(1));
    assert_eq!(
        len_a.div_ceil(size_a),
        len_b.div_ceil(size_b),
        "fill_parts: both parts need as many chunks"
    );
    let mut out = Vec::with_capacity(len_a + len_b);
    let (a, b) = out.spare_capacity_mut()[..len_a + len_b].split_at_mut(len_a);
    chunks2_mut(a, size_a, b, size_b, write);
    // SAFETY: each chunk of both parts was written by `write`, as its contract requires.
    unsafe { out.set_len(len_a + len_b) };
    out
}

/// A chunk that [`fill`]'s `write` has written in full, as f32 (for kernels that read back
/// what they wrote, such as a product added onto a bias).
///
/// # Safety
///
/// Every element of `s` must have been written: reading an unwritten one is undefined
/// behaviour. (MaybeUninit<f32> has f32's layout, so the cast itself is sound.)
pub(super) unsafe fn assume_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller wrote every element; the layouts are the same.
    unsafe { &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `f(i, chunk)` for the i-th chunk of `size` values of `data` (the last may be shorter).
pub fn chunks_mut<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let parts = Parts::new(data, size);
    // SAFETY: the pool hands out each index once, so no chunk is borrowed twice.
    for_each(parts.count(), |i| f(i, unsafe { parts.get(i) }));
}

/// [`chunks_mut`] with scratch space: `f(scratch, i, chunk)`, where each run of consecutive
/// chunks that one thread takes shares one `init()`.
pub fn chunks_mut_with<T: Send, S>(
    data: &mut [T],
    size: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync,
) {
    let parts = Parts::new(data, size);
    for_ranges(parts.count(), |range| {
        let mut scratch = init();
        // SAFETY: as in chunks_mut: the ranges are disjoint.
        range.for_each(|i| f(&mut scratch, i, unsafe { parts.get(i) }));
    });
}

/// `f(i, a_i, b_i)` for the i-th chunks of `a` (of `size_a` values) and of `b` (of `size_b`),
/// for as many i as both have chunks.
pub fn chunks2_mut<A: Send, B: Send>(
    a: &mut [A],
    size_a: usize,
    b: &mut [B],
    size_b: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let (pa, pb) = (Parts::new(a, size_a), Parts::new(b, size_b));
    let n = pa.count().min(pb.count());
    // SAFETY: as in chunks_mut, for each of the two slices.
    for_each(n, |i| f(i, unsafe { pa.get(i) }, unsafe { pb.get(i) }));
}

/// The i-th chunk of `size` values of `data`, as `chunks(size).nth(i)` (empty past the end).
pub fn chunk<T>(data: &[T], size: usize, i: usize) -> &[T] {
    let lo = (i * size).min(data.len());
    &data[lo..(lo + size).min(data.len())]
}

/// A mutable slice cut into chunks that different threads borrow.
struct Parts<T> {
    ptr: *mut T,
    len: usize,
    size: usize,
}

// SAFETY: Parts only gives out disjoint chunks (see `get`), each to one thread at a time.
unsafe impl<T: Send> Sync for Parts<T> {}

impl<T> Parts<T> {
    fn new(data: &mut [T], size: usize) -> Parts<T> {
        Parts {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            size: size.max(1),
        }
    }

    fn count(&self) -> usize {
        self.len.div_ceil(self.size)
    }

    /// Chunk i. SAFETY: the caller borrows each chunk at most once at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, i: usize) -> &mut [T] {
        let lo = i * self.size;
        let hi = self.len.min(lo + self.size);
        std::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_value_once_in_order() {
        let mut data = vec![0usize; 1000];
        chunks_mut(&mut data, 7, |i, c| {
            for (j, v) in c.iter_mut().enumerate() {
                *v += i * 7 + j;
            }
        });
        assert!(data.iter().enumerate().all(|(i, &v)| v == i));
        let (mut a, mut b) = (vec![0usize; 30], vec![0usize; 10]);
        chunks2_mut(&mut a, 3, &mut b, 1, |i, a, b| {
            a.iter_mut().for_each(|v| *v = i);
            b[0] = i;
        });
        assert_eq!(b, (0..10).collect::<Vec<_>>());
        assert!(a.iter().enumerate().all(|(j, &v)| v == j / 3));
        assert_eq!(map(100, |i| i * i)[99], 99 * 99);
        assert_eq!(chunk(&[1, 2, 3, 4, 5], 2, 2), &[5]);
        assert!(chunk(&[1, 2, 3], 2, 5).is_empty());
    }
}
