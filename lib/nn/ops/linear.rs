//! The dense layer y = x W^T + b as one graph node, forward and backward.
//!
//! candle composes it from a matrix product and a bias add: two nodes, an extra pass over y
//! each way, and a gradient of the product's output built in a zero-filled buffer and added
//! to. Here the bias initialises the output and the product accumulates onto it; the backward
//! gives dx = dy W (skipped when x needs no gradient, e.g. the network's input), and dW = dy^T x
//! with db, the column sums of dy, by blocks of output features (no partial sums to add up).
//!
//! [`linear_act`] folds an activation f into the same node, y = f(x W^T + b): f is applied to
//! each tile of the product while it is in cache, and the backward takes dz = dy f'(z) from the
//! pre-activation z, which the op keeps (the output of the layer alone is one tensor in candle's
//! graph, so its gradient is built and accumulated once instead of twice).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

use super::gemm::{biased_rows, matmul_add, Mat};
use super::pointwise::{FusedGrad, GeluFn, Pointwise, SiluFn};
use super::{par, slice};

/// Rows of x per parallel task out of `m`: one share per thread, at most 512 rows (larger
/// tiles multiply in fewer, longer gemm calls; past 512 the operands leave the cache). The split
/// never changes a result: `gemm::matmul_add` sums every output row in one order whatever the
/// number of rows beside it (small tiles are padded past gemm's special small-product kernels).
fn tile_rows(m: usize) -> usize {
    m.div_ceil(par::threads())
        .next_multiple_of(64)
        .clamp(64, 512)
}

/// Output features per parallel task of the weight gradient: a fixed number, since the
/// feature blocks (unlike the row tiles) change how gemm sums a feature's gradient. Each
/// block's product packs the whole of x again, so wider blocks pack less: a DiT step was 2.5%
/// faster in blocks of 128 than of 64 (256 was slower: fewer tasks for the threads to share).
const TILE_FEATURES: usize = 128;

/// x (M, K) W^T (W: (O, K), PyTorch's layout) + b (O,) as one fused op for f32 on the CPU;
/// None where it does not apply (the caller composes candle's ops).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !fits(x, w, b)? {
        return Ok(None);
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    if x.track_op() || w.track_op() || b.track_op() {
        Ok(Some(x.apply_op3(&w, &b, Linear)?))
    } else {
        Ok(Some(x.apply_op3_no_bwd(&w, &b, &Linear)?))
    }
}

/// The activations [`linear_act`] folds into the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activated {
    Silu,
    /// Exact GELU, x Phi(x).
    Gelu,
}

/// f(x W^T + b) for the activation f, as one fused op for f32 on the CPU (see the module
/// docs); None where it does not apply.
pub fn linear_act(x: &Tensor, w: &Tensor, b: &Tensor, act: Activated) -> Result<Option<Tensor>> {
    match act {
        Activated::Silu => linear_then::<SiluFn>(x, w, b),
        Activated::Gelu => linear_then::<GeluFn>(x, w, b),
    }
}

fn linear_then<P: Pointwise>(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    if !fits(x, w, b)? {
        return Ok(None);
    }
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    let op = LinearAct::<P> {
        pre: OnceLock::new(),
        act: std::marker::PhantomData,
    };
    if x.track_op() || w.track_op() || b.track_op() {
        Ok(Some(x.apply_op3(&w, &b, op)?))
    } else {
        Ok(Some(x.apply_op3_no_bwd(&w, &b, &op)?))
    }
}

/// Whether the fused dense layer serves x (M, K), W (O, K), b (O,).
fn fits(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(super::fused_for(x)
        && [x, w, b].iter().all(|t| t.dtype() == DType::F32)
        && x.rank() == 2
        && w.rank() == 2
        && x.dim(1)? == w.dim(1)?
        && b.dims() == [w.dim(0)?])
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
        let z = product(s1, l1, s2, l2, s3, l3)?;
        // (M, O), O from W: z.len() / M would make an empty batch (0, 0).
        let shape = Shape::from((l1.dims()[0], l2.dims()[0]));
        Ok((CpuStorage::F32(z), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        dense_grads(x, w, &grad.detach().contiguous()?)
    }
}

/// x W^T + b from the storages of x (M, K), W (O, K) and b (O,): (M, O) row-major, by tiles of
/// rows that start as the bias.
fn product(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    s3: &CpuStorage,
    l3: &Layout,
) -> Result<Vec<f32>> {
    let dense = Dense::of(s1, l1, s2, l2, s3, l3)?;
    Ok(biased_rows(
        dense.m,
        dense.b.len(),
        dense.b,
        tile_rows(dense.m),
        |first, dst| dense.multiply_tile(first, dst),
    ))
}

/// The operands of a dense layer's forward: x (M, K), W (O, K), b (O,).
struct Dense<'a> {
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    m: usize,
    k: usize,
}

impl<'a> Dense<'a> {
    fn of(
        s1: &'a CpuStorage,
        l1: &Layout,
        s2: &'a CpuStorage,
        l2: &Layout,
        s3: &'a CpuStorage,
        l3: &Layout,
    ) -> Result<Dense<'a>> {
        let (m, k) = l1.shape().dims2()?;
        Ok(Dense {
            x: slice(s1, l1, "linear")?,
            w: slice(s2, l2, "linear")?,
            b: slice(s3, l3, "linear")?,
            m,
            k,
        })
    }

    /// Adds the rows first.. of x W^T to `dst` (those rows of the output).
    fn multiply_tile(&self, first: usize, dst: &mut [f32]) {
        let (k, o) = (self.k, self.b.len());
        let rows = dst.len() / o;
        let x_tile = Mat::row_major(&self.x[first * k..(first + rows) * k], rows, k);
        matmul_add(dst, x_tile, Mat::transposed(self.w, o, k));
    }
}

/// The gradients of a dense layer from dz, the gradient of its output x W^T + b: dx (None
/// when x needs none), dW and db.
fn dense_grads(
    x: &Tensor,
    w: &Tensor,
    dz: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (o, k) = w.dims2()?;
    let dx = match x.track_op() {
        true => Some(dz.apply_op2_no_bwd(&w.detach(), &InputGrad)?),
        false => None,
    };
    let params = dz.apply_op2_no_bwd(&x.detach(), &ParamGrad)?;
    let dw = params.narrow(0, 0, o * k)?.reshape((o, k))?;
    let db = params.narrow(0, o * k, o)?;
    Ok((dx, Some(dw), Some(db)))
}

/// f(x W^T + b) for the activation P, keeping z = x W^T + b for the backward.
struct LinearAct<P> {
    pre: OnceLock<Tensor>,
    act: std::marker::PhantomData<P>,
}

impl<P: Pointwise> CustomOp3 for LinearAct<P> {
    fn name(&self) -> &'static str {
        P::NAME
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
        let dense = Dense::of(s1, l1, s2, l2, s3, l3)?;
        let (m, o) = (dense.m, dense.b.len());
        let tile = tile_rows(m);
        let (z, y) = par::fill2(m * o, tile * o, |t, z, y| {
            for row in z.chunks_mut(o) {
                for (d, &bv) in row.iter_mut().zip(dense.b) {
                    d.write(bv);
                }
            }
            // SAFETY: every row of `z` holds the bias, written just above.
            let z = unsafe { par::assume_init(z) };
            dense.multiply_tile(t * tile, z);
            for (y, &z) in y.iter_mut().zip(z.iter()) {
                y.write(P::f(z));
            }
        });
        let shape = Shape::from((m, o));
        // Kept for the backward (set once: a second forward of this op object cannot happen).
        let _ = self
            .pre
            .set(Tensor::from_vec(z, shape.clone(), &Device::Cpu)?);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(z) = self.pre.get() else {
            candle_core::bail!("{}: backward before forward", P::NAME)
        };
        let dz = z.apply_op2_no_bwd(&grad.detach().contiguous()?, &FusedGrad(P::default()))?;
        dense_grads(x, w, &dz)
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
        let mut dx = par::zeros(m * k);
        if k > 0 {
            let tile = tile_rows(m);
            par::chunks_mut(&mut dx, tile * k, |t, dst| {
                let rows = dst.len() / k;
                let first = t * tile;
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
        let mut out = par::zeros(o * k + o);
        let (dw, db) = out.split_at_mut(o * k);
        if k > 0 && m > 0 {
            par::chunks2_mut(dw, TILE_FEATURES * k, db, TILE_FEATURES, |t, dw, db| {
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
    use crate::nn::ops::testing::{assert_same_op, probe_grads, values, var};
    use candle_core::Var;

    /// Against candle's matmul and broadcast add, over several row tiles and feature blocks:
    /// values and the gradients of x, W and b; no gradient for an input that needs none.
    #[test]
    fn fused_linear_matches_matmul_plus_bias() {
        let (m, k, o) = (1100, 7, 300);
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

    /// A row's output and its input gradient are the same bits whatever the rows beside it,
    /// so whatever the row tiles (which follow the batch and the thread count): the first rows
    /// of a product against the same product on those rows alone.
    #[test]
    fn a_row_does_not_depend_on_the_rows_beside_it() {
        let (m, k, o, rows) = (1100, 33, 300, 37);
        let (x, w, b) = (var(8, 0, &[m, k]), var(8, 1, &[o, k]), var(8, 2, &[o]));
        let probe = var(8, 3, &[m, o]);
        let first_rows = |v: &Var| {
            let t = v.as_tensor().narrow(0, 0, rows).unwrap();
            Var::from_tensor(&t.contiguous().unwrap()).unwrap()
        };
        let (x_part, probe_part) = (first_rows(&x), first_rows(&probe));
        let (w, b) = (w.as_tensor(), b.as_tensor());
        let full = linear(x.as_tensor(), w, b).unwrap().unwrap();
        let part = linear(x_part.as_tensor(), w, b).unwrap().unwrap();
        let head = |t: &Tensor| values(&t.narrow(0, 0, rows).unwrap());
        assert_eq!(head(&full), values(&part));
        let dx_full = probe_grads(&full, &probe).remove(x.as_tensor()).unwrap();
        let dx_part = probe_grads(&part, &probe_part)
            .remove(x_part.as_tensor())
            .unwrap();
        assert_eq!(head(&dx_full), values(&dx_part));
    }

    /// linear_act against linear then the fused activation, for both activations, over several
    /// row tiles: values and the gradients of x, W and b.
    #[test]
    fn linear_with_activation_matches_linear_then_activation() {
        let (m, k, o) = (300, 9, 40);
        let (x, w, b) = (var(7, 0, &[m, k]), var(7, 1, &[o, k]), var(7, 2, &[o]));
        let probe = var(7, 3, &[m, o]);
        let z = linear(x.as_tensor(), w.as_tensor(), b.as_tensor())
            .unwrap()
            .unwrap();
        for (act, then) in [
            (Activated::Silu, super::super::silu(&z).unwrap()),
            (Activated::Gelu, super::super::gelu(&z).unwrap()),
        ] {
            let ours = linear_act(x.as_tensor(), w.as_tensor(), b.as_tensor(), act)
                .unwrap()
                .unwrap();
            assert_same_op(&ours, &then, &probe, &[&x, &w, &b], (1e-5, 1e-3));
        }
    }
}
