//! Matrix products on slices, by the `gemm` crate that candle's own matrix product uses: for
//! fused ops that multiply tiles of their operands on the calling thread.

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
    // SAFETY: the shapes and strides of both operands were checked against their slices, and
    // dst holds exactly a.rows x b.cols values, written through its exclusive borrow.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            true,
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
    if o > 0 {
        let rows_per_bias = m.div_ceil(b.len() / o).max(1);
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
                add_tile(t * tile_rows, assume_init(dst));
            },
        );
    }
    // SAFETY: every chunk of the spare capacity was written above (the bias, then the tile).
    unsafe { y.set_len(m * o) };
    y
}
