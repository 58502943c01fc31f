//! Fused tensor operations that make CPU training faster than composing candle's primitives.
//!
//! - [`silu`]: SiLU(x) = x sigmoid(x) (Elfwing et al. 2018), the MLP's activation. candle
//!   builds its backward pass from about nine elementwise passes (neg, exp, add, recip, ...);
//!   here the forward is one pass and the backward one pass computing
//!   d SiLU / dx = s (1 + x (1 - s)), s = sigmoid(x), times the incoming gradient.
//! - [`add_bias`]: y = x + b with b broadcast over rows. candle's backward sums the gradient
//!   over the batch with a strided reduction that costs as much as the layer's matmul; here the
//!   bias gradient is a row-by-row accumulation.
//!
//! - [`gather_rows`]: out[m] = x[index[m]] (or a zero row), the "im2col" gather of the
//!   convolutions. candle's index_select and its backward, index_add, copy one row at a time
//!   on one thread, and the backward first builds a zero tensor and copies it; here both run in
//!   parallel, the backward over the source rows through the inverse index (each source row
//!   has one writer: no atomics, and the same sums in the same order on every run).
//!
//! The fused paths serve f32 tensors on the CPU; any other tensor goes through candle's own
//! operations, so CUDA works unchanged.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3};
use candle_core::{DType, Layout};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Elements per parallel chunk of an elementwise loop.
const CHUNK: usize = 1 << 14;

/// SiLU(x) = x sigmoid(x), with a fused backward pass on the CPU.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Fused(SiluFn))
    } else {
        x.silu()
    }
}

/// Whether an elementwise loop over `n` values is worth splitting over the thread pool.
fn parallel(n: usize) -> bool {
    n >= 2 * CHUNK && rayon::current_num_threads() > 1
}

/// x + b, b: (C,) broadcast over the leading dimensions of x (..., C).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && x.dtype() == DType::F32
        && b.dtype() == DType::F32
        && b.rank() == 1
        && x.rank() >= 1
        && x.dims()[x.rank() - 1] == b.dim(0)?;
    if fused {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}

/// 1 / (1 + e^-x) with [`exp`].
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// e^x for f32 in plain arithmetic that the compiler vectorises (libm's `expf` is a call per
/// value, a quarter of a training step). e^x = 2^n e^r with n = round(x / ln 2) and
/// |r| <= ln 2 / 2, e^r by its Taylor polynomial of degree 7 (remainder < r^8 / 8! ~ 5e-8);
/// ln 2 split in two parts so that r is exact. Relative error below 3e-7 over the f32 range;
/// inputs are clamped to [-87, 88] (results below 1.7e-38 are flushed towards 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    #[allow(clippy::manual_clamp)] // max/min vectorise; clamp's NaN check does not
    let x = x.max(-87.0).min(88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // 2^n from the integer in t's low bits: (n + 127) into the exponent field (integer
    // arithmetic on the bits, which vectorises where a float-to-int cast does not).
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// f applied to every value, in parallel chunks for long slices. Indexed loops over
/// preallocated slices vectorise; `collect` does not.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let kernel = |y: &mut [f32], x: &[f32]| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f(x);
        }
    };
    let mut y = vec![0f32; x.len()];
    if parallel(x.len()) {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| kernel(y, x));
    } else {
        kernel(&mut y, x);
    }
    y
}

/// f applied to every pair (x_i, g_i), as [`map1`].
fn map2(x: &[f32], g: &[f32], op: &str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Vec<f32>> {
    if x.len() != g.len() {
        candle_core::bail!("{op}: {} values against {}", x.len(), g.len());
    }
    let kernel = |o: &mut [f32], x: &[f32], g: &[f32]| {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
            *o = f(x, g);
        }
    };
    let mut out = vec![0f32; x.len()];
    if parallel(x.len()) {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| kernel(o, x, g));
    } else {
        kernel(&mut out, x, g);
    }
    Ok(out)
}

/// erf(x) by Abramowitz & Stegun 7.1.26, 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-x^2)
/// with t = 1 / (1 + p |x|), odd in x: absolute error below 2e-7 (1.5e-7 for the formula, plus
/// f32 rounding), and branch-free so that it vectorises, where libm's `erff` is a call per value.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// Exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (Hendrycks & Gimpel 2016), with a fused
/// backward pass on the CPU: d GELU / dx = Phi(x) + x phi(x), phi the standard normal density.
/// candle's `gelu_erf` evaluates libm's erf per value and builds its backward from about ten
/// elementwise passes.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Fused(GeluFn))
    } else {
        x.gelu_erf()
    }
}

/// Phi(x), the standard normal distribution function.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

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

/// A pointwise activation f with its derivative, for a fused op with a one-pass backward.
/// Generic (not fn pointers) so that each kernel is inlined and vectorised.
trait Pointwise: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    const GRAD_NAME: &'static str;
    fn f(x: f32) -> f32;
    fn df(x: f32) -> f32;
}

/// SiLU(x) = x sigmoid(x); d/dx = s (1 + x (1 - s)), s = sigmoid(x).
#[derive(Clone, Copy)]
struct SiluFn;

impl Pointwise for SiluFn {
    const NAME: &'static str = "flowpipe-silu";
    const GRAD_NAME: &'static str = "flowpipe-silu-grad";
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x * sigmoid(x)
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        let s = sigmoid(x);
        s * (1.0 + x * (1.0 - s))
    }
}

/// GELU(x) = x Phi(x); d/dx = Phi(x) + x phi(x), phi(x) = e^(-x^2 / 2) / sqrt(2 pi).
#[derive(Clone, Copy)]
struct GeluFn;

impl Pointwise for GeluFn {
    const NAME: &'static str = "flowpipe-gelu";
    const GRAD_NAME: &'static str = "flowpipe-gelu-grad";
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x * normal_cdf(x)
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        // 1 / sqrt(2 pi)
        const INV_SQRT_TAU: f32 = 0.398_942_3;
        normal_cdf(x) + x * INV_SQRT_TAU * exp(-0.5 * x * x)
    }
}

/// The fused op of a [`Pointwise`] activation: one pass forward, one pass backward.
struct Fused<P>(P);

impl<P: Pointwise> CustomOp1 for Fused<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map1(slice(s, l, P::NAME)?, P::f);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &FusedGrad(self.0))?))
    }
}

/// grad * f'(x), from x and grad.
struct FusedGrad<P>(P);

impl<P: Pointwise> CustomOp2 for FusedGrad<P> {
    fn name(&self) -> &'static str {
        P::GRAD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, P::GRAD_NAME)?, slice(s2, l2, P::GRAD_NAME)?);
        let out = map2(x, g, P::GRAD_NAME, |x, g| g * P::df(x))?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `f(out_row, in_row)` over the rows of length `d` of `x`, in parallel blocks of rows.
fn map_rows(x: &[f32], d: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    if d > 0 {
        let block = d * (CHUNK / d).max(1);
        y.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(y, x)| y.chunks_mut(d).zip(x.chunks(d)).for_each(|(y, x)| f(y, x)));
    }
    y
}

/// `f(out_row, a_row, b_row)` over the rows of length `d` of `a` and `b`, as [`map_rows`].
fn map_rows2(
    a: &[f32],
    b: &[f32],
    d: usize,
    op: &str,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: {} values against {}", a.len(), b.len());
    }
    let mut y = vec![0f32; a.len()];
    if d > 0 {
        let block = d * (CHUNK / d).max(1);
        y.par_chunks_mut(block)
            .zip(a.par_chunks(block).zip(b.par_chunks(block)))
            .for_each(|(y, (a, b))| {
                for ((y, a), b) in y.chunks_mut(d).zip(a.chunks(d)).zip(b.chunks(d)) {
                    f(y, a, b)
                }
            });
    }
    Ok(y)
}

/// The length of the last dimension of a layout.
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// softmax over the last dimension, y_i = e^(x_i - max x) / sum_j e^(x_j - max x), fused on
/// the CPU with the backward dx = y (dy - sum_j dy_j y_j) in one pass (candle 0.11's own
/// `softmax_last_dim` has no backward at all). None off the CPU or for another dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softmax)?))
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "flowpipe-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map_rows(slice(s, l, "softmax")?, last_dim(l), |y, x| {
            let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f32;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = exp(x - m);
                sum += *y;
            }
            let inv = 1.0 / sum;
            y.iter_mut().for_each(|y| *y *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.detach().apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

/// y (dy - sum dy y) per row, from y and dy.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "flowpipe-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            slice(s1, l1, "softmax grad")?,
            slice(s2, l2, "softmax grad")?,
        );
        let out = map_rows2(y, g, last_dim(l1), "softmax grad", |o, y, g| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMSNorm without a gain over the last dimension, y = x r with r = 1 / sqrt(mean(x^2) + eps)
/// (Zhang & Sennrich 2019), fused on the CPU with the backward dx = r (dy - y mean(dy y)).
/// None off the CPU or for another dtype.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(RmsNormOp(eps as f32))?))
}

struct RmsNormOp(f32);

impl RmsNormOp {
    /// 1 / sqrt(mean(x^2) + eps) of a row.
    #[inline(always)]
    fn inv_rms(&self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.0).sqrt()
    }
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "flowpipe-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = map_rows(slice(s, l, "rms norm")?, last_dim(l), |y, x| {
            let r = self.inv_rms(x);
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * r);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.detach().apply_op2_no_bwd(
            &grad,
            &RmsNormGrad(RmsNormOp(self.0)),
        )?))
    }
}

/// r (dy - y mean(dy y)) per row, from x and dy.
struct RmsNormGrad(RmsNormOp);

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "flowpipe-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            slice(s1, l1, "rms norm grad")?,
            slice(s2, l2, "rms norm grad")?,
        );
        let out = map_rows2(x, g, last_dim(l1), "rms norm grad", |o, x, g| {
            let r = self.0.inv_rms(x);
            let m = x.iter().zip(g).map(|(x, g)| x * r * g).sum::<f32>() / x.len() as f32;
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                *o = r * (g - x * r * m);
            }
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The f32 slice a contiguous CPU storage holds.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: needs a contiguous f32 tensor, got {:?}", s.dtype()),
    }
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "flowpipe-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(s1, l1, "add bias")?, slice(s2, l2, "add bias")?);
        let mut y = x.to_vec();
        for row in y.chunks_mut(b.len()) {
            for (y, &b) in row.iter_mut().zip(b) {
                *y += b;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&ColumnSum(b.dim(0)?))?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sums a contiguous (..., C) tensor over everything but its last dimension: (C,).
struct ColumnSum(usize);

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "flowpipe-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice(s, l, "column sum")?;
        let mut acc = vec![0f32; self.0];
        for row in g.chunks(self.0) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        Ok((CpuStorage::F32(acc), Shape::from(self.0)))
    }
}

/// A row gather: out[m] = x[index[m]] for a source of `source_rows` rows, a zero row where
/// index[m] >= source_rows; with the inverse index its backward needs no atomics.
#[derive(Debug)]
pub struct RowGather {
    index: Vec<u32>,
    source_rows: usize,
    /// The outputs that read source row r: `readers[starts[r]..starts[r + 1]]`, ascending.
    starts: Vec<usize>,
    readers: Vec<u32>,
}

/// Output rows per parallel task of a gather or scatter.
const ROWS_PER_TASK: usize = 256;

impl RowGather {
    /// The gather of `index` (entries >= `source_rows` read zeros) and its inverse.
    pub fn new(index: Vec<u32>, source_rows: usize) -> RowGather {
        let mut starts = vec![0usize; source_rows + 1];
        for &i in &index {
            if (i as usize) < source_rows {
                starts[i as usize + 1] += 1;
            }
        }
        for r in 0..source_rows {
            starts[r + 1] += starts[r];
        }
        let mut next = starts.clone();
        let mut readers = vec![0u32; starts[source_rows]];
        for (m, &i) in index.iter().enumerate() {
            if (i as usize) < source_rows {
                readers[next[i as usize]] = m as u32;
                next[i as usize] += 1;
            }
        }
        RowGather {
            index,
            source_rows,
            starts,
            readers,
        }
    }

    /// The number of output rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// x (R, C) -> (M, C) with out[m] = x[index[m]] (zeros past R), f32 on the CPU; the backward
/// pass scatter-adds the gradient rows back (see [`RowGather`]).
pub fn gather_rows(x: &Tensor, gather: &Arc<RowGather>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GatherRows(gather.clone()))
}

struct GatherRows(Arc<RowGather>);

impl CustomOp1 for GatherRows {
    fn name(&self) -> &'static str {
        "flowpipe-gather-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = l.shape().dims2()?;
        if r != self.0.source_rows {
            candle_core::bail!(
                "gather rows: {r} source rows, the index expects {}",
                self.0.source_rows
            );
        }
        let x = slice(s, l, "gather rows")?;
        let index = &self.0.index;
        let mut out = vec![0f32; index.len() * c];
        let task = |(t, dst): (usize, &mut [f32])| {
            let first = t * ROWS_PER_TASK;
            for (row, &i) in dst.chunks_mut(c).zip(&index[first..]) {
                let i = i as usize;
                if i < r {
                    row.copy_from_slice(&x[i * c..(i + 1) * c]);
                }
            }
        };
        if c > 0 {
            out.par_chunks_mut(ROWS_PER_TASK * c)
                .enumerate()
                .for_each(task);
        }
        Ok((CpuStorage::F32(out), Shape::from((index.len(), c))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(grad.apply_op1_no_bwd(&ScatterRows(self.0.clone()))?))
    }
}

/// A convolution as im2col and one matrix product, one node of the graph: x (R, C) rows of
/// the input, w (taps C, O) -> gather(x) reshaped to (M, taps C), times w: (M, O). candle's own
/// backward of that product would allocate a zero gradient for the (M, taps C) patch matrix
/// and add into it, two passes over the largest tensor of the layer; this node's backward
/// recomputes the patches (a parallel copy), takes the two products and scatters the patch
/// gradient straight onto the input rows.
pub fn gathered_matmul(x: &Tensor, w: &Tensor, gather: &Arc<RowGather>) -> Result<Tensor> {
    let (_, c) = x.dims2()?;
    let (kc, _) = w.dims2()?;
    if c == 0 || kc % c != 0 || gather.len() % (kc / c) != 0 {
        candle_core::bail!("gathered matmul: {c} channels do not tile {kc} weight rows");
    }
    let x = x.contiguous()?;
    let m = gather.len() / (kc / c);
    let patches = x
        .detach()
        .apply_op1_no_bwd(&GatherRows(gather.clone()))?
        .reshape((m, kc))?;
    let y = patches.matmul(&w.detach())?;
    if !x.track_op() && !w.track_op() {
        // Sampling: no gradient to take, no graph node (and no copy of y) needed.
        return Ok(y);
    }
    x.apply_op3(&w.contiguous()?, &y, GatheredMatmul(gather.clone()))
}

/// The node of [`gathered_matmul`]: its forward hands on the product computed outside.
struct GatheredMatmul(Arc<RowGather>);

impl CustomOp3 for GatheredMatmul {
    fn name(&self) -> &'static str {
        "flowpipe-gathered-matmul"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s3, l3, "gathered matmul")?;
        Ok((CpuStorage::F32(y.to_vec()), l3.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, o) = grad.dims2()?;
        let (kc, _) = w.dims2()?;
        let g = grad.detach().contiguous()?;
        let patches = x
            .detach()
            .apply_op1_no_bwd(&GatherRows(self.0.clone()))?
            .reshape((m, kc))?;
        let grad_w = patches.t()?.matmul(&g)?;
        let grad_patches = g.matmul(&w.detach().t()?)?;
        let c = x.dim(1)?;
        let grad_x = grad_patches
            .reshape((m * kc / c, c))?
            .apply_op1_no_bwd(&ScatterRows(self.0.clone()))?;
        debug_assert_eq!(grad_w.dims(), &[kc, o]);
        Ok((Some(grad_x), Some(grad_w), None))
    }
}

/// The gather's adjoint: g (M, C) -> (R, C), row r the sum of the g rows that read r.
struct ScatterRows(Arc<RowGather>);

impl CustomOp1 for ScatterRows {
    fn name(&self) -> &'static str {
        "flowpipe-scatter-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, c) = l.shape().dims2()?;
        let gather = &self.0;
        if m != gather.len() {
            candle_core::bail!(
                "scatter rows: {m} gradient rows, the index has {}",
                gather.len()
            );
        }
        let g = slice(s, l, "scatter rows")?;
        let r = gather.source_rows;
        let mut out = vec![0f32; r * c];
        let task = |(t, dst): (usize, &mut [f32])| {
            for (k, row) in dst.chunks_mut(c).enumerate() {
                let src = t * ROWS_PER_TASK + k;
                for &reader in &gather.readers[gather.starts[src]..gather.starts[src + 1]] {
                    let reader = reader as usize;
                    for (o, &v) in row.iter_mut().zip(&g[reader * c..(reader + 1) * c]) {
                        *o += v;
                    }
                }
            }
        };
        if c > 0 {
            out.par_chunks_mut(ROWS_PER_TASK * c)
                .enumerate()
                .for_each(task);
        }
        Ok((CpuStorage::F32(out), Shape::from((r, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The gather and its backward against candle's index_select / index_add on a source
    /// read 0, 1 or many times, with zero rows.
    #[test]
    fn gather_rows_and_its_gradient_match_index_select() {
        let (r, c) = (7, 5);
        let index: Vec<u32> = vec![3, 0, 7, 3, 6, 3, 1, 7, 0, 6, 5, 2, 3];
        let vals: Vec<f32> = (0..r * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::from_vec(vals.clone(), (r, c), &Device::Cpu).unwrap();
        let weights: Vec<f32> = (0..index.len() * c)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let w = Tensor::from_vec(weights, (index.len(), c), &Device::Cpu).unwrap();
        let gather = Arc::new(RowGather::new(index.clone(), r));
        let ours = gather_rows(x.as_tensor(), &gather).unwrap();
        // candle: a zero row appended at index r.
        let zero = Tensor::zeros((1, c), DType::F32, &Device::Cpu).unwrap();
        let ids = Tensor::new(index.as_slice(), &Device::Cpu).unwrap();
        let theirs = Tensor::cat(&[x.as_tensor(), &zero], 0)
            .unwrap()
            .index_select(&ids, 0)
            .unwrap();
        let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
            (ours.to_vec2().unwrap(), theirs.to_vec2().unwrap());
        assert_eq!(a, b);
        let grad_of = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap()
        };
        let (ga, gb) = (grad_of(&ours), grad_of(&theirs));
        for (ra, rb) in ga.iter().zip(&gb) {
            for (p, q) in ra.iter().zip(rb) {
                assert!((p - q).abs() < 1e-6, "{ga:?} vs {gb:?}");
            }
        }
    }

    #[test]
    fn fast_erf_and_gelu_match_candle() {
        let xs: Vec<f32> = (0..=4000)
            .map(|i| -8.0 + 16.0 * i as f32 / 4000.0)
            .collect();
        let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        let (ours, theirs) = (
            gelu(x.as_tensor()).unwrap(),
            x.as_tensor().gelu_erf().unwrap(),
        );
        let (a, b): (Vec<f32>, Vec<f32>) = (ours.to_vec1().unwrap(), theirs.to_vec1().unwrap());
        for ((&v, &p), &q) in xs.iter().zip(&a).zip(&b) {
            assert!(
                (p - q).abs() < 2e-6 * (1.0 + v.abs()),
                "gelu({v}): {p} vs {q}"
            );
        }
        let grad = |y: &Tensor| {
            let g = y.sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
        };
        let (ga, gb) = (grad(&ours), grad(&theirs));
        for ((&v, &p), &q) in xs.iter().zip(&ga).zip(&gb) {
            assert!(
                (p - q).abs() < 2e-6 * (1.0 + v.abs()),
                "gelu'({v}): {p} vs {q}"
            );
        }
        assert!(erf(0.0).abs() < 2e-7);
        assert!((erf(1.0) - 0.842_700_8).abs() < 2e-7 && (erf(-1.0) + 0.842_700_8).abs() < 2e-7);
    }

    #[test]
    fn fast_exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
    }

    #[test]
    fn fused_silu_matches_candle_forward_and_backward() {
        let v: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) / 97.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (30, 100), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(
            crate::rng::normal_rows(0, crate::rng::Purpose::Misc, 0, 1, 3000),
            (30, 100),
            &Device::Cpu,
        )
        .unwrap();
        let ours = silu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().silu().unwrap();
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&ours, &theirs) < 1e-5);
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(diff(g1, g2) < 1e-5, "{}", diff(g1, g2));
        // Non-contiguous input takes the same path after a copy.
        let t = silu(&x.as_tensor().t().unwrap()).unwrap();
        assert!(diff(&t, &theirs.t().unwrap()) < 1e-5);
    }

    #[test]
    fn fused_bias_add_matches_candle_forward_and_backward() {
        let x = Var::from_tensor(
            &Tensor::from_vec(
                crate::rng::normal_rows(1, crate::rng::Purpose::Misc, 0, 1, 600),
                (2, 100, 3),
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let b =
            Var::from_tensor(&Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::from_vec(
            crate::rng::normal_rows(2, crate::rng::Purpose::Misc, 0, 1, 600),
            (2, 100, 3),
            &Device::Cpu,
        )
        .unwrap();
        let ours = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
        let theirs = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&ours), v(&theirs));
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&x, &b] {
            let (a, c) = (
                v(g1.get(var.as_tensor()).unwrap()),
                v(g2.get(var.as_tensor()).unwrap()),
            );
            for (a, c) in a.iter().zip(&c) {
                assert!((a - c).abs() < 1e-4, "{a} vs {c}");
            }
        }
    }
}
