//! Layers of the image networks (notes section 5.2, Lab 3), written from operations whose
//! gradients candle computes.
//!
//! candle 0.11's fused `LayerNorm`, `RmsNorm` and `softmax_last_dim` have no backward pass
//! (their gradients are silently dropped), so the normalisations and the softmax here are built
//! from primitive ops (sums, exp, sqrt, division):
//! - GroupNorm (Wu & He 2018): y = gamma (x - mu_g) / sqrt(var_g + eps) + beta, the moments over
//!   the pixels and the channels of each group of each sample;
//! - RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean_i x_i^2 + eps) (times a gain if any);
//! - softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z).
//!
//! Convolutions work on channels-last images (N, H, W, C). A k x k convolution is one gather and
//! one matrix product ("im2col"): row (n, i, j) of the patch matrix holds, for each tap (a, b),
//! the input pixel (i s + a - p, j s + b - p), or zeros outside the image; times the weights
//! reshaped to (k k C, O). Gradients then come from a matrix product and a scatter-add, which on
//! the CPU is several times faster than candle's conv2d, whose input gradient is a plain-loop
//! transposed convolution. A nearest-neighbour upsampling before the convolution is folded into
//! the same gather (pixel (y, x) of the upsampled map is input pixel (y / 2, x / 2)), so it costs
//! nothing. Weights keep PyTorch's (O, C, k, k) layout.

use candle_core::{DType, Device, DeviceLocation, Tensor, D};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::init::{Init, Params};
use super::ops::{add_bias, gathered_matmul, group_norm, RowGather};
use crate::Result;

/// Gather indices of convolutions, shared by the layers of one network (the index depends only
/// on the geometry and the input size, and several layers share both): an index tensor for
/// candle's index_select, or on the CPU our parallel [`RowGather`] with its inverse.
#[derive(Clone, Default)]
pub struct GatherCache(Arc<Mutex<HashMap<GatherKey, Gather>>>);

#[derive(Clone)]
enum Gather {
    Tensor(Tensor),
    Rows(Arc<RowGather>),
}

/// Distinct input sizes kept before the cache is emptied (training uses one or two batch sizes).
const CACHE_ENTRIES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GatherKey {
    geometry: Geometry,
    /// (N, H, W) of the input.
    input: (usize, usize, usize),
    /// The (upsampled) map the kernel slides over.
    view: (usize, usize),
    device: DeviceLocation,
}

impl GatherCache {
    /// The gather of `key`: a [`RowGather`] for f32 on the CPU, else an index tensor whose
    /// entry N H W reads an appended zero row.
    fn get(&self, key: GatherKey, device: &Device, fused: bool) -> candle_core::Result<Gather> {
        let mut map = self.0.lock().unwrap();
        if let Some(g) = map.get(&key) {
            if matches!(g, Gather::Rows(_)) == fused {
                return Ok(g.clone());
            }
        }
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        let idx = gather_index(&key)?;
        let g = if fused {
            let (n, h, w) = key.input;
            Gather::Rows(Arc::new(RowGather::new(idx, n * h * w)))
        } else {
            let len = idx.len();
            Gather::Tensor(Tensor::from_vec(idx, len, &Device::Cpu)?.to_device(device)?)
        };
        map.insert(key, g.clone());
        Ok(g)
    }
}

/// Kernel size, stride, zero padding and nearest upsampling factor of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// 1, or 2 for "upsample by 2 (nearest), then convolve".
    pub upsample: usize,
}

impl Geometry {
    /// 3x3, stride 1, padding 1: the size-preserving convolution.
    pub const SAME3: Geometry = Geometry {
        kernel: 3,
        stride: 1,
        padding: 1,
        upsample: 1,
    };
    /// 3x3, stride 2, padding 1: H -> ceil(H / 2).
    pub const DOWN3: Geometry = Geometry {
        kernel: 3,
        stride: 2,
        padding: 1,
        upsample: 1,
    };
    /// Nearest upsampling by 2 then a 3x3 same convolution: H -> 2 H (or a smaller target).
    pub const UP3: Geometry = Geometry {
        kernel: 3,
        stride: 1,
        padding: 1,
        upsample: 2,
    };

    /// The output size over a `view`-sized map: (v + 2 p - k) / s + 1.
    pub fn out_size(&self, view: (usize, usize)) -> candle_core::Result<(usize, usize)> {
        let size = |v: usize| match (v + 2 * self.padding).checked_sub(self.kernel) {
            Some(d) => Ok(d / self.stride + 1),
            None => candle_core::bail!(
                "a {}x{} kernel does not fit a map of {v}",
                self.kernel,
                self.kernel
            ),
        };
        Ok((size(view.0)?, size(view.1)?))
    }
}

/// For each output pixel and tap, the input row it reads (rows n H W + y W + x of the input
/// flattened to (N H W, C)), or N H W, the appended zero row, outside the view.
fn gather_index(key: &GatherKey) -> candle_core::Result<Vec<u32>> {
    let g = key.geometry;
    let (n, h, w) = key.input;
    let (hv, wv) = key.view;
    let (ho, wo) = g.out_size(key.view)?;
    if n * h * w >= u32::MAX as usize {
        candle_core::bail!("input too large for a gather convolution: {n}x{h}x{w}");
    }
    let zero = (n * h * w) as u32;
    let k = g.kernel;
    let mut idx = Vec::with_capacity(n * ho * wo * k * k);
    for s in 0..n {
        for i in 0..ho {
            for j in 0..wo {
                for a in 0..k {
                    let y = (i * g.stride + a) as isize - g.padding as isize;
                    for b in 0..k {
                        let x = (j * g.stride + b) as isize - g.padding as isize;
                        let inside = y >= 0 && x >= 0 && (y as usize) < hv && (x as usize) < wv;
                        idx.push(if inside {
                            let (y, x) = (y as usize / g.upsample, x as usize / g.upsample);
                            (s * h * w + y * w + x) as u32
                        } else {
                            zero
                        });
                    }
                }
            }
        }
    }
    Ok(idx)
}

/// A 2-D convolution on channels-last images, optionally after a nearest upsampling by 2.
#[derive(Clone)]
pub struct Conv2d {
    /// (O, C, k, k), PyTorch's layout.
    pub weight: Tensor,
    /// (O,)
    pub bias: Tensor,
    pub geometry: Geometry,
    cache: GatherCache,
}

impl Conv2d {
    /// The layer `name` (`name.weight`, `name.bias`), drawn U(+-1/sqrt(C k k)) like PyTorch's.
    pub fn new(
        params: &Params,
        name: &str,
        c_in: usize,
        c_out: usize,
        geometry: Geometry,
        cache: &GatherCache,
    ) -> Result<Conv2d> {
        let p = params.pp(name);
        let k = geometry.kernel;
        let init = Init::fan_in_uniform(c_in * k * k);
        Ok(Conv2d {
            weight: p.var("weight", &[c_out, c_in, k, k], init)?,
            bias: p.var("bias", &[c_out], init)?,
            geometry,
            cache: cache.clone(),
        })
    }

    /// x: (N, H, W, C) -> (N, Ho, Wo, O). `view`: the size of the upsampled map when it is not
    /// (2 H, 2 W) (a crop, to meet a skip connection of odd size); ignored without upsampling.
    pub fn forward(&self, x: &Tensor, view: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let (o, c_w, k, _) = self.weight.dims4()?;
        if c != c_w {
            candle_core::bail!("conv expects {c_w} input channels, got {c}");
        }
        let g = self.geometry;
        let view = match (g.upsample, view) {
            (1, _) => (h, w),
            (u, Some(v)) if v.0 <= u * h && v.1 <= u * w => v,
            (u, Some(v)) => candle_core::bail!("cannot upsample {h}x{w} by {u} to {}x{}", v.0, v.1),
            (u, None) => (u * h, u * w),
        };
        let (ho, wo) = g.out_size(view)?;
        let rows = x.reshape((n * h * w, c))?;
        let cols = if k == 1 && g.stride == 1 && g.padding == 0 && g.upsample == 1 {
            rows
        } else {
            let key = GatherKey {
                geometry: g,
                input: (n, h, w),
                view,
                device: x.device().location(),
            };
            let fused = x.device().is_cpu() && x.dtype() == DType::F32;
            match self.cache.get(key, x.device(), fused)? {
                Gather::Rows(g) => {
                    let y = gathered_matmul(&rows, &self.weight_matrix()?, &g)?;
                    return add_bias(&y, &self.bias)?.reshape((n, ho, wo, o));
                }
                Gather::Tensor(idx) => {
                    let zero = Tensor::zeros((1, c), x.dtype(), x.device())?;
                    Tensor::cat(&[&rows, &zero], 0)?
                        .index_select(&idx, 0)?
                        .reshape((n * ho * wo, k * k * c))?
                }
            }
        };
        add_bias(&cols.matmul(&self.weight_matrix()?)?, &self.bias)?.reshape((n, ho, wo, o))
    }

    /// The weights (O, C, k, k) as the (k k C, O) matrix that multiplies the patch rows.
    fn weight_matrix(&self) -> candle_core::Result<Tensor> {
        let (o, c, k, _) = self.weight.dims4()?;
        self.weight.permute((2, 3, 1, 0))?.reshape((k * k * c, o))
    }
}

/// (N, C, H, W) -> (N, H, W, C), contiguous.
pub fn to_channels_last(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 2, 3, 1))?.contiguous()
}

/// (N, H, W, C) -> (N, C, H, W), contiguous.
pub fn to_channels_first(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 3, 1, 2))?.contiguous()
}

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
        if groups == 0 || channels % groups != 0 {
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
        if let Some(y) = group_norm(x, &self.weight, &self.bias, self.groups, self.eps)? {
            return Ok(y);
        }
        self.forward_composed(x)
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

/// The feed-forward nonlinearity: exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (fused
/// on the CPU, see [`super::ops::gelu`]; candle's tanh approximation `gelu` is slower there).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    super::ops::gelu(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Var};

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

    fn conv(c_in: usize, c_out: usize, g: Geometry) -> Conv2d {
        let p = Params::new(1, &Device::Cpu);
        Conv2d::new(&p, "c", c_in, c_out, g, &GatherCache::default()).unwrap()
    }

    /// Our gather convolution against candle's conv2d (NCHW), values and both gradients.
    fn check_against_candle(g: Geometry, n: usize, c: usize, o: usize, h: usize, w: usize) {
        let layer = conv(c, o, g);
        let x = Var::from_tensor(&wobbly(&[n, c, h, w], 7)).unwrap();
        let ours = to_channels_first(
            &layer
                .forward(&to_channels_last(x.as_tensor()).unwrap(), None)
                .unwrap(),
        )
        .unwrap();
        let theirs = x
            .as_tensor()
            .conv2d(&layer.weight, g.padding, g.stride, 1, 1)
            .unwrap()
            .broadcast_add(&layer.bias.reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_abs_diff(&ours, &theirs) < 1e-5);
        let probe = wobbly(ours.dims(), 3);
        let ga = (&ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [x.as_tensor(), &layer.weight, &layer.bias] {
            let (a, b) = (ga.get(t).unwrap(), gb.get(t).unwrap());
            assert!(max_abs_diff(a, b) < 1e-4, "gradient differs");
        }
    }

    #[test]
    fn gather_convolution_matches_candle_conv2d() {
        check_against_candle(Geometry::SAME3, 2, 3, 4, 5, 6);
        check_against_candle(Geometry::DOWN3, 2, 3, 4, 6, 6);
        check_against_candle(Geometry::DOWN3, 1, 2, 3, 7, 5); // odd: 7 -> 4, 5 -> 3
        let patchify = Geometry {
            kernel: 2,
            stride: 2,
            padding: 0,
            upsample: 1,
        };
        check_against_candle(patchify, 2, 3, 5, 4, 6);
        let one = Geometry {
            kernel: 1,
            stride: 1,
            padding: 0,
            upsample: 1,
        };
        check_against_candle(one, 2, 3, 2, 3, 3);
    }

    #[test]
    fn upsampling_convolution_is_nearest_upsample_then_conv() {
        let layer = conv(3, 2, Geometry::UP3);
        let x = wobbly(&[2, 3, 3, 4], 5);
        let up = x.upsample_nearest2d(6, 8).unwrap();
        let want = up
            .conv2d(&layer.weight, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&layer.bias.reshape((1, 2, 1, 1)).unwrap())
            .unwrap();
        let got = layer.forward(&to_channels_last(&x).unwrap(), None).unwrap();
        assert!(max_abs_diff(&to_channels_first(&got).unwrap(), &want) < 1e-5);
        // Cropped to 5 x 7 (a skip of odd size): the crop of the upsampled map, zero-padded.
        let cropped = up.narrow(2, 0, 5).unwrap().narrow(3, 0, 7).unwrap();
        let want = cropped
            .conv2d(&layer.weight, 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&layer.bias.reshape((1, 2, 1, 1)).unwrap())
            .unwrap();
        let got = layer
            .forward(&to_channels_last(&x).unwrap(), Some((5, 7)))
            .unwrap();
        assert!(max_abs_diff(&to_channels_first(&got).unwrap(), &want) < 1e-5);
        assert!(layer
            .forward(&to_channels_last(&x).unwrap(), Some((7, 7)))
            .is_err());
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

    /// The fused CPU GroupNorm against the composition of candle's ops: values and the
    /// gradients of the input, the gain and the shift.
    #[test]
    fn fused_group_norm_matches_the_composed_one() {
        let p = Params::new(0, &Device::Cpu);
        let mut gn = GroupNorm::new(&p, "gn", 4, 12).unwrap();
        let gamma = Var::from_tensor(&wobbly(&[12], 5).affine(0.5, 1.0).unwrap()).unwrap();
        let beta = Var::from_tensor(&wobbly(&[12], 6)).unwrap();
        gn.weight = gamma.as_tensor().clone();
        gn.bias = beta.as_tensor().clone();
        let x = Var::from_tensor(&wobbly(&[3, 5, 4, 12], 7).affine(2.0, 0.7).unwrap()).unwrap();
        let probe = wobbly(&[3, 5, 4, 12], 8);
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
        let fused = run(gn.forward(x.as_tensor()).unwrap());
        let composed = run(gn.forward_composed(x.as_tensor()).unwrap());
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
