//! The dense layer y = x W^T + b as one graph node, forward and backward.
//!
//! candle composes it from a matrix product and a bias add: two nodes, an extra pass over y
//! each way, and a gradient of the product's output built in a zero-filled buffer and added
//! to. Here the bias initialises the output and the product accumulates onto it; the backward
//! gives dx = dy W (skipped when x needs no gradient, e.g. the network's input), and dW = dy^T x
//! with db, the column sums of dy, by blocks of output features (no partial sums to add up).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{biased_rows, matmul_add, Mat};
use super::slice;

/// Rows of x per parallel task: a fixed size, so results do not depend on the thread count.
const TILE_ROWS: usize = 128;

/// Output features per parallel task of the weight gradient.
const TILE_FEATURES: usize = 32;

/// x (M, K) W^T (W: (O, K), PyTorch's layout) + b (O,) as one fused op for f32 on the CPU;
/// None where it does not apply (the caller composes candle's ops).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let fused = x.device().is_cpu()
        && [x, w, b].iter().all(|t| t.dtype() == DType::F32)
        && x.rank() == 2
        && w.rank() == 2
        && x.dim(1)? == w.dim(1)?
        && b.dims() == [w.dim(0)?];
    if !fused {
        return Ok(None);
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    if x.track_op() || w.track_op() || b.track_op() {
        Ok(Some(x.apply_op3(&w, &b, Linear)?))
    } else {
        Ok(Some(x.apply_op3_no_bwd(&w, &b, &Linear)?))
    }
}

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "flowpipe-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            slice(s1, l1, "linear")?,
            slice(s2, l2, "linear")?,
            slice(s3, l3, "linear")?,
        );
        let (m, k) = l1.shape().dims2()?;
        let o = b.len();
        let y = biased_rows(m, b, TILE_ROWS, |first, dst| {
            let rows = dst.len() / o;
            let x_tile = Mat::row_major(&x[first * k..(first + rows) * k], rows, k);
            matmul_add(dst, x_tile, Mat::transposed(w, o, k));
        });
        Ok((CpuStorage::F32(y), Shape::from((m, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let (o, k) = w.dims2()?;
        let dx = match x.track_op() {
            true => Some(g.apply_op2_no_bwd(&w.detach(), &InputGrad)?),
            false => None,
        };
        let params = g.apply_op2_no_bwd(&x.detach(), &ParamGrad)?;
        let dw = params.narrow(0, 0, o * k)?.reshape((o, k))?;
        let db = params.narrow(0, o * k, o)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// dx = dy W: (M, O) (O, K) -> (M, K), by tiles of rows.
struct InputGrad;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "flowpipe-linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, w) = (slice(s1, l1, "linear grad")?, slice(s2, l2, "linear grad")?);
        let (m, o) = l1.shape().dims2()?;
        let (_, k) = l2.shape().dims2()?;
        let mut dx = vec![0f32; m * k];
        if k > 0 {
            dx.par_chunks_mut(TILE_ROWS * k)
                .enumerate()
                .for_each(|(t, dst)| {
                    let rows = dst.len() / k;
                    let first = t * TILE_ROWS;
                    let g_tile = Mat::row_major(&g[first * o..(first + rows) * o], rows, o);
                    matmul_add(dst, g_tile, Mat::row_major(w, o, k));
                });
        }
        Ok((CpuStorage::F32(dx), Shape::from((m, k))))
    }
}

/// [dW (O, K) row-major; db (O,)] from dy (M, O) and x (M, K), by blocks of output features:
/// dW[f] = sum over rows of dy[:, f] x, db[f] = sum over rows of dy[:, f].
struct ParamGrad;

impl CustomOp2 for ParamGrad {
    fn name(&self) -> &'static str {
        "flowpipe-linear-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, x) = (slice(s1, l1, "linear grad")?, slice(s2, l2, "linear grad")?);
        let (m, o) = l1.shape().dims2()?;
        let (_, k) = l2.shape().dims2()?;
        let mut out = vec![0f32; o * k + o];
        let (dw, db) = out.split_at_mut(o * k);
        if k > 0 && m > 0 {
            dw.par_chunks_mut(TILE_FEATURES * k)
                .zip(db.par_chunks_mut(TILE_FEATURES))
                .enumerate()
                .for_each(|(t, (dw, db))| {
                    let first = t * TILE_FEATURES;
                    let features = db.len();
                    // dy[:, first..first + features]^T: features x M, at strides (1, O).
                    let g_cols = Mat {
                        data: &g[first..],
                        rows: features,
                        cols: m,
                        row_stride: 1,
                        col_stride: o,
                    };
                    matmul_add(dw, g_cols, Mat::row_major(x, m, k));
                    for row in g.chunks(o) {
                        for (s, &v) in db.iter_mut().zip(&row[first..first + features]) {
                            *s += v;
                        }
                    }
                });
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::testing::{assert_same_op, probe_grads, var};

    /// Against candle's matmul and broadcast add, over several row tiles and feature blocks:
    /// values and the gradients of x, W and b; no gradient for an input that needs none.
    #[test]
    fn fused_linear_matches_matmul_plus_bias() {
        let (m, k, o) = (300, 7, 70);
        let (x, w, b) = (var(6, 0, &[m, k]), var(6, 1, &[o, k]), var(6, 2, &[o]));
        let probe = var(6, 3, &[m, o]);
        let ours = linear(x.as_tensor(), w.as_tensor(), b.as_tensor())
            .unwrap()
            .unwrap();
        let theirs = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert_same_op(&ours, &theirs, &probe, &[&x, &w, &b], (1e-5, 1e-3));
        let data = x.as_tensor().detach();
        let y = linear(&data, w.as_tensor(), b.as_tensor())
            .unwrap()
            .unwrap();
        let g = probe_grads(&y, &probe);
        assert!(g.get(&data).is_none() && g.get(w.as_tensor()).is_some());
    }
}
