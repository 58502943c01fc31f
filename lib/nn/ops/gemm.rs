//! Matrix products on slices, by the `gemm` crate that candle's own matrix product uses: for
//! fused ops that multiply tiles of their operands on the calling thread.
//!
//! A row of a product is the same bits however many rows are multiplied with it, so a
//! network's output for a sample does not depend on the batch, the tile or the part of a large
//! run it is computed in (CONVENTIONS: the same seed gives the same bytes however the batch is
//! split). gemm itself takes other kernels for small products; `gemm_raw` pads those.

use std::mem::MaybeUninit;

use super::par::{self, assume_init};

/// A matrix operand: `rows` x `cols` values of `data` at row and column strides.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (cols, rows) of a row-major (rows, cols) matrix.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat {
            data,
            rows: cols,
            cols: rows,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// Whether every element the strides reach lies in `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// Products with 2 to this many output columns and a column-major left operand (the weight
/// gradients of layers with few outputs: a VAE's 16-channel and latent convolutions, a 2D
/// field's last layer) are computed column-major and added transposed. gemm multiplies a
/// row-major output as its transpose, whose rows (our few columns) fill a fraction of its
/// kernel: 4 columns ran at a seventh of the speed, 16 columns (one AVX-512 vector) at 0.7 of
/// it (144 x 16 x 256: 91 -> 132 GFLOP/s). Left operands that are row-major would need
/// packing, and 32 columns or a single column gain nothing (measured per shape). The choice
/// looks at the columns and the layout only, never at the number of rows, so that a row's
/// result does not depend on the rows computed with it.
const NARROW_COLUMNS: usize = 16;

/// dst (a.rows x b.cols, row-major) += a b, on the calling thread (callers run tiles in
/// parallel), by the `gemm` crate that candle's own matrix product uses.
pub fn matmul_add(dst: &mut [f32], a: Mat, b: Mat) {
    assert!(a.cols == b.rows && dst.len() == a.rows * b.cols);
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul operand out of bounds"
    );
    if dst.is_empty() || a.cols == 0 {
        return;
    }
    let (rows, cols) = (a.rows, b.cols);
    if (2..=NARROW_COLUMNS).contains(&cols) && a.row_stride == 1 {
        let column_major = product_at(a, b, 1, rows);
        for (i, row) in dst.chunks_mut(cols).enumerate() {
            for (j, d) in row.iter_mut().enumerate() {
                *d += column_major[j * rows + i];
            }
        }
        return;
    }
    // SAFETY: the shapes and strides of both operands were checked against their slices, and
    // dst holds exactly a.rows x b.cols values, written through its exclusive borrow.
    unsafe { gemm_raw(dst.as_mut_ptr(), cols, 1, a, b, true) }
}

/// dst (a.rows x b.cols, row-major) = a b, written without being read (it may be
/// uninitialised), on the calling thread.
pub fn matmul_into(dst: &mut [MaybeUninit<f32>], a: Mat, b: Mat) {
    assert!(a.cols == b.rows && dst.len() == a.rows * b.cols);
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul operand out of bounds"
    );
    if dst.is_empty() {
        return;
    }
    if a.cols == 0 {
        dst.fill(MaybeUninit::new(0.0));
        return;
    }
    // SAFETY: dst holds exactly a.rows x b.cols values, borrowed exclusively, all of which gemm
    // writes without reading them (accumulate is false); a and b were checked.
    unsafe { gemm_raw(dst.as_mut_ptr().cast(), b.cols, 1, a, b, false) }
}

/// a b (a.rows x b.cols, row-major) as a new vector, on the calling thread.
pub fn matmul(a: Mat, b: Mat) -> Vec<f32> {
    assert!(a.cols == b.rows);
    assert!(
        a.in_bounds() && b.in_bounds(),
        "matmul operand out of bounds"
    );
    product_at(a, b, b.cols, 1)
}

/// a b in fresh memory at strides (row_stride, col_stride) that cover a.rows x b.cols values
/// exactly. gemm writes every value, so no pass zeroes the memory first (and a zeroed block of
/// a megabyte or more would be a fresh mapping whose every page faults when written: see
/// `crate::memory`). The operands must be in bounds.
fn product_at(a: Mat, b: Mat, row_stride: usize, col_stride: usize) -> Vec<f32> {
    let len = a.rows * b.cols;
    if a.cols == 0 {
        return vec![0.0; len];
    }
    let mut out = Vec::with_capacity(len);
    if len > 0 {
        // SAFETY: out has capacity for the a.rows x b.cols values the strides reach, all of
        // which gemm writes (it does not read them: accumulate is false); a and b were checked.
        unsafe {
            gemm_raw(out.as_mut_ptr(), row_stride, col_stride, a, b, false);
            out.set_len(len);
        }
    }
    out
}

/// dst = a b (+ dst where `accumulate`) for dst at the given row and column strides.
///
/// # Safety
/// dst must hold a.rows x b.cols values at those strides, borrowed exclusively; a and b must be
/// in bounds.
unsafe fn gemm_raw(
    dst: *mut f32,
    row_stride: usize,
    col_stride: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
) {
    let (rows, cols, k) = (a.rows, b.cols, a.cols);
    let fewest = fewest_rows(cols, k);
    if rows == 0 || rows >= fewest {
        return gemm_call(dst, row_stride, col_stride, a, b, accumulate);
    }
    // Too few rows for gemm's general kernel: compute them with zero rows added below, in a
    // scratch output laid out as dst is (and holding dst's values where they are added to).
    let padded = match a.col_stride {
        1 => pad_rows(a, fewest, |i, p| i * k + p),
        _ => pad_rows(a, fewest, |i, p| p * fewest + i),
    };
    let a_pad = match a.col_stride {
        1 => Mat::row_major(&padded, fewest, k),
        _ => Mat::transposed(&padded, k, fewest),
    };
    let (at_row, at_col) = if col_stride == 1 {
        (cols, 1)
    } else {
        (1, fewest)
    };
    let mut out = vec![0f32; fewest * cols];
    if accumulate {
        for i in 0..rows {
            for j in 0..cols {
                out[i * at_row + j * at_col] = *dst.add(i * row_stride + j * col_stride);
            }
        }
    }
    gemm_call(out.as_mut_ptr(), at_row, at_col, a_pad, b, accumulate);
    for i in 0..rows {
        for j in 0..cols {
            *dst.add(i * row_stride + j * col_stride) = out[i * at_row + j * at_col];
        }
    }
}

/// The fewest rows a product with `cols` output columns and inner dimension `k` is computed
/// with, so that gemm sums every output value in one order whatever the number of rows (and so
/// a sample's result does not depend on the batch or the tile it is computed in). gemm 0.19
/// takes other kernels for small products: a dot-product kernel where rows x cols <= 256, a
/// matrix-vector kernel for one row, and for at most 64 rows and 64 columns it blocks the inner
/// dimension in 512s where its general rule (for k > 512) blocks it into equal parts.
fn fewest_rows(cols: usize, k: usize) -> usize {
    let mut fewest = (256 / cols.max(1) + 1).max(2);
    if k > 512 && cols <= 64 {
        fewest = fewest.max(65);
    }
    fewest
}

/// The `rows` x k values of `a` with zero rows below, at index `at(row, p)`.
fn pad_rows(a: Mat, rows: usize, at: impl Fn(usize, usize) -> usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * a.cols];
    for i in 0..a.rows {
        for p in 0..a.cols {
            out[at(i, p)] = a.data[i * a.row_stride + p * a.col_stride];
        }
    }
    out
}

/// gemm itself, as [`gemm_raw`] (whose safety contract it has).
unsafe fn gemm_call(
    dst: *mut f32,
    row_stride: usize,
    col_stride: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst,
        col_stride as isize,
        row_stride as isize,
        accumulate,
        a.data.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b.data.as_ptr(),
        b.col_stride as isize,
        b.row_stride as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// An (m, o) row-major output whose rows start as a bias and then take
/// `add_tile(first_row, rows)`: each tile of `tile_rows` rows filled in parallel, with no pass
/// that zeroes the buffer first. `b` holds one bias (o values) for every row, or one for each
/// of `b.len() / o` equal groups of consecutive rows (the samples of a convolution's output).
pub fn biased_rows(
    m: usize,
    o: usize,
    b: &[f32],
    tile_rows: usize,
    add_tile: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(m * o);
    if let Some(biases) = b.len().checked_div(o) {
        let rows_per_bias = m.div_ceil(biases).max(1);
        par::chunks_mut(
            &mut y.spare_capacity_mut()[..m * o],
            tile_rows * o,
            |t, dst| {
                for (r, row) in dst.chunks_mut(o).enumerate() {
                    let group = (t * tile_rows + r) / rows_per_bias;
                    for (d, &bv) in row.iter_mut().zip(&b[group * o..(group + 1) * o]) {
                        d.write(bv);
                    }
                }
                // SAFETY: every value of `dst` holds its bias, written just above.
                add_tile(t * tile_rows, unsafe { assume_init(dst) });
            },
        );
    }
    // SAFETY: every chunk of the spare capacity was written above (the bias, then the tile).
    unsafe { y.set_len(m * o) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// matmul_add against the plain triple loop, for the output widths on both sides of the
    /// column-major path and left operands in both layouts, added to a non-zero output.
    #[test]
    fn products_of_every_width_and_layout_match_the_triple_loop() {
        let (rows, k) = (70, 13);
        let a: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for cols in 1..=NARROW_COLUMNS + 2 {
            let b: Vec<f32> = (0..k * cols).map(|i| (i as f32 * 0.91).cos()).collect();
            // a as a row-major (rows, k) matrix, and as the transpose of a row-major (k, rows).
            for (left, strides) in [
                (Mat::row_major(&a, rows, k), (k, 1)),
                (Mat::transposed(&a, k, rows), (1, rows)),
            ] {
                let at = |i: usize, p: usize| i * strides.0 + p * strides.1;
                let mut dst: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
                matmul_add(&mut dst, left, Mat::row_major(&b, k, cols));
                let product = matmul(left, Mat::row_major(&b, k, cols));
                for i in 0..rows {
                    for j in 0..cols {
                        let dot: f32 = (0..k).map(|p| a[at(i, p)] * b[p * cols + j]).sum();
                        let want = (i * cols + j) as f32 + dot;
                        let got = dst[i * cols + j];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "({i}, {j}) of {cols}: {got} vs {want}"
                        );
                        let got = product[i * cols + j];
                        assert!(
                            (got - dot).abs() < 1e-4,
                            "product ({i}, {j}): {got} vs {dot}"
                        );
                    }
                }
            }
        }
    }

    /// A row's product is the same bits whether it is computed alone, in a small tile or with
    /// all the others: for outputs narrow and wide, inner dimensions that gemm sums in one
    /// block or in several, both layouts of each operand, written or added to an output.
    #[test]
    fn a_rows_product_does_not_depend_on_the_rows_beside_it() {
        let all = 140;
        for k in [1, 3, 40, 600] {
            let a: Vec<f32> = (0..all * k).map(|i| (i as f32 * 0.37).sin()).collect();
            for cols in [1, 2, 5, 16, 17, 64, 65, 130] {
                let b: Vec<f32> = (0..k * cols).map(|i| (i as f32 * 0.91).cos()).collect();
                for b_mat in [Mat::row_major(&b, k, cols), Mat::transposed(&b, cols, k)] {
                    for a_rows in [true, false] {
                        // Rows first..first + n of a, in either layout.
                        let tile = |first: usize, n: usize| match a_rows {
                            true => Mat::row_major(&a[first * k..(first + n) * k], n, k),
                            false => Mat {
                                data: &a[first..],
                                rows: n,
                                cols: k,
                                row_stride: 1,
                                col_stride: all,
                            },
                        };
                        let whole = matmul(tile(0, all), b_mat);
                        let start = |first: usize, n: usize| -> Vec<f32> {
                            (first * cols..(first + n) * cols)
                                .map(|i| i as f32)
                                .collect()
                        };
                        let mut whole_added = start(0, all);
                        matmul_add(&mut whole_added, tile(0, all), b_mat);
                        for n in [1, 2, 3, 16, 64, 65] {
                            for first in [0, 7, all - n] {
                                let part = matmul(tile(first, n), b_mat);
                                let want = &whole[first * cols..(first + n) * cols];
                                assert!(part == want, "k {k}, {cols} cols, rows {first}+{n}");
                                let mut added = start(first, n);
                                matmul_add(&mut added, tile(first, n), b_mat);
                                let want = &whole_added[first * cols..(first + n) * cols];
                                assert!(added == want, "added: k {k}, {cols} cols, {first}+{n}");
                            }
                        }
                    }
                }
            }
        }
    }
}
