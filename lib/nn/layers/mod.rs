//! Layers of the image networks (notes section 5.2, Lab 3), written from operations whose
//! gradients candle computes.
//!
//! candle 0.11's fused `LayerNorm`, `RmsNorm` and `softmax_last_dim` have no backward pass
//! (their gradients are silently dropped), so the normalisations and the softmax here are our
//! own fused ops on the CPU (`super::ops`, with their backward passes) and, on other devices,
//! compositions of primitive ops (sums, exp, sqrt, division), which also serve as the fused
//! ops' references in the tests:
//! - GroupNorm (Wu & He 2018): y = gamma (x - mu_g) / sqrt(var_g + eps) + beta, the moments over
//!   the pixels and the channels of each group of each sample;
//! - RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean_i x_i^2 + eps) (times a gain if any);
//! - softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z).
//!
//! Convolutions (im2col gathers on channels-last images) are in [`conv`].

use candle_core::{Tensor, D};

use super::init::{Init, Params};
use super::ops::{group_norm, AfterNorm};
use crate::Result;

pub mod conv;

pub use conv::{to_channels_first, to_channels_last, Conv2d, GatherCache, Geometry};

/// GroupNorm over channels-last images with a learned per-channel gain and shift.
#[derive(Clone)]
pub struct GroupNorm {
    /// gamma (C,), initialised to 1.
    pub weight: Tensor,
    /// beta (C,), initialised to 0.
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f64,
}

impl GroupNorm {
    /// The layer `name` (`name.weight`, `name.bias`); `groups` must divide `channels`.
    pub fn new(params: &Params, name: &str, groups: usize, channels: usize) -> Result<GroupNorm> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            anyhow::bail!("{groups} groups do not divide {channels} channels");
        }
        let p = params.pp(name);
        Ok(GroupNorm {
            weight: p.var("weight", &[channels], Init::Ones)?,
            bias: p.var("bias", &[channels], Init::Zeros)?,
            groups,
            eps: 1e-5,
        })
    }

    /// x: (N, H, W, C) -> (N, H, W, C). The per-channel means over pixels are matrix products
    /// with a row of 1/(H W) (a fast path on every device); the group means average those.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = group_norm(
            x,
            &self.weight,
            &self.bias,
            self.groups,
            self.eps,
            AfterNorm::Identity,
        )? {
            return Ok(y);
        }
        self.forward_composed(x)
    }

    /// SiLU(GroupNorm(x)), as one fused op on the CPU (the norm-then-activation of every
    /// residual block).
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = group_norm(
            x,
            &self.weight,
            &self.bias,
            self.groups,
            self.eps,
            AfterNorm::Silu,
        )? {
            return Ok(y);
        }
        self.forward_composed(x)?.silu()
    }

    /// The same from candle's ops (any device; the reference of the fused CPU op).
    pub fn forward_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let g = self.groups;
        let x = x.reshape((n, h * w, c))?;
        let avg =
            Tensor::full(1.0 / (h * w) as f32, (n, 1, h * w), x.device())?.to_dtype(x.dtype())?;
        // (N, 1, C) per-channel moments -> (N, 1, C) group moments broadcast back to the channels.
        let group_mean = |m: Tensor| -> candle_core::Result<Tensor> {
            m.reshape((n, g, c / g))?
                .mean_keepdim(2)?
                .broadcast_as((n, g, c / g))?
                .reshape((n, 1, c))
        };
        let mean = group_mean(avg.matmul(&x)?)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = group_mean(avg.matmul(&centred.sqr()?)?)?;
        let scale = (var + self.eps)?
            .sqrt()?
            .recip()?
            .broadcast_mul(&self.weight.reshape((1, 1, c))?)?;
        centred
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((1, 1, c))?)?
            .reshape((n, h, w, c))
    }
}

/// RMSNorm over the last dimension, with an optional learned gain (none in adaLN blocks, where
/// the modulation supplies the scale).
#[derive(Clone)]
pub struct RmsNorm {
    /// (D,), initialised to 1; `None` for a plain normalisation.
    pub weight: Option<Tensor>,
    pub eps: f64,
}

impl RmsNorm {
    /// A normalisation without parameters.
    pub fn plain() -> RmsNorm {
        RmsNorm {
            weight: None,
            eps: 1e-6,
        }
    }

    /// The layer `name` with a gain `name.weight` (D,).
    pub fn new(params: &Params, name: &str, dim: usize) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: Some(params.pp(name).var("weight", &[dim], Init::Ones)?),
            eps: 1e-6,
        })
    }

    /// x: (..., D) -> (..., D), x / sqrt(mean(x^2) + eps) (times the gain); fused on the CPU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match super::ops::rms_norm(x, self.eps)? {
            Some(y) => y,
            None => self.normalise_composed(x)?,
        };
        match &self.weight {
            Some(w) => y.broadcast_mul(w),
            None => Ok(y),
        }
    }
}

impl RmsNorm {
    /// x / sqrt(mean(x^2) + eps) from candle's ops (any device; the fused op's reference).
    pub fn normalise_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        x.broadcast_div(&rms)
    }
}

/// softmax over the last dimension, with a gradient: fused on the CPU
/// ([`super::ops::softmax_last_dim`]), else [`softmax_composed`].
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    match super::ops::softmax_last_dim(x)? {
        Some(y) => Ok(y),
        None => softmax_composed(x),
    }
}

/// softmax over the last dimension from primitive ops (so it has a gradient). The max is a
/// constant shift for stability and is detached: the softmax does not depend on it.
pub fn softmax_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let e = shifted.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Multi-head self-attention softmax(q k^T / sqrt(d_h)) v over the tokens of qkv (N, L, 3D),
/// the output of a fused QKV projection: (N, L, D). Fused on the CPU
/// ([`super::ops::attention`]), else [`attention_composed`].
pub fn self_attention(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    match super::ops::attention(qkv, heads)? {
        Some(y) => Ok(y),
        None => attention_composed(qkv, heads),
    }
}

/// [`self_attention`] from candle's ops: the heads split out by a permuted copy, batched
/// matrix products and [`softmax_last_dim`].
pub fn attention_composed(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (n, l, d3) = qkv.dims3()?;
    let (d, dh) = (d3 / 3, d3 / 3 / heads);
    let qkv = qkv
        .reshape((n, l, 3, heads, dh))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?; // (3, N, heads, L, dh)
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    let out = softmax_last_dim(&scores)?.matmul(&v)?; // (N, heads, L, dh)
    out.permute((0, 2, 1, 3))?.reshape((n, l, d))
}

/// The feed-forward nonlinearity: exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (fused
/// on the CPU, see [`super::ops::gelu`]; candle's tanh approximation `gelu` is slower there).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    super::ops::gelu(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// A deterministic pseudo-random tensor (values in [-1, 1]) for tests.
    pub fn wobbly(shape: &[usize], salt: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let z = crate::rng::mix64(i as u64 ^ (salt << 32));
                (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
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
    }

    /// d/dx of sum(probe * f(x)) by central differences at a few coordinates.
    fn check_gradient(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) {
        let var = Var::from_tensor(x).unwrap();
        let y = f(var.as_tensor());
        let probe = wobbly(y.dims(), 11);
        let objective = |t: &Tensor| -> f64 {
            (f(t) * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad: Vec<f32> = grads
            .get(var.as_tensor())
            .expect("no gradient")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        for i in (0..base.len()).step_by(base.len() / 7 + 1) {
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                objective(&Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap())
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            assert!(
                (numeric - grad[i] as f64).abs() < 2e-2 * (1.0 + numeric.abs()),
                "coordinate {i}: numeric {numeric}, autodiff {}",
                grad[i]
            );
        }
    }

    /// The fused CPU GroupNorm, alone and followed by SiLU, against the composition of candle's
    /// ops: values and the gradients of the input, the gain and the shift.
    #[test]
    fn fused_group_norm_matches_the_composed_one() {
        let p = Params::new(0, &Device::Cpu);
        let mut gn = GroupNorm::new(&p, "gn", 4, 12).unwrap();
        let gamma = Var::from_tensor(&wobbly(&[12], 5).affine(0.5, 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&wobbly(&[12], 6)).unwrap();
        gn.weight = gamma.as_tensor().clone();
        gn.bias = beta.as_tensor().clone();
        let x = Var::from_tensor(&wobbly(&[3, 9, 8, 12], 7).affine(2.0, 0.7).unwrap()).unwrap();
        let probe = wobbly(&[3, 9, 8, 12], 8);
        let run = |y: Tensor| {
            let grads = (y.clone() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            (y, g(&x), g(&gamma), g(&beta))
        };
        let composed_silu = gn.forward_composed(x.as_tensor()).unwrap().silu().unwrap();
        for (fused, composed) in [
            (
                gn.forward(x.as_tensor()).unwrap(),
                gn.forward_composed(x.as_tensor()).unwrap(),
            ),
            (gn.forward_silu(x.as_tensor()).unwrap(), composed_silu),
        ] {
            let (fused, composed) = (run(fused), run(composed));
            for (what, a, b) in [
                ("y", &fused.0, &composed.0),
                ("dx", &fused.1, &composed.1),
                ("dgamma", &fused.2, &composed.2),
                ("dbeta", &fused.3, &composed.3),
            ] {
                let d = max_abs_diff(a, b);
                assert!(d < 2e-5, "{what}: max difference {d}");
            }
        }
    }

    #[test]
    fn group_norm_standardises_each_group_and_has_a_gradient() {
        let p = Params::new(0, &Device::Cpu);
        let gn = GroupNorm::new(&p, "gn", 2, 4).unwrap();
        let x = wobbly(&[3, 4, 5, 4], 1).affine(3.0, 1.5).unwrap();
        let y = gn.forward(&x).unwrap();
        // Channels {0, 1} and {2, 3} of each sample: mean 0, variance 1 (biased, as PyTorch).
        let y = y.reshape((3, 20, 2, 2)).unwrap();
        let mean = y.mean_keepdim(3).unwrap().mean_keepdim(1).unwrap();
        let var = y
            .sqr()
            .unwrap()
            .mean_keepdim(3)
            .unwrap()
            .mean_keepdim(1)
            .unwrap();
        let m: Vec<f32> = mean.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
        assert!(m.iter().all(|m| m.abs() < 1e-5), "{m:?}");
        assert!(v.iter().all(|v| (v - 1.0).abs() < 1e-3), "{v:?}");
        let f = |x: &Tensor| gn.forward(x).unwrap();
        check_gradient(f, &wobbly(&[2, 2, 3, 4], 4));
        assert!(GroupNorm::new(&p, "bad", 3, 4).is_err());
    }

    #[test]
    fn rms_norm_has_unit_rms_and_a_gradient() {
        let x = (wobbly(&[4, 6], 2) * 5.0).unwrap();
        let y = RmsNorm::plain().forward(&x).unwrap();
        let ms: Vec<f32> = y.sqr().unwrap().mean(1).unwrap().to_vec1().unwrap();
        assert!(ms.iter().all(|m| (m - 1.0).abs() < 1e-4), "{ms:?}");
        let p = Params::new(0, &Device::Cpu);
        let norm = RmsNorm::new(&p, "n", 6).unwrap();
        check_gradient(|x| norm.forward(x).unwrap(), &wobbly(&[3, 6], 9));
    }

    /// The fused softmax and RMSNorm against their compositions of candle's ops: values and
    /// input gradients.
    #[test]
    fn fused_softmax_and_rms_norm_match_the_composed_ones() {
        let x = Var::from_tensor(&wobbly(&[4, 3, 17], 12).affine(4.0, 0.3).unwrap()).unwrap();
        let probe = wobbly(&[4, 3, 17], 13);
        let run = |y: Tensor| {
            let g = (y.clone() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let norm = RmsNorm::plain();
        for (what, fused, composed) in [
            (
                "softmax",
                run(softmax_last_dim(x.as_tensor()).unwrap()),
                run(softmax_composed(x.as_tensor()).unwrap()),
            ),
            (
                "rms norm",
                run(norm.forward(x.as_tensor()).unwrap()),
                run(norm.normalise_composed(x.as_tensor()).unwrap()),
            ),
        ] {
            let (dy, dg) = (
                max_abs_diff(&fused.0, &composed.0),
                max_abs_diff(&fused.1, &composed.1),
            );
            assert!(
                dy < 1e-5 && dg < 1e-5,
                "{what}: values {dy}, gradients {dg}"
            );
        }
    }

    #[test]
    fn softmax_matches_candle_and_has_a_gradient() {
        let x = (wobbly(&[3, 5], 8) * 4.0).unwrap();
        let ours = softmax_last_dim(&x).unwrap();
        let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-6);
        check_gradient(|x| softmax_last_dim(x).unwrap(), &x);
        check_gradient(|x| gelu(x).unwrap(), &x);
    }
}
