//! The variational autoencoder of latent diffusion (notes section 6, Algorithm 6; Kingma &
//! Welling 2014; Rombach et al. 2022): an encoder q_phi(z | x) = N(mu_phi(x), diag sigma_phi^2(x))
//! and a decoder p_theta(x | z) = N(D_theta(z), sigma_dec^2 I), trained on the negative ELBO
//!
//!   L(x) = E_{z ~ q(z|x)} [ -log p_theta(x | z) ] + beta KL(q_phi(z | x) || N(0, I)),
//!   -log p(x | z) = sum_i [ (x_i - D(z)_i)^2 / (2 sigma_dec^2) + log sigma_dec + log(2 pi) / 2 ],
//!   KL = sum_j [ mu_j^2 + sigma_j^2 - 1 - log sigma_j^2 ] / 2,
//!
//! with z = mu + sigma eps, eps ~ N(0, I) (the reparametrisation trick). sigma_dec is learned
//! (a scalar log-variance) or fixed; the encoder's log-variance is per element (a conv head) or
//! one learned scalar (the lab's). Flow models are then trained on latents scaled to unit
//! variance, z_s = scale_factor mu(x) with scale_factor = 1 / std of the latent means over the
//! training set (as Stable Diffusion's 0.18215), stored in the model file; decoding divides by it.
//!
//! ```text
//! encoder: x -> conv3x3 (C -> c0) -> level l = 0..L-1: B residual blocks at c_l, then (l < L-1)
//!          conv3x3 stride 2 (c_l -> c_{l+1}) -> mid: res, [attention], res -> GN, SiLU
//!          -> conv3x3 mean head (c_{L-1} -> k), conv3x3 log-variance head (or a scalar)
//! decoder: z -> conv3x3 (k -> c_{L-1}) -> mid: res, [attention], res -> level l = L-1..0:
//!          B residual blocks at c_l, then (l > 0) nearest upsample x2 + conv3x3 (c_l -> c_{l-1})
//!          cropped to the encoder's size there -> GN, SiLU -> conv3x3 (c0 -> C)
//! residual block: x + conv(SiLU(GN(conv(SiLU(GN(x)))))), the last conv zero-initialised (so
//!          each block starts as the identity); attention: x + proj(attn(GN(x))) over the
//!          pixels as tokens, proj zero-initialised.
//! ```
//! Downsampling rounds up (28 -> 14 -> 7), so 28x28 images need no padding: three levels map
//! 1x28x28 to k x 7 x 7 and 1x32x32 to k x 8 x 8. The pipelines pad Fashion-MNIST to 32 (the
//! lab's way) for the 4 x 8 x 8 latents a patch-1 DiT handles well.

use anyhow::bail;
use candle_core::Tensor;
use ndarray::ArrayD;
use serde_json::{json, Value};

use super::config::{image_shape, positive, size, sizes, ConfigResult};
use super::dit::Attention;
use super::init::{Init, Params};
use super::layers::{
    to_channels_first, to_channels_last, Conv2d, GatherCache, Geometry, GroupNorm,
};
use super::ops::silu;
use crate::device::{from_tensor, to_tensor};
use crate::io::npy::shape_str;
use crate::rng::{self, Purpose};
use crate::Result;

/// log(2 pi) / 2, the constant of a Gaussian log-density per coordinate.
const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_8;
/// The encoder's log-variance is clamped to this range (exp(-30)..exp(20)) for stability.
const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);

/// How the encoder's posterior variance is parametrised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogvarMode {
    /// A conv head: one log-variance per latent element.
    PerElement,
    /// One learned scalar shared by every element and image (the lab's).
    Scalar,
}

impl LogvarMode {
    pub fn name(self) -> &'static str {
        match self {
            LogvarMode::PerElement => "per-element",
            LogvarMode::Scalar => "scalar",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [LogvarMode::PerElement, LogvarMode::Scalar]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// Whether the decoder's variance sigma_dec^2 is learned or fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderVariance {
    /// A learned scalar log-variance, started at log(decoder_std^2).
    Learned,
    /// sigma_dec = decoder_std throughout.
    Fixed,
}

impl DecoderVariance {
    pub fn name(self) -> &'static str {
        match self {
            DecoderVariance::Learned => "learned",
            DecoderVariance::Fixed => "fixed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [DecoderVariance::Learned, DecoderVariance::Fixed]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// The sizes of a [`Vae`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// [C, H, W] of one image.
    pub data_shape: [usize; 3],
    /// Channels per level; len - 1 stride-2 downsamplings.
    pub channels: Vec<usize>,
    /// Residual blocks per level (encoder and decoder alike).
    pub blocks_per_level: usize,
    /// k, the latent channels.
    pub latent_channels: usize,
    /// Self-attention in the middle of encoder and decoder.
    pub attention: bool,
    /// GroupNorm groups; divides every channel count.
    pub groups: usize,
    pub logvar: LogvarMode,
    pub decoder_variance: DecoderVariance,
    /// sigma_dec when fixed; its starting value when learned.
    pub decoder_std: f64,
    /// Latents on the wire are scale_factor * z (1 until training has measured it).
    pub scale_factor: f64,
}

impl VaeConfig {
    /// Defaults for images of `data_shape`: channels [32, 64, 64] (32x32 -> 8x8), one block per
    /// level, 4 latent channels, no attention, per-element log-variance, learned decoder variance
    /// started at sigma = 0.1 (pixels in [-1, 1]; Adam moves its log by about lr per step).
    pub fn default_for(data_shape: [usize; 3]) -> VaeConfig {
        VaeConfig {
            data_shape,
            channels: vec![32, 64, 64],
            blocks_per_level: 1,
            latent_channels: 4,
            attention: false,
            groups: 8,
            logvar: LogvarMode::PerElement,
            decoder_variance: DecoderVariance::Learned,
            decoder_std: 0.1,
            scale_factor: 1.0,
        }
    }

    /// The spatial sizes at each level: sizes[0] = (H, W), then halved rounding up.
    pub fn level_sizes(&self) -> Vec<(usize, usize)> {
        let [_, h, w] = self.data_shape;
        let mut s = vec![(h, w)];
        for _ in 1..self.channels.len() {
            let (a, b) = *s.last().unwrap();
            s.push((a.div_ceil(2), b.div_ceil(2)));
        }
        s
    }

    /// [k, h, w] of one latent.
    pub fn latent_shape(&self) -> [usize; 3] {
        let (h, w) = *self.level_sizes().last().unwrap();
        [self.latent_channels, h, w]
    }

    /// The config fields: `arch` ("vae"), `data_shape`, `latent_shape` (derived, for readers),
    /// `channels`, `blocks_per_level`, `latent_channels`, `attention`, `groups`, `logvar`
    /// ("per-element" | "scalar"), `decoder_variance` ("learned" | "fixed"), `decoder_std`,
    /// `scale_factor`.
    pub fn to_json(&self) -> Value {
        json!({
            "arch": "vae",
            "data_shape": self.data_shape,
            "latent_shape": self.latent_shape(),
            "channels": self.channels,
            "blocks_per_level": self.blocks_per_level,
            "latent_channels": self.latent_channels,
            "attention": self.attention,
            "groups": self.groups,
            "logvar": self.logvar.name(),
            "decoder_variance": self.decoder_variance.name(),
            "decoder_std": self.decoder_std,
            "scale_factor": self.scale_factor,
        })
    }

    /// Reads a config; absent keys take [`VaeConfig::default_for`]'s values.
    pub fn from_json(config: &Value) -> ConfigResult<VaeConfig> {
        let d = VaeConfig::default_for(image_shape(config, "vae")?);
        let channels = sizes(config, "channels")?.unwrap_or(d.channels.clone());
        let groups = positive(config, "groups", default_groups(&channels))?;
        let text = |key: &str, default: &'static str| match &config[key] {
            Value::Null => Ok(default.to_string()),
            Value::String(s) => Ok(s.clone()),
            v => Err(format!("'{key}' must be a string, found {v}")),
        };
        let number = |key: &str, default: f64| match &config[key] {
            Value::Null => Ok(default),
            v => v
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or_else(|| format!("'{key}' must be a positive number, found {v}")),
        };
        let logvar = text("logvar", "per-element")?;
        let dec = text("decoder_variance", "learned")?;
        let cfg = VaeConfig {
            data_shape: d.data_shape,
            channels,
            blocks_per_level: size(config, "blocks_per_level", d.blocks_per_level)?,
            latent_channels: positive(config, "latent_channels", d.latent_channels)?,
            attention: config["attention"].as_bool().unwrap_or(false),
            groups,
            logvar: LogvarMode::parse(&logvar).ok_or_else(|| {
                format!("'logvar' must be \"per-element\" or \"scalar\", found \"{logvar}\"")
            })?,
            decoder_variance: DecoderVariance::parse(&dec).ok_or_else(|| {
                format!("'decoder_variance' must be \"learned\" or \"fixed\", found \"{dec}\"")
            })?,
            decoder_std: number("decoder_std", d.decoder_std)?,
            scale_factor: number("scale_factor", d.scale_factor)?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks that the sizes go together (channels positive, groups divide them).
    pub fn check(&self) -> ConfigResult<()> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(format!(
                "vae channels must be positive, found {:?}",
                self.channels
            ));
        }
        if let Some(c) = self.channels.iter().find(|&&c| c % self.groups != 0) {
            return Err(format!(
                "{} GroupNorm groups do not divide {c} channels",
                self.groups
            ));
        }
        if self.latent_channels == 0 {
            return Err("latent_channels must be positive".into());
        }
        Ok(())
    }
}

/// The largest of 8, 4, 2, 1 dividing every channel count.
pub fn default_groups(channels: &[usize]) -> usize {
    [8, 4, 2, 1]
        .into_iter()
        .find(|g| channels.iter().all(|c| c % g == 0))
        .unwrap_or(1)
}

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
struct ResBlock {
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
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?, None)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?, None)?;
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
struct Mid(ResBlock, Option<AttnBlock>, ResBlock);

impl Mid {
    fn new(p: &Params, cfg: &VaeConfig, c: usize, cache: &GatherCache) -> Result<Mid> {
        Ok(Mid(
            ResBlock::new(&p.pp("res0"), c, cfg.groups, cache)?,
            match cfg.attention {
                true => Some(AttnBlock::new(&p.pp("attn"), c, cfg.groups)?),
                false => None,
            },
            ResBlock::new(&p.pp("res1"), c, cfg.groups, cache)?,
        ))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.0.forward(x)?;
        if let Some(a) = &self.1 {
            h = a.forward(&h)?;
        }
        self.2.forward(&h)
    }
}

fn res_blocks(p: &Params, cfg: &VaeConfig, c: usize, cache: &GatherCache) -> Result<Vec<ResBlock>> {
    (0..cfg.blocks_per_level)
        .map(|j| ResBlock::new(&p.pp(j.to_string()), c, cfg.groups, cache))
        .collect()
}

/// The posterior q(z | x) = N(mean, exp(logvar)) of a batch, both (N, k, h, w).
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Posterior {
    /// z = mean + exp(logvar / 2) eps, eps (N, k, h, w) standard normal.
    pub fn sample(&self, eps: &Tensor) -> candle_core::Result<Tensor> {
        &self.mean + (&self.logvar * 0.5)?.exp()?.mul(eps)?
    }

    /// KL(q || N(0, I)) per image: (N,), the closed form in the module docs.
    pub fn kl(&self) -> candle_core::Result<Tensor> {
        let n = self.mean.dim(0)?;
        let terms = ((self.mean.sqr()? + self.logvar.exp()?)? - 1.0)?.sub(&self.logvar)?;
        terms.reshape((n, ()))?.sum(1)? * 0.5
    }
}

/// The encoder q_phi(z | x).
#[derive(Clone)]
struct Encoder {
    conv_in: Conv2d,
    levels: Vec<(Vec<ResBlock>, Option<Conv2d>)>,
    mid: Mid,
    norm_out: GroupNorm,
    mean_head: Conv2d,
    /// A conv head (per element) or a learned scalar (1,).
    logvar_head: Result<Conv2d, Tensor>,
}

/// The decoder mean D_theta(z).
#[derive(Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// levels[l]: blocks at c_l, then the upsampling to level l - 1 (none at l = 0).
    levels: Vec<(Vec<ResBlock>, Option<Conv2d>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// The variational autoencoder (see the module docs).
#[derive(Clone)]
pub struct Vae {
    pub config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    /// log sigma_dec^2: a learned (1,) parameter, or a constant.
    decoder_logvar: Tensor,
}

impl Vae {
    /// Builds the layers from `params`. Names: `encoder.conv_in`, `encoder.down.<l>.res.<j>`,
    /// `encoder.down.<l>.conv`, `encoder.mid.{res0,attn,res1}`, `encoder.norm_out`,
    /// `encoder.mean`, `encoder.logvar` (a conv, or a scalar (1,)), `decoder.conv_in`,
    /// `decoder.mid.*`, `decoder.up.<l>.res.<j>`, `decoder.up.<l>.conv`, `decoder.norm_out`,
    /// `decoder.conv_out`, and `decoder.logvar` (1,) when the decoder variance is learned.
    pub fn new(cfg: &VaeConfig, params: &Params) -> Result<Vae> {
        cfg.check().map_err(anyhow::Error::msg)?;
        let cache = GatherCache::default();
        let [c_in, _, _] = cfg.data_shape;
        let ch = &cfg.channels;
        let last = *ch.last().unwrap();
        let k = cfg.latent_channels;
        let e = params.pp("encoder");
        let mut enc_levels = Vec::new();
        for (l, &c) in ch.iter().enumerate() {
            let p = e.pp("down").pp(l.to_string());
            let down = match ch.get(l + 1) {
                Some(&next) => Some(Conv2d::new(&p, "conv", c, next, Geometry::DOWN3, &cache)?),
                None => None,
            };
            enc_levels.push((res_blocks(&p.pp("res"), cfg, c, &cache)?, down));
        }
        let encoder = Encoder {
            conv_in: Conv2d::new(&e, "conv_in", c_in, ch[0], Geometry::SAME3, &cache)?,
            levels: enc_levels,
            mid: Mid::new(&e.pp("mid"), cfg, last, &cache)?,
            norm_out: GroupNorm::new(&e, "norm_out", cfg.groups, last)?,
            mean_head: Conv2d::new(&e, "mean", last, k, Geometry::SAME3, &cache)?,
            logvar_head: match cfg.logvar {
                LogvarMode::PerElement => {
                    Ok(Conv2d::new(&e, "logvar", last, k, Geometry::SAME3, &cache)?)
                }
                LogvarMode::Scalar => Err(e.var("logvar", &[1], Init::Zeros)?),
            },
        };
        let d = params.pp("decoder");
        let mut dec_levels = Vec::new();
        for (l, &c) in ch.iter().enumerate() {
            let p = d.pp("up").pp(l.to_string());
            let up = match l {
                0 => None,
                _ => Some(Conv2d::new(
                    &p,
                    "conv",
                    c,
                    ch[l - 1],
                    Geometry::UP3,
                    &cache,
                )?),
            };
            dec_levels.push((res_blocks(&p.pp("res"), cfg, c, &cache)?, up));
        }
        let decoder = Decoder {
            conv_in: Conv2d::new(&d, "conv_in", k, last, Geometry::SAME3, &cache)?,
            mid: Mid::new(&d.pp("mid"), cfg, last, &cache)?,
            levels: dec_levels,
            norm_out: GroupNorm::new(&d, "norm_out", cfg.groups, ch[0])?,
            conv_out: Conv2d::new(&d, "conv_out", ch[0], c_in, Geometry::SAME3, &cache)?,
        };
        let start = (cfg.decoder_std * cfg.decoder_std).ln() as f32;
        let decoder_logvar = match cfg.decoder_variance {
            DecoderVariance::Learned => d.var("logvar", &[1], Init::Const(start))?,
            DecoderVariance::Fixed => Tensor::new(&[start], params.device())?,
        };
        Ok(Vae {
            config: cfg.clone(),
            encoder,
            decoder,
            decoder_logvar,
        })
    }

    /// x: (N, C, H, W) images -> the posterior over unscaled latents (N, k, h, w).
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Posterior> {
        let e = &self.encoder;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != self.config.data_shape {
            candle_core::bail!(
                "the vae expects images (N, {}), got {}",
                self.config.data_shape.map(|d| d.to_string()).join(", "),
                shape_str(dims)
            );
        }
        let mut h = e.conv_in.forward(&to_channels_last(x)?, None)?;
        for (blocks, down) in &e.levels {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if let Some(conv) = down {
                h = conv.forward(&h, None)?;
            }
        }
        let h = silu(&e.norm_out.forward(&e.mid.forward(&h)?)?)?;
        let mean = to_channels_first(&e.mean_head.forward(&h, None)?)?;
        let logvar = match &e.logvar_head {
            Ok(conv) => to_channels_first(&conv.forward(&h, None)?)?,
            Err(scalar) => scalar
                .reshape((1, 1, 1, 1))?
                .broadcast_as(mean.dims())?
                .contiguous()?,
        };
        let logvar = logvar.clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?;
        Ok(Posterior { mean, logvar })
    }

    /// z: (N, k, h, w) unscaled latents -> the decoder mean (N, C, H, W).
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let d = &self.decoder;
        let want = self.config.latent_shape();
        if z.rank() != 4 || z.dims()[1..] != want {
            candle_core::bail!(
                "the vae expects latents (N, {}), got {}",
                want.map(|d| d.to_string()).join(", "),
                shape_str(z.dims())
            );
        }
        let sizes = self.config.level_sizes();
        let mut h = d
            .mid
            .forward(&d.conv_in.forward(&to_channels_last(z)?, None)?)?;
        for (l, (blocks, up)) in d.levels.iter().enumerate().rev() {
            for b in blocks {
                h = b.forward(&h)?;
            }
            if let Some(conv) = up {
                h = conv.forward(&h, Some(sizes[l - 1]))?;
            }
        }
        let h = silu(&d.norm_out.forward(&h)?)?;
        to_channels_first(&d.conv_out.forward(&h, None)?)
    }

    /// log sigma_dec^2, shape (1,).
    pub fn decoder_logvar(&self) -> &Tensor {
        &self.decoder_logvar
    }

    /// -log p(x | z) per image (N,) for the decoder mean `mu` (N, C, H, W).
    pub fn nll(&self, x: &Tensor, mu: &Tensor) -> candle_core::Result<Tensor> {
        gaussian_nll(x, mu, &self.decoder_logvar)
    }
}

/// Opens a `vae` model file (EMA weights when it has them), naming the file in errors.
pub fn open(path: &str, device: &candle_core::Device) -> Result<Vae> {
    let model = crate::io::model::load_kind(path, &["vae"], device)?;
    let cfg =
        VaeConfig::from_json(&model.config).map_err(|e| anyhow::anyhow!("{}: {e}", model.name))?;
    let params = Params::from_model(&model, super::Weights::Auto, device)?;
    Vae::new(&cfg, &params)
}

/// -log N(x; mu, exp(logvar) I) per image: (N,), logvar a (1,) scalar tensor.
pub fn gaussian_nll(x: &Tensor, mu: &Tensor, logvar: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let dim = x.elem_count() / n.max(1);
    let sq = (x - mu)?.sqr()?.reshape((n, ()))?.sum(1)?; // (N,)
    let inv_var = (logvar.neg()?.exp()? * 0.5)?; // 1 / (2 sigma^2), (1,)
    let constant = (((logvar * 0.5)? + HALF_LOG_2PI)? * dim as f64)?; // (1,)
    sq.broadcast_mul(&inv_var)?.broadcast_add(&constant)
}

/// How `encode-vae` turns the posterior into latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The posterior mean mu(x): deterministic.
    Mean,
    /// mu + sigma eps, eps of image i from stream (seed, Latent, i).
    Sample { seed: u64 },
}

/// Standard normals for images first..first + n, each from its own stream (seed, Latent, i),
/// shaped (n, k, h, w): image i's draw does not depend on how the set is batched.
pub fn posterior_noise(
    seed: u64,
    first: u64,
    n: usize,
    latent: [usize; 3],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let dim: usize = latent.iter().product();
    let v = rng::normal_rows(seed, Purpose::Latent, first, n, dim);
    Tensor::from_vec(v, (n, latent[0], latent[1], latent[2]), device)
}

/// Encodes images (N, C, H, W) to scaled latents (N, k, h, w), `batch` images at a time, so
/// the network's memory is bounded by the batch; the result does not depend on `batch`.
pub fn encode_all(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    how: Encoding,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let n = images.shape()[0];
    let latent = vae.config.latent_shape();
    let mut out = Vec::with_capacity(n * latent.iter().product::<usize>());
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = images.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let x = to_tensor(&chunk.to_owned(), device)?;
        let post = vae.encode(&x)?;
        let z = match how {
            Encoding::Mean => post.mean,
            Encoding::Sample { seed } => {
                post.sample(&posterior_noise(seed, first as u64, m, latent, device)?)?
            }
        };
        let z = (z * vae.config.scale_factor)?;
        out.extend(from_tensor(&z)?.iter().copied());
    }
    let shape = [n, latent[0], latent[1], latent[2]];
    Ok(ArrayD::from_shape_vec(ndarray::IxDyn(&shape), out)?)
}

/// Decodes scaled latents (N, k, h, w) to images (N, C, H, W) (the decoder mean), in batches.
pub fn decode_all(
    vae: &Vae,
    latents: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let n = latents.shape()[0];
    let [c, h, w] = vae.config.data_shape;
    let mut out = Vec::with_capacity(n * c * h * w);
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = latents.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let z = (to_tensor(&chunk.to_owned(), device)? / vae.config.scale_factor)?;
        out.extend(from_tensor(&vae.decode(&z)?)?.iter().copied());
    }
    Ok(ArrayD::from_shape_vec(ndarray::IxDyn(&[n, c, h, w]), out)?)
}

/// Decoded linear interpolations between the posterior means of image pairs:
/// for pair (a, b) and s_j = j / (steps - 1), D((1 - s_j) mu(x_a) + s_j mu(x_b)), j = 0..steps.
/// `images` (M, C, H, W); returns (pairs * steps, C, H, W), pair by pair.
pub fn interpolate_pairs(
    vae: &Vae,
    images: &ArrayD<f32>,
    pairs: &[(usize, usize)],
    steps: usize,
    device: &candle_core::Device,
) -> Result<ArrayD<f32>> {
    let m = images.shape()[0];
    if let Some(&(a, b)) = pairs.iter().find(|(a, b)| *a >= m || *b >= m) {
        bail!("pair {a}:{b} names an image past the {m} given");
    }
    let x = to_tensor(images, device)?;
    let mean = vae.encode(&x)?.mean;
    let mut rows = Vec::with_capacity(pairs.len() * steps);
    for &(a, b) in pairs {
        let (za, zb) = (mean.get(a)?, mean.get(b)?);
        for j in 0..steps {
            let s = if steps == 1 {
                0.0
            } else {
                j as f64 / (steps - 1) as f64
            };
            rows.push(((&za * (1.0 - s))? + (&zb * s)?)?);
        }
    }
    let z = Tensor::stack(&rows, 0)?;
    Ok(from_tensor(&vae.decode(&z)?)?)
}

/// What a VAE tool reads: images shaped as the VAE's data, or latents shaped as its latents.
#[derive(Clone, Copy, Debug)]
pub enum Side {
    Images,
    Latents,
}

/// The opening of every VAE tool: reads the .npy `input` (a path or `-`), opens the VAE at
/// `model_path` and checks the array is a finite batch (N, ...) of `side`'s shape. Returns the
/// model, the array and the input's display name for later messages.
pub fn open_with_batch(
    model_path: &str,
    input: &str,
    side: Side,
    device: &candle_core::Device,
) -> Result<(Vae, ArrayD<f32>, String)> {
    let x = crate::io::npy::read_f32(input)?;
    let name = crate::io::display_name(input);
    let model = open(model_path, device)?;
    let (want, what) = match side {
        Side::Images => (model.config.data_shape.to_vec(), "images"),
        Side::Latents => (model.config.latent_shape().to_vec(), "latents"),
    };
    expect_batch_of(x.shape(), &want, what, &name)?;
    crate::io::npy::expect_finite(&x, &name)?;
    Ok((model, x, name))
}

/// Fails unless `shape` is (N, ...want), naming `what`, the file, the expected and the found.
pub fn expect_batch_of(shape: &[usize], want: &[usize], what: &str, name: &str) -> Result<()> {
    if shape.len() != want.len() + 1 || shape[1..] != *want {
        let dims: Vec<String> = want.iter().map(|d| d.to_string()).collect();
        bail!(
            "expected {what} (N, {}), got {} in {name}",
            dims.join(", "),
            shape_str(shape)
        );
    }
    Ok(())
}

/// Reconstruction statistics of images `x` (N, C, H, W) through the posterior mean.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconStats {
    /// mean over pixels and images of (x - D(mu(x)))^2
    pub recon_mse: f64,
    /// mean over pixels and images of (x - mean image)^2: the error of predicting the mean
    pub mean_image_mse: f64,
    /// mean KL(q(z | x) || N(0, I)) per image
    pub kl: f64,
    pub n: usize,
}

/// Reconstruction MSE, the mean-image baseline and the mean KL of `images`, in batches.
pub fn recon_stats(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<ReconStats> {
    let n = images.shape()[0];
    let mean_image = images.mean_axis(ndarray::Axis(0)).expect("N >= 1");
    let mean_image_mse = images
        .outer_iter()
        .map(|img| (&img - &mean_image).mapv(|v| (v as f64).powi(2)).sum())
        .sum::<f64>()
        / images.len() as f64;
    let (mut sq, mut kl) = (0.0f64, 0.0f64);
    for first in (0..n).step_by(batch.max(1)) {
        let m = batch.min(n - first);
        let chunk = images.slice_axis(ndarray::Axis(0), (first..first + m).into());
        let x = to_tensor(&chunk.to_owned(), device)?;
        let post = vae.encode(&x)?;
        let rec = vae.decode(&post.mean)?;
        sq += (x - rec)?
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        kl += post
            .kl()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(ReconStats {
        recon_mse: sq / images.len() as f64,
        mean_image_mse,
        kl: kl / n as f64,
        n,
    })
}

/// The std of every element of the posterior means of `images` (unscaled): scale_factor is its
/// reciprocal.
pub fn latent_std(
    vae: &Vae,
    images: &ArrayD<f32>,
    batch: usize,
    device: &candle_core::Device,
) -> Result<f64> {
    let mut unscaled = vae.clone();
    unscaled.config.scale_factor = 1.0;
    let z = encode_all(&unscaled, images, batch, Encoding::Mean, device)?;
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    Ok(var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::wobbly;
    use candle_core::Device;

    fn tiny(data_shape: [usize; 3], channels: &[usize], k: usize) -> VaeConfig {
        VaeConfig {
            channels: channels.to_vec(),
            latent_channels: k,
            groups: default_groups(channels),
            ..VaeConfig::default_for(data_shape)
        }
    }

    #[test]
    fn shapes_for_28_and_32_pixel_images_and_several_latents() {
        let cases: [([usize; 3], &[usize], usize, [usize; 3]); 5] = [
            ([1, 32, 32], &[8, 16, 16], 4, [4, 8, 8]),
            ([1, 28, 28], &[8, 16, 16], 4, [4, 7, 7]),
            ([1, 28, 28], &[8, 16], 2, [2, 14, 14]),
            ([3, 32, 32], &[8, 8, 16, 16], 8, [8, 4, 4]),
            ([1, 16, 16], &[8], 1, [1, 16, 16]),
        ];
        for (shape, ch, k, latent) in cases {
            let mut cfg = tiny(shape, ch, k);
            cfg.attention = ch.len() == 3;
            assert_eq!(cfg.latent_shape(), latent);
            let vae = Vae::new(&cfg, &Params::new(0, &Device::Cpu)).unwrap();
            let mut dims = vec![2];
            dims.extend(shape);
            let x = wobbly(&dims, 1);
            let post = vae.encode(&x).unwrap();
            assert_eq!(post.mean.dims(), [2, latent[0], latent[1], latent[2]]);
            assert_eq!(post.logvar.dims(), post.mean.dims());
            assert_eq!(vae.decode(&post.mean).unwrap().dims(), &dims[..]);
            let again = VaeConfig::from_json(&cfg.to_json()).unwrap();
            assert_eq!(again, cfg);
        }
    }

    #[test]
    fn wrong_shapes_are_named() {
        let cfg = tiny([1, 32, 32], &[8, 16, 16], 4);
        let vae = Vae::new(&cfg, &Params::new(0, &Device::Cpu)).unwrap();
        let err = vae
            .decode(&wobbly(&[16, 1, 28, 28], 0))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("(N, 4, 8, 8)") && err.contains("(16, 1, 28, 28)"),
            "{err}"
        );
        assert!(vae.encode(&wobbly(&[2, 1, 28, 28], 0)).is_err());
    }

    #[test]
    fn kl_matches_the_closed_form() {
        // One image, two latent elements: mu = (1, -2), logvar = (0, ln 4).
        let mean = Tensor::new(&[1f32, -2.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let logvar = Tensor::new(&[0f32, 4f32.ln()], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 1))
            .unwrap();
        let kl: Vec<f32> = Posterior { mean, logvar }.kl().unwrap().to_vec1().unwrap();
        // (1 + 1 - 1 - 0)/2 + (4 + 4 - 1 - ln 4)/2
        let want = 0.5 + (7.0 - 4f32.ln()) / 2.0;
        assert!((kl[0] - want).abs() < 1e-5, "{kl:?} vs {want}");
    }

    #[test]
    fn gaussian_nll_matches_the_closed_form() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &Device::Cpu).unwrap();
        let mu = Tensor::new(&[[1.5f32, 2.0, 2.0]], &Device::Cpu).unwrap();
        let lv = Tensor::new(&[0.5f32.ln()], &Device::Cpu).unwrap(); // sigma^2 = 0.5
        let got: Vec<f32> = gaussian_nll(&x, &mu, &lv).unwrap().to_vec1().unwrap();
        let want = (0.25 + 1.0) / (2.0 * 0.5) + 3.0 * (0.5 * 0.5f64.ln() + HALF_LOG_2PI);
        assert!((got[0] as f64 - want).abs() < 1e-5, "{got:?} vs {want}");
    }

    /// Every parameter moves after two AdamW steps on the ELBO (the zero-initialised last convs
    /// block the gradient of the layers before them at the first step only).
    #[test]
    fn every_parameter_moves() {
        for (attention, logvar) in [(true, LogvarMode::PerElement), (false, LogvarMode::Scalar)] {
            let mut cfg = tiny([1, 16, 16], &[8, 16], 2);
            cfg.attention = attention;
            cfg.logvar = logvar;
            let params = Params::new(3, &Device::Cpu);
            let vae = Vae::new(&cfg, &params).unwrap();
            let x = wobbly(&[4, 1, 16, 16], 2);
            let loss = || {
                let post = vae.encode(&x).unwrap();
                let eps = posterior_noise(0, 0, 4, cfg.latent_shape(), &Device::Cpu).unwrap();
                let z = post.sample(&eps).unwrap();
                let nll = vae.nll(&x, &vae.decode(&z).unwrap()).unwrap();
                (nll + post.kl().unwrap()).unwrap().mean_all().unwrap()
            };
            crate::train::unmoved_params(&params, &loss()).unwrap();
            let unmoved = crate::train::unmoved_params(&params, &loss()).unwrap();
            assert_eq!(unmoved, Vec::<String>::new(), "attention {attention}");
        }
    }

    #[test]
    fn posterior_noise_is_per_image() {
        let latent = [2, 3, 3];
        let whole = posterior_noise(5, 0, 6, latent, &Device::Cpu).unwrap();
        let part = posterior_noise(5, 4, 2, latent, &Device::Cpu).unwrap();
        let a: Vec<f32> = whole
            .narrow(0, 4, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = part.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn batched_encoding_does_not_depend_on_the_batch() {
        let cfg = tiny([1, 16, 16], &[8, 16], 2);
        let vae = Vae::new(&cfg, &Params::new(1, &Device::Cpu)).unwrap();
        let x = crate::device::from_tensor(&wobbly(&[7, 1, 16, 16], 4)).unwrap();
        for how in [Encoding::Mean, Encoding::Sample { seed: 2 }] {
            let a = encode_all(&vae, &x, 7, how, &Device::Cpu).unwrap();
            let b = encode_all(&vae, &x, 3, how, &Device::Cpu).unwrap();
            assert_eq!(a, b, "{how:?}");
        }
        let z = encode_all(&vae, &x, 7, Encoding::Mean, &Device::Cpu).unwrap();
        let s = encode_all(&vae, &x, 7, Encoding::Sample { seed: 2 }, &Device::Cpu).unwrap();
        assert_ne!(z, s);
        assert_eq!(
            decode_all(&vae, &z, 4, &Device::Cpu).unwrap().shape(),
            &[7, 1, 16, 16]
        );
    }
}
