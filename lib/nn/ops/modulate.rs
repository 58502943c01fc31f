//! The adaptive-norm modulation of the DiT (Peebles & Xie 2023) as fused ops: per-sample
//! vectors applied to every token.
//!
//! candle composes `x (1 + scale) + shift` and `z + gate h` from broadcast ops, whose backward
//! sums the gradient of each (N, 1, D) vector over the tokens by a strided reduction and adds
//! through fresh zero-filled buffers; here each op is one pass forward and one pass backward,
//! the per-sample sums taken row by row.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{par, slice};

/// x (1 + scale) + shift for x (N, T, D) and shift, scale (N, D), per sample n.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    apply(Kind::Modulate, x, shift, scale)
}

/// z + gate h for z, h (N, T, D) and gate (N, D): a gated residual connection.
pub fn gated_residual(z: &Tensor, h: &Tensor, gate: &Tensor) -> Result<Tensor> {
    apply(Kind::Gate, z, h, gate)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// a (1 + c) + b, with a (N, T, D) and b, c (N, D).
    Modulate,
    /// a + b c, with a, b (N, T, D) and c (N, D).
    Gate,
}

/// The fused op where it applies (f32 on the CPU), else candle's broadcast ops.
fn apply(kind: Kind, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Tensor> {
    let (n, _, d) = a.dims3()?;
    let row_shaped = |t: &Tensor| t.reshape((n, d));
    let (b, c) = match kind {
        Kind::Modulate => (row_shaped(b)?, row_shaped(c)?),
        Kind::Gate => (b.clone(), row_shaped(c)?),
    };
    let fused = a.device().is_cpu() && [a, &b, &c].iter().all(|t| t.dtype() == DType::F32);
    if fused {
        let (a, b, c) = (a.contiguous()?, b.contiguous()?, c.contiguous()?);
        return a.apply_op3(&b, &c, Modulation(kind));
    }
    let per_sample = |t: &Tensor| t.reshape((n, 1, d));
    match kind {
        Kind::Modulate => a
            .broadcast_mul(&(per_sample(&c)? + 1.0)?)?
            .broadcast_add(&per_sample(&b)?),
        Kind::Gate => a + b.broadcast_mul(&per_sample(&c)?)?,
    }
}

struct Modulation(Kind);

impl Modulation {
    /// (N, T D, D) of the (N, T, D) layout.
    fn sizes(l: &Layout) -> Result<(usize, usize, usize)> {
        let (n, t, d) = l.shape().dims3()?;
        Ok((n, t * d, d))
    }
}

impl CustomOp3 for Modulation {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Modulate => "flowpipe-modulate",
            Kind::Gate => "flowpipe-gated-residual",
        }
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
        let (a, b, c) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (n, block, d) = Self::sizes(l1)?;
        let b_len = if self.0 == Kind::Gate {
            n * block
        } else {
            n * d
        };
        if b.len() != b_len || c.len() != n * d {
            candle_core::bail!("{op}: operands of {} and {} values", b.len(), c.len());
        }
        let kind = self.0;
        let mut y = a.to_vec();
        if d > 0 {
            par::chunks_mut(&mut y, block.max(1), |i, y| {
                let c = &c[i * d..(i + 1) * d];
                for (k, row) in y.chunks_mut(d).enumerate() {
                    match kind {
                        Kind::Modulate => {
                            let b = &b[i * d..(i + 1) * d];
                            for j in 0..d {
                                row[j] = row[j] * (1.0 + c[j]) + b[j];
                            }
                        }
                        Kind::Gate => {
                            let b = &b[i * block + k * d..i * block + (k + 1) * d];
                            for j in 0..d {
                                row[j] += b[j] * c[j];
                            }
                        }
                    }
                }
            });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.detach().contiguous()?;
        let (n, t, d) = g.dims3()?;
        let total = n * t * d;
        // The tensor the per-sample vector multiplies: x for the modulation, h for the gate.
        let x = match self.0 {
            Kind::Modulate => a,
            Kind::Gate => b,
        };
        // One buffer: g times the vector (or 1 + it), then the sums of g and of g x (N, D).
        let all = g.apply_op3_no_bwd(&x.detach(), &c.detach(), &ModulationGrad(self.0))?;
        let g_v = all.narrow(0, 0, total)?.reshape((n, t, d))?;
        let sum_g = all.narrow(0, total, n * d)?.reshape((n, d))?;
        let sum_gx = all.narrow(0, total + n * d, n * d)?.reshape((n, d))?;
        match self.0 {
            Kind::Modulate => Ok((Some(g_v), Some(sum_g), Some(sum_gx))),
            Kind::Gate => Ok((Some(g), Some(g_v), Some(sum_gx))),
        }
    }
}

/// The backward of [`Modulation`] from (g, x, v), x the tensor the per-sample vector v
/// multiplies: [g (1 + v) or g v; the per-sample column sums of g; those of g x].
struct ModulationGrad(Kind);

impl CustomOp3 for ModulationGrad {
    fn name(&self) -> &'static str {
        "flowpipe-modulation-grad"
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
        let (g, x, v) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        let (n, block, d) = Modulation::sizes(l1)?;
        if x.len() != g.len() || v.len() != n * d {
            candle_core::bail!("{op}: mismatched operands");
        }
        let add_one = self.0 == Kind::Modulate;
        let mut out = par::zeros(n * block + 2 * n * d);
        let (g_v, sums) = out.split_at_mut(n * block);
        let (sum_g, sum_gx) = sums.split_at_mut(n * d);
        if d > 0 && block > 0 {
            // Per sample: g v into g_v, and [sum g; sum g x] returned.
            let per_sample = par::map_chunks_mut(g_v, block, |i, g_v| {
                let rows = i * block..(i + 1) * block;
                let v = &v[i * d..(i + 1) * d];
                let (g, x) = (&g[rows.clone()], &x[rows]);
                let mut acc = vec![0f32; 2 * d];
                let (sum_g, sum_gx) = acc.split_at_mut(d);
                for ((gr, xr), or) in g.chunks(d).zip(x.chunks(d)).zip(g_v.chunks_mut(d)) {
                    for j in 0..d {
                        let factor = if add_one { 1.0 + v[j] } else { v[j] };
                        or[j] = gr[j] * factor;
                        sum_g[j] += gr[j];
                        sum_gx[j] += gr[j] * xr[j];
                    }
                }
                acc
            });
            for (i, acc) in per_sample.iter().enumerate() {
                sum_g[i * d..(i + 1) * d].copy_from_slice(&acc[..d]);
                sum_gx[i * d..(i + 1) * d].copy_from_slice(&acc[d..]);
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::testing::{assert_same_op, var};
    use candle_core::Var;

    /// Both fused ops against candle's broadcast composition: values and every gradient.
    #[test]
    fn fused_modulation_and_gate_match_the_broadcast_ops() {
        let (n, t, d) = (3, 5, 4);
        let (x, h, u, v) = (
            var(5, 0, &[n, t, d]),
            var(5, 1, &[n, t, d]),
            var(5, 2, &[n, 1, d]),
            var(5, 3, &[n, 1, d]),
        );
        let probe = var(5, 4, &[n, t, d]);
        let cases: [(Tensor, Tensor, Vec<&Var>); 2] = [
            (
                modulate(x.as_tensor(), u.as_tensor(), v.as_tensor()).unwrap(),
                x.as_tensor()
                    .broadcast_mul(&(v.as_tensor() + 1.0).unwrap())
                    .unwrap()
                    .broadcast_add(u.as_tensor())
                    .unwrap(),
                vec![&x, &u, &v],
            ),
            (
                gated_residual(x.as_tensor(), h.as_tensor(), v.as_tensor()).unwrap(),
                (x.as_tensor() + h.as_tensor().broadcast_mul(v.as_tensor()).unwrap()).unwrap(),
                vec![&x, &h, &v],
            ),
        ];
        for (ours, theirs, vars) in cases {
            assert_same_op(&ours, &theirs, &probe, &vars, (1e-6, 1e-5));
        }
    }
}
