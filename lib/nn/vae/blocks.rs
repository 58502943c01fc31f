//! The building blocks shared by encoder and decoder: zero-initialised residual blocks,
//! self-attention over the pixels, and the res, [attention], res middle.

use candle_core::Tensor;

use super::VaeConfig;
use crate::nn::dit::Attention;
use crate::nn::init::{Init, Params};
use crate::nn::layers::{Conv2d, GatherCache, Geometry, GroupNorm};
use crate::Result;

/// A convolution whose weights and bias start at zero (the last layer of a residual branch).
fn zero_conv(
    p: &Params,
    name: &str,
    c_in: usize,
    c_out: usize,
    cache: &GatherCache,
) -> Result<Conv2d> {
    // Params hands back an existing variable, so creating them here first fixes their init.
    p.pp(name)
        .var("weight", &[c_out, c_in, 3, 3], Init::Zeros)?;
    p.pp(name).var("bias", &[c_out], Init::Zeros)?;
    Conv2d::new(p, name, c_in, c_out, Geometry::SAME3, cache)
}

/// x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))) at constant channels, conv2 zero-initialised.
#[derive(Clone)]
pub(super) struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
}

impl ResBlock {
    fn new(p: &Params, c: usize, groups: usize, cache: &GatherCache) -> Result<ResBlock> {
        Ok(ResBlock {
            norm1: GroupNorm::new(p, "norm1", groups, c)?,
            conv1: Conv2d::new(p, "conv1", c, c, Geometry::SAME3, cache)?,
            norm2: GroupNorm::new(p, "norm2", groups, c)?,
            conv2: zero_conv(p, "conv2", c, c, cache)?,
        })
    }

    /// x: (N, H, W, C) -> (N, H, W, C).
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?, None)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?, None)?;
        x + h
    }
}

/// x + proj(attention(GN(x))) with the pixels as tokens (one head), proj zero-initialised.
#[derive(Clone)]
struct AttnBlock {
    norm: GroupNorm,
    attn: Attention,
}

impl AttnBlock {
    fn new(p: &Params, c: usize, groups: usize) -> Result<AttnBlock> {
        let proj = p.pp("attn").pp("proj");
        proj.var("weight", &[c, c], Init::Zeros)?;
        proj.var("bias", &[c], Init::Zeros)?;
        Ok(AttnBlock {
            norm: GroupNorm::new(p, "norm", groups, c)?,
            attn: Attention::new(&p.pp("attn"), c, 1)?,
        })
    }

    /// x: (N, H, W, C) -> (N, H, W, C).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let tokens = self.norm.forward(x)?.reshape((n, h * w, c))?;
        x + self.attn.forward(&tokens)?.reshape((n, h, w, c))?
    }
}

/// res, [attention], res: the middle of encoder and decoder.
#[derive(Clone)]
pub(super) struct Mid(ResBlock, Option<AttnBlock>, ResBlock);

impl Mid {
    pub(super) fn new(p: &Params, cfg: &VaeConfig, c: usize, cache: &GatherCache) -> Result<Mid> {
        Ok(Mid(
            ResBlock::new(&p.pp("res0"), c, cfg.groups, cache)?,
            match cfg.attention {
                true => Some(AttnBlock::new(&p.pp("attn"), c, cfg.groups)?),
                false => None,
            },
            ResBlock::new(&p.pp("res1"), c, cfg.groups, cache)?,
        ))
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.0.forward(x)?;
        if let Some(a) = &self.1 {
            h = a.forward(&h)?;
        }
        self.2.forward(&h)
    }
}

pub(super) fn res_blocks(
    p: &Params,
    cfg: &VaeConfig,
    c: usize,
    cache: &GatherCache,
) -> Result<Vec<ResBlock>> {
    (0..cfg.blocks_per_level)
        .map(|j| ResBlock::new(&p.pp(j.to_string()), c, cfg.groups, cache))
        .collect()
}
