//! 2-D convolutions as im2col gathers.
//!
//! Convolutions work on channels-last images (N, H, W, C). A k x k convolution is one gather and
//! one matrix product ("im2col"): row (n, i, j) of the patch matrix holds, for each tap (a, b),
//! the input pixel (i s + a - p, j s + b - p), or zeros outside the image; times the weights
//! reshaped to (k k C, O). Gradients then come from a matrix product and a scatter-add, which on
//! the CPU is several times faster than candle's conv2d, whose input gradient is a plain-loop
//! transposed convolution. A nearest-neighbour upsampling before the convolution is folded into
//! the same gather (pixel (y, x) of the upsampled map is input pixel (y / 2, x / 2)), so it costs
//! nothing. On the CPU the patch matrix is never built whole: [`conv_rows`] gathers and
//! multiplies it in tiles of rows. Weights keep PyTorch's (O, C, k, k) layout.

use candle_core::{Device, DeviceLocation, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::nn::init::{Init, Params};
use crate::nn::ops::{add_bias, add_sample_bias, conv_rows, RowGather};
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
        self.forward_with(x, view, None)
    }

    /// [`Self::forward`] plus a bias per sample, `cond` (N, O) (the U-Net's conditioning),
    /// added with the layer's own bias in the fused convolution where it applies.
    pub fn forward_sample_bias(&self, x: &Tensor, cond: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, None, Some(cond))
    }

    fn forward_with(
        &self,
        x: &Tensor,
        view: Option<(usize, usize)>,
        cond: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
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
            let fused = crate::nn::ops::fused_for(x);
            match self.cache.get(key, x.device(), fused)? {
                Gather::Rows(g) => {
                    let bias = match cond {
                        Some(cond) => cond.broadcast_add(&self.bias)?,
                        None => self.bias.clone(),
                    };
                    let y = conv_rows(&rows, &self.weight_matrix()?, &bias, &g)?;
                    return y.reshape((n, ho, wo, o));
                }
                Gather::Tensor(idx) => {
                    let zero = Tensor::zeros((1, c), x.dtype(), x.device())?;
                    Tensor::cat(&[&rows, &zero], 0)?
                        .index_select(&idx, 0)?
                        .reshape((n * ho * wo, k * k * c))?
                }
            }
        };
        let y =
            add_bias(&cols.matmul(&self.weight_matrix()?)?, &self.bias)?.reshape((n, ho, wo, o))?;
        match cond {
            Some(cond) => add_sample_bias(&y, cond),
            None => Ok(y),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::{max_abs_diff, wobbly};
    use candle_core::Var;

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
        // More input rows than one tile of the input gradient, which then takes the adjoint
        // gather (flipped kernel) rather than the scatter of the patch gradients.
        check_against_candle(Geometry::SAME3, 2, 5, 3, 12, 13);
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
}
