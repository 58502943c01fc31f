//! The tools' global allocator (each binary declares it with [`crate::tool_allocator`]): the
//! system's (glibc's malloc, tuned by [`keep_freed_memory`]), except that large zero-filled
//! blocks are fresh
//! anonymous mappings, which the kernel backs with its shared zero page until they are written.
//!
//! Why: candle's backward pass starts the gradient sum of every graph node as a zero tensor and
//! adds the node's first gradient to it. From the heap, each such zero tensor costs a memset of
//! megabytes and then a read of them from memory: 6% and a third of a further 9% of a U-Net
//! training step. A fresh mapping costs neither: the add reads one zero page that stays in
//! cache (one fault per 2 MiB where transparent huge pages are allowed), and the block is
//! unmapped, never having been written, when the sum replaces it. A zeroed block that is then
//! written costs page faults instead of a memset, as glibc's own large blocks do.
//!
//! Linux only; elsewhere, and for blocks the table below cannot take, the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// The alignment and granule of mapped blocks: a huge page, so that reads fault once per 2 MiB.
const HUGE_PAGE: usize = 2 << 20;

/// Zeroed blocks of at least this many bytes are mapped. Smaller ones would take 4 KiB pages
/// (a fault for each) and an unmapping: slower than the heap's memset (2D MLP step +10% at a
/// threshold of 1 MiB).
const MIN_MAPPED: usize = HUGE_PAGE;

/// How many mapped blocks can be live at once (a backward pass holds a few dozen); beyond it,
/// zeroed blocks come from the system allocator.
const SLOTS: usize = 1024;

/// The system allocator with large zeroed blocks mapped (see the module docs).
pub struct Allocator;

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        #[cfg(test)]
        largest::note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        #[cfg(test)]
        largest::note(layout.size());
        if layout.size() >= MIN_MAPPED && layout.align() <= 4096 {
            if let Some(p) = mapped::alloc(layout.size()) {
                return p;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= MIN_MAPPED && mapped::free(ptr) {
            return;
        }
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(test)]
        largest::note(new_size);
        if layout.size() >= MIN_MAPPED && mapped::contains(ptr) {
            // SAFETY: the caller's contract (non-zero size, align of `layout`).
            let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                mapped::free(ptr);
            }
            return new;
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the system.
///
/// A training step allocates and frees the same few-megabyte buffers over and over; by default
/// glibc serves each from fresh pages (mmap, or a heap it trims back after each free), and the
/// page faults that follow cost about a third of a CPU step. Raising the mmap threshold to its
/// maximum (32 MiB) and never trimming keeps those pages mapped. No effect off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use libc::{mallopt, M_MMAP_THRESHOLD, M_TOP_PAD, M_TRIM_THRESHOLD};
        // SAFETY: mallopt only sets allocator tunables; any value is safe to pass.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}

#[cfg(target_os = "linux")]
mod mapped {
    use super::{HUGE_PAGE, SLOTS};
    use std::sync::Mutex;

    use libc::{madvise, mmap, munmap, MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE};
    use libc::{PROT_READ, PROT_WRITE};

    /// The live mapped blocks: (address, mapped length); address 0 is a free slot. A lock
    /// taken only for blocks of a megabyte or more, a few hundred times a training step.
    static BLOCKS: Mutex<[(usize, usize); SLOTS]> = Mutex::new([(0, 0); SLOTS]);

    /// A fresh mapping of at least `size` bytes, aligned to a huge page, registered in a free
    /// slot; `None` when there is none or the kernel refuses.
    pub(super) fn alloc(size: usize) -> Option<*mut u8> {
        let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let slot = blocks.iter().position(|&(p, _)| p == 0)?;
        let len = size.next_multiple_of(HUGE_PAGE);
        let spare = len + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping; no existing memory is touched. The parts
        // before the aligned start and after its end are unmapped again, and the advice only
        // allows huge pages in what remains.
        unsafe {
            let base = mmap(
                std::ptr::null_mut(),
                spare,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == MAP_FAILED {
                return None;
            }
            let base = base.cast::<u8>();
            let start = (base as usize).next_multiple_of(HUGE_PAGE);
            let head = start - base as usize;
            if head > 0 {
                munmap(base.cast(), head);
            }
            munmap((start + len) as *mut libc::c_void, spare - head - len);
            madvise(start as *mut libc::c_void, len, MADV_HUGEPAGE);
            blocks[slot] = (start, len);
            Some(start as *mut u8)
        }
    }

    /// Unmaps `ptr` if it is a mapped block: whether it was.
    pub(super) fn free(ptr: *mut u8) -> bool {
        let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = blocks.iter().position(|&(p, _)| p == ptr as usize) else {
            return false;
        };
        let (p, len) = std::mem::take(&mut blocks[slot]);
        // SAFETY: (p, len) is a mapping made by `alloc` and not yet unmapped; the caller is
        // done with it (GlobalAlloc::dealloc's contract).
        unsafe { munmap(p as *mut libc::c_void, len) };
        true
    }

    /// Whether `ptr` is a live mapped block.
    pub(super) fn contains(ptr: *mut u8) -> bool {
        let blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        blocks.iter().any(|&(p, _)| p == ptr as usize)
    }
}

#[cfg(not(target_os = "linux"))]
mod mapped {
    pub(super) fn alloc(_size: usize) -> Option<*mut u8> {
        None
    }
    pub(super) fn free(_ptr: *mut u8) -> bool {
        false
    }
    pub(super) fn contains(_ptr: *mut u8) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_zeroed_blocks_are_zero_writable_and_freed() {
        let n = 3 * MIN_MAPPED / 4 + 17;
        let mut v = vec![0f32; n]; // 6 MiB and a little: mapped
        assert!(v.iter().all(|&x| x == 0.0));
        if cfg!(target_os = "linux") {
            assert!(mapped::contains(v.as_mut_ptr().cast()));
        }
        v[0] = 1.0;
        v[n - 1] = 2.0;
        v.push(3.0); // grows: moved to the system allocator, values kept
        assert_eq!((v[0], v[n - 1], v[n], v[1]), (1.0, 2.0, 3.0, 0.0));
        assert!(!mapped::contains(v.as_mut_ptr().cast()));
        if cfg!(target_os = "linux") {
            // Handed back once, by `free` itself (checking the table after a drop would race
            // with other tests' blocks mapped at the same address).
            let mut w = std::mem::ManuallyDrop::new(vec![0u8; MIN_MAPPED]);
            assert!(
                mapped::free(w.as_mut_ptr()),
                "a live block is found and unmapped"
            );
        }
    }

    #[test]
    fn small_blocks_are_the_system_allocators() {
        let v = vec![0f32; 1000];
        assert!(!mapped::contains(v.as_ptr() as *mut u8));
        assert!(v.iter().all(|&x| x == 0.0));
    }
}

/// The largest single allocation the current thread has asked for since [`largest::reset`]:
/// the property tests' measure of "never allocates more than the input can justify".
#[cfg(test)]
pub(crate) mod largest {
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    pub(crate) fn reset() {
        let _ = LARGEST.try_with(|l| l.set(0));
    }

    pub(crate) fn get() -> usize {
        LARGEST.try_with(Cell::get).unwrap_or(0)
    }
}

/// The machine's physical memory in bytes, where the system says.
pub fn physical() -> Option<u128> {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| pages as u128 * size as u128)
}

/// A byte count as people read it: `8.0 TB`, `512.0 MB`.
pub fn human(bytes: u128) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// Refuses, before allocating, a buffer of the product of `factors` bytes (e.g. `[n, dim, 4]`)
/// that cannot fit this machine's memory: a usage error (exit 2) whose message starts with
/// `what`, the flag and value that asked for it, e.g. `--each 100000000000 needs 8.0 TB for
/// the labels, more than this machine's 16.0 GB of memory`.
pub fn check_fits(what: impl std::fmt::Display, factors: &[u128]) -> crate::Result<()> {
    let need = factors.iter().try_fold(1u128, |a, &b| a.checked_mul(b));
    let total = physical().unwrap_or(u128::MAX);
    match need {
        Some(n) if n <= total => Ok(()),
        Some(n) => crate::usage_bail!(
            "{what} needs {}, more than this machine's {} of memory",
            human(n),
            human(total)
        ),
        None => crate::usage_bail!("{what} needs more memory than a computer can address"),
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    #[test]
    fn sizes_beyond_memory_are_refused_with_the_flag() {
        assert!(check_fits("-n 10", &[10, 4]).is_ok());
        let err = check_fits("-n 1000000000000000", &[1_000_000_000_000_000, 4]).unwrap_err();
        assert!(crate::error::is_usage(&err));
        let msg = err.to_string();
        assert!(
            msg.starts_with("-n 1000000000000000 needs 4.0 PB, more than this machine's "),
            "{msg}"
        );
        let err = check_fits("--x0 n=3", &[u128::MAX, 2]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--x0 n=3 needs more memory than a computer can address"
        );
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(16_000_000_000), "16.0 GB");
    }
}
