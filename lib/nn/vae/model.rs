//! The network: encoder q_phi(z | x), decoder mean D_theta(z) and the decoder variance, the
//! posterior they give (its sampling and KL) and the Gaussian negative log-likelihood.

use candle_core::Tensor;

use super::blocks::{res_blocks, Mid, ResBlock};
use super::{DecoderVariance, LogvarMode, VaeConfig};
use crate::io::npy::shape_str;
use crate::nn::init::{Init, Params};
use crate::nn::layers::{
    to_channels_first, to_channels_last, Conv2d, GatherCache, Geometry, GroupNorm,
};
use crate::Result;

/// log(2 pi) / 2, the constant of a Gaussian log-density per coordinate.
const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_8;
/// The encoder's log-variance is clamped to this range (exp(-30)..exp(20)) for stability.
const LOGVAR_RANGE: (f32, f32) = (-30.0, 20.0);
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
        let h = e.norm_out.forward_silu(&e.mid.forward(&h)?)?;
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
        let h = d.norm_out.forward_silu(&h)?;
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

/// -log N(x; mu, exp(logvar) I) per image: (N,), logvar a (1,) scalar tensor.
pub fn gaussian_nll(x: &Tensor, mu: &Tensor, logvar: &Tensor) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let dim = x.elem_count() / n.max(1);
    let sq = (x - mu)?.sqr()?.reshape((n, ()))?.sum(1)?; // (N,)
    let inv_var = (logvar.neg()?.exp()? * 0.5)?; // 1 / (2 sigma^2), (1,)
    let constant = (((logvar * 0.5)? + HALF_LOG_2PI)? * dim as f64)?; // (1,)
    sq.broadcast_mul(&inv_var)?.broadcast_add(&constant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::wobbly;
    use crate::nn::vae::posterior_noise;
    use crate::nn::vae::testing::tiny;
    use candle_core::Device;

    #[test]
    fn shapes_for_28_and_32_pixel_images_and_several_latents() {
        // (data shape, channels per level, latent channels, latent shape)
        type Case = ([usize; 3], &'static [usize], usize, [usize; 3]);
        let cases: [Case; 5] = [
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
}
