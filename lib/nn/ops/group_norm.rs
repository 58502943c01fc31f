//! GroupNorm over channels-last images as one fused op, forward and backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::slice;

/// GroupNorm over channels-last samples, y = gamma (x - mu_g) / sqrt(var_g + eps) + beta
/// (Wu & He 2018), fused on the CPU: x (N, ..., C) contiguous f32, gamma and beta (C,). The
/// moments of each group of each sample are sums over its pixels and its C / G channels; the
/// backward pass recomputes them and gives, with x^ the normalised input and the means over a
/// group, dx = (dy gamma - mean(dy gamma) - x^ mean(dy gamma x^)) / sqrt(var + eps),
/// dgamma = sum dy x^, dbeta = sum dy. candle's composition of the same formula takes about
/// twenty passes forward and back, each with a fresh buffer. None where it does not apply
/// (another device or dtype): the caller composes candle's ops.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
) -> Result<Option<Tensor>> {
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.rank() >= 2
        && groups > 0
        && x.dims()[x.rank() - 1] % groups == 0;
    if !fused {
        return Ok(None);
    }
    let op = GroupNormOp {
        groups,
        eps: eps as f32,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        op,
    )?))
}

#[derive(Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
}

impl GroupNormOp {
    /// (mean, 1 / sqrt(var + eps)) of each group of one sample (P pixels x C channels).
    fn moments(&self, x: &[f32], c: usize) -> Vec<(f32, f32)> {
        let per = c / self.groups;
        let mut sums = vec![(0f64, 0f64); self.groups];
        for row in x.chunks(c) {
            for (g, part) in row.chunks(per).enumerate() {
                let (s, q) = part
                    .iter()
                    .fold((0f32, 0f32), |(s, q), &v| (s + v, q + v * v));
                sums[g].0 += s as f64;
                sums[g].1 += q as f64;
            }
        }
        let count = (x.len() / c * per) as f64;
        sums.iter()
            .map(|&(s, q)| {
                let mean = s / count;
                let var = (q / count - mean * mean).max(0.0);
                (mean as f32, (1.0 / (var + self.eps as f64).sqrt()) as f32)
            })
            .collect()
    }

    /// The sample size P C and the channels C of a layout (N, ..., C).
    fn sizes(l: &Layout) -> (usize, usize) {
        let dims = l.dims();
        let c = dims[dims.len() - 1];
        (dims[1..].iter().product(), c)
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "flowpipe-group-norm"
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
        let x = slice(s1, l1, "group norm")?;
        let (gamma, beta) = (slice(s2, l2, "group norm")?, slice(s3, l3, "group norm")?);
        let (size, c) = Self::sizes(l1);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!(
                "group norm: {c} channels, gamma {} beta {}",
                gamma.len(),
                beta.len()
            );
        }
        let per = c / self.groups;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(size.max(1))
            .zip(x.par_chunks(size.max(1)))
            .for_each(|(y, x)| {
                let m = self.moments(x, c);
                for (yr, xr) in y.chunks_mut(c).zip(x.chunks(c)) {
                    for (ch, (yv, &xv)) in yr.iter_mut().zip(xr).enumerate() {
                        let (mean, rstd) = m[ch / per];
                        *yv = (xv - mean) * rstd * gamma[ch] + beta[ch];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let x = x.detach();
        let gamma_v: Vec<f32> = gamma.detach().to_vec1()?;
        let dx = x.apply_op2_no_bwd(
            &grad,
            &GroupNormGrad {
                op: *self,
                gamma: gamma_v,
            },
        )?;
        let params = x.apply_op2_no_bwd(&grad, &GroupNormParamGrad(*self))?;
        Ok((Some(dx), Some(params.get(0)?), Some(params.get(1)?)))
    }
}

/// dx of [`group_norm`] from x and dy.
struct GroupNormGrad {
    op: GroupNormOp,
    gamma: Vec<f32>,
}

impl CustomOp2 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "flowpipe-group-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            slice(s1, l1, "group norm grad")?,
            slice(s2, l2, "group norm grad")?,
        );
        let (size, c) = GroupNormOp::sizes(l1);
        let (groups, per) = (self.op.groups, c / self.op.groups);
        let gamma = &self.gamma;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(size.max(1))
            .zip(x.par_chunks(size.max(1)).zip(dy.par_chunks(size.max(1))))
            .for_each(|(dx, (x, dy))| {
                let m = self.op.moments(x, c);
                // Per group: the sums of dy gamma and of dy gamma x^.
                let mut acc = vec![(0f64, 0f64); groups];
                for (xr, dr) in x.chunks(c).zip(dy.chunks(c)) {
                    for (ch, (&xv, &dv)) in xr.iter().zip(dr).enumerate() {
                        let (mean, rstd) = m[ch / per];
                        let g = dv * gamma[ch];
                        acc[ch / per].0 += g as f64;
                        acc[ch / per].1 += (g * (xv - mean) * rstd) as f64;
                    }
                }
                let count = (x.len() / c * per) as f64;
                let means: Vec<(f32, f32)> = acc
                    .iter()
                    .map(|&(a, b)| ((a / count) as f32, (b / count) as f32))
                    .collect();
                for ((or, xr), dr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
                    for (ch, ((o, &xv), &dv)) in or.iter_mut().zip(xr).zip(dr).enumerate() {
                        let (mean, rstd) = m[ch / per];
                        let (a, b) = means[ch / per];
                        let xhat = (xv - mean) * rstd;
                        *o = rstd * (dv * gamma[ch] - a - xhat * b);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// (dgamma, dbeta) of [`group_norm`] from x and dy: a (2, C) tensor.
struct GroupNormParamGrad(GroupNormOp);

impl CustomOp2 for GroupNormParamGrad {
    fn name(&self) -> &'static str {
        "flowpipe-group-norm-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            slice(s1, l1, "group norm grad")?,
            slice(s2, l2, "group norm grad")?,
        );
        let (size, c) = GroupNormOp::sizes(l1);
        let per = c / self.0.groups;
        let partial: Vec<Vec<f64>> = x
            .par_chunks(size.max(1))
            .zip(dy.par_chunks(size.max(1)))
            .map(|(x, dy)| {
                let m = self.0.moments(x, c);
                let mut acc = vec![0f64; 2 * c];
                for (xr, dr) in x.chunks(c).zip(dy.chunks(c)) {
                    for (ch, (&xv, &dv)) in xr.iter().zip(dr).enumerate() {
                        let (mean, rstd) = m[ch / per];
                        acc[ch] += (dv * (xv - mean) * rstd) as f64;
                        acc[c + ch] += dv as f64;
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; 2 * c];
        for (i, o) in out.iter_mut().enumerate() {
            *o = partial.iter().map(|p| p[i]).sum::<f64>() as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}
