//! The adaptive-norm modulation of the DiT (Peebles & Xie 2023) as fused ops: per-sample
//! vectors applied to every token, read where the block's modulation layer wrote them.
//!
//! A DiT block's modulation layer gives its k per-sample vectors side by side, m (N, k D).
//! Composed from candle's ops, each vector would be a narrowed view (whose backward copies the
//! gradient into a zero-padded tensor of all k vectors), the normalisation a tensor of its own
//! with its own gradient, and `x (1 + scale) + shift`, `z + gate h` broadcast ops whose
//! backward sums over the tokens by a strided reduction, each gradient added through a fresh
//! zero-filled buffer. Here each op reads its vectors from m by index: one pass forward, one
//! pass backward, the per-sample sums taken row by row.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::rows::inv_rms;
use super::{par, slice};

/// RMSNorm(x) (1 + scale) + shift for x (N, T, D), with shift and scale the vectors `shift`
/// and `shift + 1` of m (N, k D): adaLN, the normalisation without a gain (eps inside the
/// root, as [`super::rms_norm`]).
pub fn norm_modulate(x: &Tensor, m: &Tensor, shift: usize, eps: f64) -> Result<Tensor> {
    let d = vectors_fit(x, m, shift + 1)?;
    if fused(&[x, m]) {
        let op = NormModulate {
            shift,
            eps: eps as f32,
        };
        return x.contiguous()?.apply_op2(&m.contiguous()?, op);
    }
    let norm = crate::nn::layers::RmsNorm { weight: None, eps };
    let scale = (vector(m, shift + 1, d)? + 1.0)?;
    norm.normalise_composed(x)?
        .broadcast_mul(&scale)?
        .broadcast_add(&vector(m, shift, d)?)
}

/// z + gate h for z, h (N, T, D), with gate the vector `gate` of m (N, k D): a gated residual
/// connection.
pub fn gated_residual(z: &Tensor, h: &Tensor, m: &Tensor, gate: usize) -> Result<Tensor> {
    let d = vectors_fit(z, m, gate)?;
    if h.dims() != z.dims() {
        candle_core::bail!("gated residual: z {:?} against h {:?}", z.dims(), h.dims());
    }
    if fused(&[z, h, m]) {
        let (z, h, m) = (z.contiguous()?, h.contiguous()?, m.contiguous()?);
        return z.apply_op3(&h, &m, Gate(gate));
    }
    z + h.broadcast_mul(&vector(m, gate, d)?)?
}

/// D, after checking that x is (N, T, D) and m (N, k D) holds vector `last`.
fn vectors_fit(x: &Tensor, m: &Tensor, last: usize) -> Result<usize> {
    let (n, _, d) = x.dims3()?;
    let (mn, kd) = m.dims2()?;
    if mn != n || d == 0 || kd % d != 0 || last >= kd / d {
        candle_core::bail!(
            "modulation: x {:?} and vectors {:?} (vector {last} of width {d} wanted)",
            x.dims(),
            m.dims()
        );
    }
    Ok(d)
}

/// Whether the fused ops apply: f32 on the CPU.
fn fused(ts: &[&Tensor]) -> bool {
    super::fused_for(ts[0]) && ts.iter().all(|t| t.dtype() == DType::F32)
}

/// Vector i of m (N, k D) as (N, 1, D), for the composed path.
fn vector(m: &Tensor, i: usize, d: usize) -> Result<Tensor> {
    m.narrow(1, i * d, d)?.unsqueeze(1)
}

/// (N, T, D, k D) from the layouts of x and m.
fn sizes(x: &Layout, m: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (n, t, d) = x.shape().dims3()?;
    let (_, kd) = m.shape().dims2()?;
    Ok((n, t, d, kd))
}

/// The forward of [`norm_modulate`].
struct NormModulate {
    shift: usize,
    eps: f32,
}

impl CustomOp2 for NormModulate {
    fn name(&self) -> &'static str {
        "flowpipe-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, m) = (slice(s1, l1, op)?, slice(s2, l2, op)?);
        let (n, t, d, kd) = sizes(l1, l2)?;
        let (block, s) = (t * d, self.shift * d);
        let y = par::fill(n * block, block, |i, y| {
            let (shift, scale) = (&m[i * kd + s..][..d], &m[i * kd + s + d..][..d]);
            for (yr, xr) in y.chunks_mut(d).zip(x[i * block..].chunks(d)) {
                let r = inv_rms(xr, self.eps);
                for j in 0..d {
                    yr[j].write(xr[j] * r * (1.0 + scale[j]) + shift[j]);
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let grads = g.apply_op3_no_bwd(&x.detach(), &m.detach(), &NormModulateGrad(self))?;
        let (dx, dm) = split(&grads, x, m)?;
        Ok((Some(dx), Some(dm)))
    }
}

/// [dx; dm] of [`norm_modulate`] from (g, x, m). With y = x r the normalised row and
/// u = g (1 + scale): dx = r (u - y mean(u y)); d shift = sum over tokens of g,
/// d scale = that of g y; the other vectors of m get zeros.
struct NormModulateGrad<'a>(&'a NormModulate);

impl CustomOp3 for NormModulateGrad<'_> {
    fn name(&self) -> &'static str {
        "flowpipe-norm-modulate-grad"
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
        let op = self.name();
        let (g, x, m) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (n, t, d, kd) = sizes(l1, l3)?;
        let (block, s, eps) = (t * d, self.0.shift * d, self.0.eps);
        let out = par::fill_parts((n * block, block), (n * kd, kd), |i, dx, dm| {
            let scale = &m[i * kd + s + d..][..d];
            dm.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: `dm` was zeroed just above.
            let dm = unsafe { par::assume_init(dm) };
            let (d_shift, rest) = dm[s..].split_at_mut(d);
            let d_scale = &mut rest[..d];
            let rows = g[i * block..].chunks(d).zip(x[i * block..].chunks(d));
            for (dxr, (gr, xr)) in dx.chunks_mut(d).zip(rows) {
                let r = inv_rms(xr, eps);
                let mut dot = 0f32;
                for j in 0..d {
                    let y = xr[j] * r;
                    d_shift[j] += gr[j];
                    d_scale[j] += gr[j] * y;
                    dot += gr[j] * (1.0 + scale[j]) * y;
                }
                let mean = dot / d as f32;
                for j in 0..d {
                    let u = gr[j] * (1.0 + scale[j]);
                    dxr[j].write(r * (u - xr[j] * r * mean));
                }
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The forward of [`gated_residual`]: the index of the gate in m.
struct Gate(usize);

impl CustomOp3 for Gate {
    fn name(&self) -> &'static str {
        "flowpipe-gated-residual"
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
        let op = self.name();
        let (z, h, m) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (n, t, d, kd) = sizes(l1, l3)?;
        let block = t * d;
        let y = par::fill(n * block, block, |i, y| {
            let gate = &m[i * kd + self.0 * d..][..d];
            let rows = z[i * block..].chunks(d).zip(h[i * block..].chunks(d));
            for (yr, (zr, hr)) in y.chunks_mut(d).zip(rows) {
                for j in 0..d {
                    yr[j].write(zr[j] + gate[j] * hr[j]);
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _z: &Tensor,
        h: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let grads = g.apply_op3_no_bwd(&h.detach(), &m.detach(), &GateGrad(self.0))?;
        let (dh, dm) = split(&grads, h, m)?;
        Ok((Some(g), Some(dh), Some(dm)))
    }
}

/// [dh; dm] of [`gated_residual`] from (g, h, m): dh = gate g, d gate = the sum over tokens
/// of g h, zeros for the other vectors of m.
struct GateGrad(usize);

impl CustomOp3 for GateGrad {
    fn name(&self) -> &'static str {
        "flowpipe-gated-residual-grad"
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
        let op = self.name();
        let (g, h, m) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (n, t, d, kd) = sizes(l1, l3)?;
        let (block, at) = (t * d, self.0 * d);
        let out = par::fill_parts((n * block, block), (n * kd, kd), |i, dh, dm| {
            let gate = &m[i * kd + at..][..d];
            dm.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: `dm` was zeroed just above.
            let d_gate = &mut unsafe { par::assume_init(dm) }[at..at + d];
            let rows = g[i * block..].chunks(d).zip(h[i * block..].chunks(d));
            for (dhr, (gr, hr)) in dh.chunks_mut(d).zip(rows) {
                for j in 0..d {
                    dhr[j].write(gr[j] * gate[j]);
                    d_gate[j] += gr[j] * hr[j];
                }
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The [d (N, T, D); dm (N, k D)] buffer of a backward op as two tensors shaped like x and m.
fn split(grads: &Tensor, x: &Tensor, m: &Tensor) -> Result<(Tensor, Tensor)> {
    let total = x.elem_count();
    Ok((
        grads.narrow(0, 0, total)?.reshape(x.shape())?,
        grads.narrow(0, total, m.elem_count())?.reshape(m.shape())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::RmsNorm;
    use crate::nn::ops::testing::{assert_same_op, var};

    /// Both fused ops against candle's composition (narrowed vectors, RMSNorm, broadcast ops):
    /// values and every gradient, the vectors read from the middle of m.
    #[test]
    fn fused_modulation_and_gate_match_the_composed_ops() {
        let (n, t, d, k) = (3, 5, 4, 6);
        let (x, h, m) = (
            var(5, 0, &[n, t, d]),
            var(5, 1, &[n, t, d]),
            var(5, 2, &[n, k * d]),
        );
        let probe = var(5, 4, &[n, t, d]);
        let (xt, ht, mt) = (x.as_tensor(), h.as_tensor(), m.as_tensor());
        let at = |i: usize| vector(mt, i, d).unwrap();
        let norm = RmsNorm::plain();
        let composed = norm
            .normalise_composed(xt)
            .unwrap()
            .broadcast_mul(&(at(3) + 1.0).unwrap())
            .unwrap()
            .broadcast_add(&at(2))
            .unwrap();
        let ours = norm_modulate(xt, mt, 2, norm.eps).unwrap();
        assert_same_op(&ours, &composed, &probe, &[&x, &m], (1e-5, 1e-4));
        let composed = (xt + ht.broadcast_mul(&at(4)).unwrap()).unwrap();
        let ours = gated_residual(xt, ht, mt, 4).unwrap();
        assert_same_op(&ours, &composed, &probe, &[&x, &h, &m], (1e-6, 1e-5));
    }

    /// A vector index past m, or m for another batch, is an error naming both shapes.
    #[test]
    fn vectors_outside_m_are_refused() {
        let (x, m) = (var(6, 0, &[2, 3, 4]), var(6, 1, &[2, 8]));
        let err = norm_modulate(x.as_tensor(), m.as_tensor(), 1, 1e-6).unwrap_err();
        assert!(err.to_string().contains("[2, 8]"), "{err}");
        assert!(gated_residual(x.as_tensor(), x.as_tensor(), m.as_tensor(), 2).is_err());
        let other_batch = var(6, 2, &[3, 8]);
        assert!(gated_residual(x.as_tensor(), x.as_tensor(), other_batch.as_tensor(), 0).is_err());
    }
}
