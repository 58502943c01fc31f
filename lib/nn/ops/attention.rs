//! Multi-head self-attention softmax(q k^T / sqrt(d_h)) v (Vaswani et al. 2017, eq. 1) from a
//! fused QKV projection, as one graph node.
//!
//! candle composes it from a permuted copy of qkv, two batched matrix products (which candle
//! runs one (sample, head) pair after another on one thread) and the softmax, and its backward
//! builds and accumulates a gradient for every intermediate. Here each sample is one parallel
//! task that multiplies its heads' blocks where they lie in qkv; the backward recomputes the
//! attention weights (L x L per head, cheap next to the projections) instead of keeping them:
//! with P = softmax(s q k^T), O = P v and s = 1 / sqrt(d_h),
//! dV = P^T dO, dP = dO v^T, dS = s P * (dP - rowsum(dP * P)), dQ = dS k, dK = dS^T q.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::gemm::{matmul_add, Mat};
use super::{dot, softmax_row};
use super::{par, slice};

/// Self-attention of `heads` heads over the tokens of qkv (N, L, 3D), whose last dimension is
/// [q | k | v] with head h at columns h D/heads.. of each part (`reshape(N, L, 3, heads, D/heads)`
/// order); the result is (N, L, D) with head h at columns h D/heads.. . Fused for f32 on the
/// CPU; None where it does not apply (the caller composes candle's ops).
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Option<Tensor>> {
    let applies = super::fused_for(qkv)
        && qkv.dtype() == DType::F32
        && qkv.rank() == 3
        && heads > 0
        && qkv.dim(2)? % (3 * heads) == 0;
    if !applies {
        return Ok(None);
    }
    let qkv = qkv.contiguous()?;
    let op = Attention { heads };
    if qkv.track_op() {
        Ok(Some(qkv.apply_op1(op)?))
    } else {
        Ok(Some(qkv.apply_op1_no_bwd(&op)?))
    }
}

/// The sizes of one sample's attention: L tokens, width D, `heads` heads of width dh.
#[derive(Clone, Copy)]
struct Dims {
    tokens: usize,
    width: usize,
    head_width: usize,
}

impl Dims {
    fn of(l: &Layout, heads: usize) -> Result<Dims> {
        let (_, tokens, three_d) = l.shape().dims3()?;
        Ok(Dims {
            tokens,
            width: three_d / 3,
            head_width: three_d / 3 / heads,
        })
    }

    /// Part `p` (0: q, 1: k, 2: v) of head `h` in one sample's qkv rows: (L, dh).
    fn part<'a>(&self, qkv: &'a [f32], p: usize, h: usize) -> Mat<'a> {
        Mat {
            data: &qkv[p * self.width + h * self.head_width..],
            rows: self.tokens,
            cols: self.head_width,
            row_stride: 3 * self.width,
            col_stride: 1,
        }
    }

    /// The transpose (dh, L) of [`Self::part`].
    fn part_t<'a>(&self, qkv: &'a [f32], p: usize, h: usize) -> Mat<'a> {
        let m = self.part(qkv, p, h);
        Mat {
            rows: m.cols,
            cols: m.rows,
            row_stride: m.col_stride,
            col_stride: m.row_stride,
            ..m
        }
    }

    /// Head `h`'s columns of one sample's (L, D) output or output gradient: (L, dh).
    fn head<'a>(&self, rows: &'a [f32], h: usize) -> Mat<'a> {
        Mat {
            data: &rows[h * self.head_width..],
            rows: self.tokens,
            cols: self.head_width,
            row_stride: self.width,
            col_stride: 1,
        }
    }

    /// Copies an (L, dh) `block` into columns `first..` of the rows of length `stride` of `dst`.
    fn put(&self, dst: &mut [f32], stride: usize, first: usize, block: &[f32]) {
        let cols = self.head_width;
        for (row, src) in dst.chunks_mut(stride).zip(block.chunks(cols)) {
            row[first..first + cols].copy_from_slice(src);
        }
    }

    /// 1 / sqrt(dh), the scale of the scores.
    fn scale(&self) -> f32 {
        1.0 / (self.head_width as f32).sqrt()
    }

    /// P = softmax(s q k^T) of head `h` into `p` (L, L), row by row.
    fn weights(&self, qkv: &[f32], h: usize, p: &mut [f32]) {
        p.fill(0.0);
        matmul_add(p, self.part(qkv, 0, h), self.part_t(qkv, 1, h));
        let s = self.scale();
        p.chunks_mut(self.tokens)
            .for_each(|row| softmax_row(row, s));
    }
}

/// Per-task buffers: the weights P and its gradient (L, L), one (L, dh) block.
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
    block: Vec<f32>,
}

impl Scratch {
    fn new(d: Dims) -> Scratch {
        Scratch {
            p: vec![0.0; d.tokens * d.tokens],
            dp: vec![0.0; d.tokens * d.tokens],
            block: vec![0.0; d.tokens * d.head_width],
        }
    }

    /// block = a b, from zero.
    fn product(&mut self, a: Mat, b: Mat) -> &[f32] {
        self.block.fill(0.0);
        matmul_add(&mut self.block, a, b);
        &self.block
    }
}

struct Attention {
    heads: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "flowpipe-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "attention")?;
        let d = Dims::of(l, self.heads)?;
        let n = l.dims()[0];
        let mut out = par::zeros(n * d.tokens * d.width);
        if d.tokens * d.width > 0 {
            let sample = d.tokens * d.width;
            let init = || Scratch::new(d);
            par::chunks_mut_with(&mut out, sample, init, |buf, i, out| {
                let x = par::chunk(x, 3 * sample, i);
                for h in 0..self.heads {
                    d.weights(x, h, &mut buf.p);
                    let p = std::mem::take(&mut buf.p);
                    let o = buf.product(Mat::row_major(&p, d.tokens, d.tokens), d.part(x, 2, h));
                    d.put(out, d.width, h * d.head_width, o);
                    buf.p = p;
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, d.tokens, d.width))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let op = AttentionGrad { heads: self.heads };
        Ok(Some(arg.detach().apply_op2_no_bwd(&grad, &op)?))
    }
}

/// dqkv (N, L, 3D) from qkv and dO (N, L, D), one sample per task.
struct AttentionGrad {
    heads: usize,
}

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "flowpipe-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            slice(s1, l1, "attention grad")?,
            slice(s2, l2, "attention grad")?,
        );
        let d = Dims::of(l1, self.heads)?;
        let sample = d.tokens * 3 * d.width;
        if g.len() * 3 != x.len() {
            candle_core::bail!("attention grad: {} values against {}", g.len(), x.len());
        }
        let mut dx = par::zeros(x.len());
        if sample > 0 {
            par::chunks_mut_with(
                &mut dx,
                sample,
                || Scratch::new(d),
                |buf, i, dx| {
                    let (x, g) = (par::chunk(x, sample, i), par::chunk(g, sample / 3, i));
                    for h in 0..self.heads {
                        self.head_grad(d, h, x, g, dx, buf);
                    }
                },
            );
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

impl AttentionGrad {
    /// Head `h`'s dq, dk, dv of one sample into `dx` (its (L, 3D) rows).
    fn head_grad(
        &self,
        d: Dims,
        h: usize,
        x: &[f32],
        g: &[f32],
        dx: &mut [f32],
        buf: &mut Scratch,
    ) {
        let (l, stride, col) = (d.tokens, 3 * d.width, h * d.head_width);
        d.weights(x, h, &mut buf.p);
        let (p, mut dp) = (std::mem::take(&mut buf.p), std::mem::take(&mut buf.dp));
        let dv = buf.product(Mat::transposed(&p, l, l), d.head(g, h));
        d.put(dx, stride, 2 * d.width + col, dv);
        dp.fill(0.0);
        matmul_add(&mut dp, d.head(g, h), d.part_t(x, 2, h));
        // dS = s P (dP - rowsum(dP P)), in place of dP.
        let s = d.scale();
        for (dp, p) in dp.chunks_mut(l).zip(p.chunks(l)) {
            let rowsum = dot(dp, p);
            for (dp, &p) in dp.iter_mut().zip(p) {
                *dp = s * p * (*dp - rowsum);
            }
        }
        let dq = buf.product(Mat::row_major(&dp, l, l), d.part(x, 1, h));
        d.put(dx, stride, col, dq);
        let dk = buf.product(Mat::transposed(&dp, l, l), d.part(x, 0, h));
        d.put(dx, stride, d.width + col, dk);
        (buf.p, buf.dp) = (p, dp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::attention_composed;
    use crate::nn::ops::testing::{assert_same_op, var};

    /// Against the composition of candle's ops (permute, batched matmuls, softmax), for several
    /// samples, heads and a token count that is not a multiple of any kernel width: values and
    /// the gradient of qkv.
    #[test]
    fn fused_attention_matches_the_composition() {
        let (n, l, heads, dh) = (3, 7, 2, 5);
        let qkv = var(11, 0, &[n, l, 3 * heads * dh]);
        let probe = var(11, 1, &[n, l, heads * dh]);
        let ours = attention(qkv.as_tensor(), heads).unwrap().unwrap();
        let theirs = attention_composed(qkv.as_tensor(), heads).unwrap();
        assert_same_op(&ours, &theirs, &probe, &[&qkv], (1e-5, 1e-4));
    }

    /// Without a gradient to track, the op still computes the same values.
    #[test]
    fn attention_without_gradients_gives_the_same_values() {
        let qkv = var(12, 0, &[2, 4, 12]);
        let tracked = attention(qkv.as_tensor(), 1).unwrap().unwrap();
        let data = attention(&qkv.as_tensor().detach(), 1).unwrap().unwrap();
        assert_eq!(
            crate::nn::ops::testing::values(&tracked),
            crate::nn::ops::testing::values(&data)
        );
    }
}
