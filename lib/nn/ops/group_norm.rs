//! GroupNorm over channels-last images as one fused op, forward and backward, optionally
//! followed by SiLU (the U-Net's and the VAE's "norm, then activation").

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::pointwise::{Pointwise, SiluFn};
use super::{par, slice};

/// What [`group_norm`] applies to the normalised output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterNorm {
    /// The GroupNorm alone.
    Identity,
    /// SiLU(GroupNorm(x)), the "norm, then activation" of the residual blocks.
    Silu,
}

/// GroupNorm over channels-last samples, y = gamma (x - mu_g) / sqrt(var_g + eps) + beta
/// (Wu & He 2018), fused on the CPU: x (N, ..., C) contiguous f32, gamma and beta (C,). The
/// moments of each group of each sample are sums over its pixels and its C / G channels; the
/// backward pass recomputes them and gives, with x^ the normalised input and the means over a
/// group, dx = (dy gamma - mean(dy gamma) - x^ mean(dy gamma x^)) / sqrt(var + eps),
/// dgamma = sum dy x^, dbeta = sum dy. candle's composition of the same formula takes about
/// twenty passes forward and back, each with a fresh buffer. With [`AfterNorm::Silu`], y = SiLU(z) for z the
/// normalised output, and dy above is dy SiLU'(z) (z recomputed). None where it does not apply
/// (another device or dtype): the caller composes candle's ops.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    after: AfterNorm,
) -> Result<Option<Tensor>> {
    let fused = super::fused_for(x)
        && x.dtype() == DType::F32
        && x.rank() >= 2
        && groups > 0
        && x.dims()[x.rank() - 1].is_multiple_of(groups);
    if !fused {
        return Ok(None);
    }
    let op = GroupNormOp {
        groups,
        eps: eps as f32,
        silu: after == AfterNorm::Silu,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        op,
    )?))
}

/// Pixels whose moments are summed in f32 before they are added in f64.
const MOMENT_BLOCK: usize = 64;

#[derive(Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl GroupNormOp {
    /// (mean, 1 / sqrt(var + eps)) of each group of one sample (P pixels x C channels). The
    /// sums run per channel across the pixels (a loop over C that vectorises), in f32 over
    /// blocks of [`MOMENT_BLOCK`] pixels that are then added in f64, and are gathered into
    /// groups at the end.
    fn moments(&self, x: &[f32], c: usize) -> Vec<(f32, f32)> {
        let per = c / self.groups;
        let mut sums = vec![(0f64, 0f64); self.groups];
        let (mut s, mut q) = (vec![0f32; c], vec![0f32; c]);
        for block in x.chunks(MOMENT_BLOCK * c) {
            s.fill(0.0);
            q.fill(0.0);
            let (s, q) = (&mut s[..c], &mut q[..c]);
            for row in block.chunks(c) {
                let row = &row[..c];
                for ch in 0..c {
                    s[ch] += row[ch];
                    q[ch] += row[ch] * row[ch];
                }
            }
            for ch in 0..c {
                sums[ch / per].0 += s[ch] as f64;
                sums[ch / per].1 += q[ch] as f64;
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

    /// The moments of each channel's group, laid out per channel: (mean, rstd) of channel ch.
    fn per_channel(&self, x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
        let m = self.moments(x, c);
        let per = c / self.groups;
        (0..c).map(|ch| m[ch / per]).unzip()
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
        let size = size.max(1);
        let y = par::fill(x.len(), size, |i, y| {
            let x = par::chunk(x, size, i);
            // z = (x - mean) rstd gamma + beta = x scale + shift, per channel of this sample;
            // the loops zip slices without a branch inside, so that they vectorise.
            let (mean, rstd) = self.per_channel(x, c);
            let scale: Vec<f32> = rstd.iter().zip(gamma).map(|(r, g)| r * g).collect();
            let shift: Vec<f32> = (mean.iter().zip(&scale).zip(beta))
                .map(|((m, a), b)| b - m * a)
                .collect();
            let rows = y.chunks_mut(c).zip(x.chunks(c));
            if self.silu {
                for (yr, xr) in rows {
                    for (((y, &x), &a), &b) in yr.iter_mut().zip(xr).zip(&scale).zip(&shift) {
                        y.write(SiluFn::f(x * a + b));
                    }
                }
            } else {
                for (yr, xr) in rows {
                    for (((y, &x), &a), &b) in yr.iter_mut().zip(xr).zip(&scale).zip(&shift) {
                        y.write(x * a + b);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let x = x.detach();
        let op = GroupNormGrad {
            op: *self,
            gamma: gamma.detach().to_vec1()?,
            beta: beta.detach().to_vec1()?,
        };
        // One buffer: dx, then dgamma and dbeta.
        let all = x.apply_op2_no_bwd(&grad, &op)?;
        let (n, c) = (x.elem_count(), op.gamma.len());
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = all.narrow(0, n, c)?;
        let dbeta = all.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients of [`group_norm`] from x and dy in three passes per sample (moments; the
/// group and channel sums; dx): one flat tensor holding dx, dgamma and dbeta.
struct GroupNormGrad {
    op: GroupNormOp,
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl GroupNormGrad {
    /// dx of one sample into `dx`; returns its (dgamma, dbeta) sums, 2 C values.
    fn sample(&self, dx: &mut [f32], x: &[f32], dy: &[f32], c: usize) -> Vec<f64> {
        let (groups, per) = (self.op.groups, c / self.op.groups);
        let (gamma, beta) = (&self.gamma, &self.beta);
        let (mean, rstd) = self.op.per_channel(x, c);
        // Per group: the sums of dz gamma and of dz gamma x^; per channel: dz x^ and dz, with
        // dz = dy (or dy SiLU'(z)). dz gamma is kept in dx for the last pass.
        let mut group_sums = vec![(0f64, 0f64); groups];
        let mut params = vec![0f64; 2 * c];
        let mut sums = [vec![0f32; c], vec![0f32; c], vec![0f32; c], vec![0f32; c]];
        let per_channel = [&mean[..c], &rstd[..c], &gamma[..c], &beta[..c]];
        match self.op.silu {
            true => first_pass::<true>(dx, x, dy, per_channel, &mut sums),
            false => first_pass::<false>(dx, x, dy, per_channel, &mut sums),
        }
        let [sum_g, sum_gx, sum_dzx, sum_dz] = sums;
        for ch in 0..c {
            group_sums[ch / per].0 += sum_g[ch] as f64;
            group_sums[ch / per].1 += sum_gx[ch] as f64;
            params[ch] += sum_dzx[ch] as f64;
            params[c + ch] += sum_dz[ch] as f64;
        }
        // dx = rstd (dz gamma - a - x^ b) with a, b the group means of dz gamma and dz gamma
        // x^: per channel, dx = rstd dz gamma + x k1 + k0.
        let count = (x.len() / c * per) as f64;
        let (mut k1, mut k0) = (vec![0f32; c], vec![0f32; c]);
        for ch in 0..c {
            let (a, b) = group_sums[ch / per];
            let (a, b) = ((a / count) as f32, (b / count) as f32);
            k1[ch] = -rstd[ch] * rstd[ch] * b;
            k0[ch] = -rstd[ch] * a - k1[ch] * mean[ch];
        }
        let (rstd, k1, k0) = (&rstd[..c], &k1[..c], &k0[..c]);
        for (dr, xr) in dx.chunks_mut(c).zip(x.chunks(c)) {
            let (dr, xr) = (&mut dr[..c], &xr[..c]);
            for ch in 0..c {
                dr[ch] = dr[ch] * rstd[ch] + xr[ch] * k1[ch] + k0[ch];
            }
        }
        params
    }
}

/// The first pass of [`GroupNormGrad::sample`] over rows of C channels: dz gamma into `dx`, and
/// per channel the sums of dz gamma, dz gamma x^, dz x^ and dz, with dz = dy (or dy SiLU'(z)).
/// SILU is a constant and every slice is C long, so the channel loop has no branch and no
/// bounds check and vectorises.
fn first_pass<const SILU: bool>(
    dx: &mut [f32],
    x: &[f32],
    dy: &[f32],
    [mean, rstd, gamma, beta]: [&[f32]; 4],
    [sum_g, sum_gx, sum_dzx, sum_dz]: &mut [Vec<f32>; 4],
) {
    let c = mean.len();
    let (sum_g, sum_gx) = (&mut sum_g[..c], &mut sum_gx[..c]);
    let (sum_dzx, sum_dz) = (&mut sum_dzx[..c], &mut sum_dz[..c]);
    let (rstd, gamma, beta) = (&rstd[..c], &gamma[..c], &beta[..c]);
    for ((dr, xr), gr) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
        let (dr, xr, gr) = (&mut dr[..c], &xr[..c], &gr[..c]);
        for ch in 0..c {
            let xhat = (xr[ch] - mean[ch]) * rstd[ch];
            let dz = match SILU {
                true => gr[ch] * SiluFn::df(xhat * gamma[ch] + beta[ch]),
                false => gr[ch],
            };
            let g = dz * gamma[ch];
            dr[ch] = g;
            sum_g[ch] += g;
            sum_gx[ch] += g * xhat;
            sum_dzx[ch] += dz * xhat;
            sum_dz[ch] += dz;
        }
    }
}

impl candle_core::CustomOp2 for GroupNormGrad {
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
        let mut out = par::zeros(x.len() + 2 * c);
        let (dx, params) = out.split_at_mut(x.len());
        let size = size.max(1);
        let partial = par::map_chunks_mut(dx, size, |i, dx| {
            let (x, dy) = (par::chunk(x, size, i), par::chunk(dy, size, i));
            self.sample(dx, x, dy, c)
        });
        for (i, o) in params.iter_mut().enumerate() {
            *o = partial.iter().map(|p| p[i]).sum::<f64>() as f32;
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}
