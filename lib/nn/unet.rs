//! The U-Net of Lab 3 (2025; notes section 5.2, Ronneberger et al. 2015): a conditional vector
//! field u_t^theta(x | y) on images, x (N, C, H, W), conditioned on t and a class label y (or the
//! null label, for classifier-free guidance).
//!
//! ```text
//! x -> conv3x3 -> GroupNorm -> SiLU                                   (C -> c0)
//!   -> encoder l (l = 0 .. L-2): B residual layers at c_l, conv3x3 stride 2 (c_l -> c_{l+1}),
//!      its output kept as the skip s_l                                (H -> ceil(H / 2))
//!   -> midcoder: B residual layers at c_{L-1}
//!   -> decoder l (l = L-2 .. 0): h + s_l, nearest upsample x2 (cropped to encoder l's input
//!      size) + conv3x3 (c_{l+1} -> c_l), B residual layers at c_l
//!   -> conv3x3 (c0 -> C)
//! residual layer: h = conv(SiLU(GN(x))); h += A_t(phi(t)) + A_y(e(y)); x + conv(SiLU(GN(h)))
//! ```
//! phi(t) are the learned random Fourier features of the lab, e(y) a label embedding with a null
//! row; the adapters A_t, A_y are Linear -> SiLU -> Linear, one per residual layer, added after
//! the first convolution. Differences from the lab, and why: GroupNorm instead of BatchNorm (the
//! same in training and sampling, independent of the batch), normalisation before the SiLU (the
//! usual pre-activation order), nearest instead of bilinear upsampling (folded into the next
//! convolution's gather, see [`super::layers`]). Odd sizes work (28 -> 14 -> 7 -> 4, and back by
//! cropping), so MNIST needs no padding to 32; latents such as 4x8x8 work as they are.
//!
//! Internally images are channels-last (N, H, W, C), converted once on the way in and out.

use candle_core::Tensor;
use serde_json::{json, Value};

use super::config::{groups, image_shape, positive, size, sizes, ConfigResult};
use super::embed::{label_ids, FourierFeatures, LabelEmbedding};
use super::init::{linear, Linear, Params};
use super::layers::{
    to_channels_first, to_channels_last, Conv2d, GatherCache, Geometry, GroupNorm,
};
use super::ops::Activated;
use super::{time_column, FieldNet};
use crate::Result;

/// The sizes of a [`UNet`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// [C, H, W] of one sample.
    pub data_shape: [usize; 3],
    /// Channels per level, e.g. [32, 64, 128]: len - 1 halvings of the resolution.
    pub channels: Vec<usize>,
    /// Residual layers per level (in each encoder, the midcoder and each decoder).
    pub blocks_per_level: usize,
    /// Fourier features of t (even).
    pub time_embed_dim: usize,
    pub label_embed_dim: usize,
    /// Classes 0..num_classes, plus the null label num_classes; 0: unconditional.
    pub num_classes: usize,
    /// GroupNorm groups; must divide every channel count.
    pub groups: usize,
}

impl UNetConfig {
    /// The lab's sizes for images of `data_shape`: channels [32, 64, 128], 2 residual layers per
    /// level, 40-dimensional time and label embeddings, 8 groups.
    pub fn lab(data_shape: [usize; 3], num_classes: usize) -> UNetConfig {
        UNetConfig {
            data_shape,
            channels: vec![32, 64, 128],
            blocks_per_level: 2,
            time_embed_dim: 40,
            label_embed_dim: 40,
            num_classes,
            groups: 8,
        }
    }

    /// The config fields: `arch` ("unet"), `data_shape`, `channels`, `blocks_per_level`,
    /// `time_embed_dim`, `label_embed_dim`, `num_classes`, `groups`.
    pub fn to_json(&self) -> Value {
        json!({
            "arch": "unet",
            "data_shape": self.data_shape,
            "channels": self.channels,
            "blocks_per_level": self.blocks_per_level,
            "time_embed_dim": self.time_embed_dim,
            "label_embed_dim": self.label_embed_dim,
            "num_classes": self.num_classes,
            "groups": self.groups,
        })
    }

    /// Reads a config; absent keys take the lab's values (groups: the largest of 8, 4, 2, 1
    /// dividing every channel count).
    pub fn from_json(config: &Value) -> ConfigResult<UNetConfig> {
        let data_shape = image_shape(config, "unet")?;
        let channels = sizes(config, "channels")?.unwrap_or_else(|| vec![32, 64, 128]);
        if channels.is_empty() || channels.contains(&0) {
            return Err(format!(
                "unet channels must be positive, found {channels:?}"
            ));
        }
        let groups = groups(config, "unet", &channels)?;
        let time_embed_dim = positive(config, "time_embed_dim", 40)?;
        if time_embed_dim % 2 != 0 {
            return Err(format!(
                "time_embed_dim must be even, found {time_embed_dim}"
            ));
        }
        Ok(UNetConfig {
            data_shape,
            channels,
            blocks_per_level: size(config, "blocks_per_level", 2)?,
            time_embed_dim,
            label_embed_dim: positive(config, "label_embed_dim", 40)?,
            num_classes: size(config, "num_classes", 0)?,
            groups,
        })
    }
}

/// Linear -> SiLU -> Linear from a conditioning embedding to one value per channel.
#[derive(Clone)]
struct Adapter(Linear, Linear);

impl Adapter {
    fn new(params: &Params, name: &str, dim: usize, channels: usize) -> Result<Adapter> {
        let p = params.pp(name);
        Ok(Adapter(
            linear(&p, "0", dim, dim)?,
            linear(&p, "1", dim, channels)?,
        ))
    }

    /// (N, dim) -> (N, channels)
    fn forward(&self, e: &Tensor) -> candle_core::Result<Tensor> {
        self.1.forward(&self.0.forward_act(e, Activated::Silu)?)
    }
}

/// x + conv(SiLU(GN(conv(SiLU(GN(x))) + A_t(t) + A_y(y)))), at constant channels and size.
#[derive(Clone)]
pub struct ResidualLayer {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_adapter: Adapter,
    label_adapter: Option<Adapter>,
}

impl ResidualLayer {
    fn new(p: &Params, cfg: &UNetConfig, c: usize, cache: &GatherCache) -> Result<Self> {
        Ok(ResidualLayer {
            norm1: GroupNorm::new(p, "norm1", cfg.groups, c)?,
            conv1: Conv2d::new(p, "conv1", c, c, Geometry::SAME3, cache)?,
            norm2: GroupNorm::new(p, "norm2", cfg.groups, c)?,
            conv2: Conv2d::new(p, "conv2", c, c, Geometry::SAME3, cache)?,
            time_adapter: Adapter::new(p, "time_adapter", cfg.time_embed_dim, c)?,
            label_adapter: match cfg.num_classes {
                0 => None,
                _ => Some(Adapter::new(p, "label_adapter", cfg.label_embed_dim, c)?),
            },
        })
    }

    /// x: (N, H, W, C), t_emb: (N, Te), y_emb: (N, Ye) when conditional -> (N, H, W, C).
    pub fn forward(
        &self,
        x: &Tensor,
        t_emb: &Tensor,
        y_emb: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut cond = self.time_adapter.forward(t_emb)?;
        if let (Some(a), Some(y)) = (&self.label_adapter, y_emb) {
            cond = (cond + a.forward(y)?)?;
        }
        let h = (self.conv1).forward_sample_bias(&self.norm1.forward_silu(x)?, &cond)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?, None)?;
        x + h
    }
}

/// One resolution level: residual layers, and the convolution to the next level.
#[derive(Clone)]
struct Encoder {
    res: Vec<ResidualLayer>,
    down: Conv2d,
}

/// One resolution level on the way up: upsampling convolution, then residual layers.
#[derive(Clone)]
struct Decoder {
    up: Conv2d,
    res: Vec<ResidualLayer>,
}

/// The Lab 3 U-Net (see the module docs).
#[derive(Clone)]
pub struct UNet {
    pub config: UNetConfig,
    init_conv: Conv2d,
    init_norm: GroupNorm,
    time_embed: FourierFeatures,
    label_embed: Option<LabelEmbedding>,
    encoders: Vec<Encoder>,
    mid: Vec<ResidualLayer>,
    /// decoders[l] undoes encoders[l]; applied from the deepest.
    decoders: Vec<Decoder>,
    final_conv: Conv2d,
}

fn residual_layers(
    p: &Params,
    cfg: &UNetConfig,
    c: usize,
    cache: &GatherCache,
) -> Result<Vec<ResidualLayer>> {
    (0..cfg.blocks_per_level)
        .map(|j| ResidualLayer::new(&p.pp(j.to_string()), cfg, c, cache))
        .collect()
}

impl UNet {
    /// Builds the layers from `params` (initialising or loading them). Names: `init_conv`,
    /// `init_norm`, `time_embed`, `label_embed`, `down.<l>.res.<j>`, `down.<l>.conv`,
    /// `mid.res.<j>`, `up.<l>.conv`, `up.<l>.res.<j>`, `final_conv`.
    pub fn new(cfg: &UNetConfig, params: &Params) -> Result<UNet> {
        let cache = GatherCache::default();
        let [c_in, _, _] = cfg.data_shape;
        let ch = &cfg.channels;
        let mut encoders = Vec::new();
        let mut decoders = Vec::new();
        for (l, pair) in ch.windows(2).enumerate() {
            let down = params.pp("down").pp(l.to_string());
            let up = params.pp("up").pp(l.to_string());
            encoders.push(Encoder {
                res: residual_layers(&down.pp("res"), cfg, pair[0], &cache)?,
                down: Conv2d::new(&down, "conv", pair[0], pair[1], Geometry::DOWN3, &cache)?,
            });
            decoders.push(Decoder {
                up: Conv2d::new(&up, "conv", pair[1], pair[0], Geometry::UP3, &cache)?,
                res: residual_layers(&up.pp("res"), cfg, pair[0], &cache)?,
            });
        }
        let last = *ch.last().expect("channels checked non-empty");
        Ok(UNet {
            init_conv: Conv2d::new(params, "init_conv", c_in, ch[0], Geometry::SAME3, &cache)?,
            init_norm: GroupNorm::new(params, "init_norm", cfg.groups, ch[0])?,
            time_embed: FourierFeatures::new(params, "time_embed", cfg.time_embed_dim)?,
            label_embed: match cfg.num_classes {
                0 => None,
                k => Some(LabelEmbedding::new(
                    params,
                    "label_embed",
                    k,
                    cfg.label_embed_dim,
                )?),
            },
            encoders,
            mid: residual_layers(&params.pp("mid").pp("res"), cfg, last, &cache)?,
            decoders,
            final_conv: Conv2d::new(params, "final_conv", ch[0], c_in, Geometry::SAME3, &cache)?,
            config: cfg.clone(),
        })
    }
}

impl FieldNet for UNet {
    /// x: (N, C, H, W) (any H, W), t: (N, 1), y: (N,) labels or None -> (N, C, H, W).
    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        if c != self.config.data_shape[0] {
            candle_core::bail!(
                "the unet expects {} channels, got x of shape {:?}",
                self.config.data_shape[0],
                x.dims()
            );
        }
        let t_emb = self.time_embed.forward(&time_column(t, n)?)?;
        let y_emb = match &self.label_embed {
            Some(e) => Some(e.forward(y, n)?),
            None => {
                label_ids(y, n, 0, x.device())?;
                None
            }
        };
        let y_emb = y_emb.as_ref();
        let mut h = self
            .init_norm
            .forward_silu(&self.init_conv.forward(&to_channels_last(x)?, None)?)?;
        let mut skips = Vec::with_capacity(self.encoders.len());
        for enc in &self.encoders {
            for r in &enc.res {
                h = r.forward(&h, &t_emb, y_emb)?;
            }
            let (_, hh, ww, _) = h.dims4()?;
            h = enc.down.forward(&h, None)?;
            skips.push((h.clone(), (hh, ww)));
        }
        for r in &self.mid {
            h = r.forward(&h, &t_emb, y_emb)?;
        }
        for dec in self.decoders.iter().rev() {
            let (skip, size) = skips.pop().expect("one skip per decoder");
            h = dec.up.forward(&(h + skip)?, Some(size))?;
            for r in &dec.res {
                h = r.forward(&h, &t_emb, y_emb)?;
            }
        }
        to_channels_first(&self.final_conv.forward(&h, None)?)
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::{max_abs_diff, wobbly};
    use crate::nn::testing::{every_parameter_moves, loss_falls};
    use candle_core::Device;

    fn tiny(data_shape: [usize; 3], channels: &[usize], num_classes: usize) -> UNetConfig {
        UNetConfig {
            data_shape,
            channels: channels.to_vec(),
            blocks_per_level: 1,
            time_embed_dim: 8,
            label_embed_dim: 6,
            num_classes,
            groups: 2,
        }
    }

    fn labels(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn output_has_the_input_shape_for_mnist_cifar_latent_and_odd_sizes() {
        for (shape, channels) in [
            ([1, 28, 28], vec![4, 8, 8]),
            ([1, 32, 32], vec![4, 8, 8]),
            ([3, 32, 32], vec![4, 8]),
            ([4, 8, 8], vec![4, 8, 8]),
            ([2, 7, 5], vec![4, 4, 8, 8]), // 7x5 -> 4x3 -> 2x2 -> 1x1 and back
        ] {
            let p = Params::new(0, &Device::Cpu);
            let net = UNet::new(&tiny(shape, &channels, 10), &p).unwrap();
            for n in [1, 3] {
                let x = wobbly(&[n, shape[0], shape[1], shape[2]], 1);
                let t = Tensor::full(0.5f32, (n, 1), &Device::Cpu).unwrap();
                let y = labels(&[3, 10, 0][..n]);
                let out = net.forward(&x, &t, Some(&y)).unwrap();
                assert_eq!(out.dims(), x.dims(), "{shape:?}, batch {n}");
            }
        }
    }

    #[test]
    fn the_lab_config_has_the_lab_layout() {
        let p = Params::new(0, &Device::Cpu);
        UNet::new(&UNetConfig::lab([1, 32, 32], 10), &p).unwrap();
        let names: Vec<String> = p.vars().into_iter().map(|(n, _)| n).collect();
        for want in [
            "init_conv.weight",
            "down.0.res.1.conv2.weight",
            "down.1.conv.weight",
            "mid.res.1.label_adapter.1.weight",
            "up.0.conv.weight",
            "up.1.res.0.time_adapter.0.bias",
            "label_embed.weight",
            "time_embed.weights",
            "final_conv.bias",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing");
        }
        let shape = |name: &str| {
            p.vars()
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .dims()
                .to_vec()
        };
        assert_eq!(shape("down.1.conv.weight"), [128, 64, 3, 3]);
        assert_eq!(shape("up.1.conv.weight"), [64, 128, 3, 3]);
        assert_eq!(shape("label_embed.weight"), [11, 40]);
        assert!(!names.iter().any(|n| n.starts_with("down.2")));
    }

    #[test]
    fn labels_change_the_output_and_unconditional_nets_refuse_them() {
        let p = Params::new(3, &Device::Cpu);
        let net = UNet::new(&tiny([1, 8, 8], &[4, 8], 3), &p).unwrap();
        let x = wobbly(&[2, 1, 8, 8], 2);
        let t = Tensor::new(&[[0.2f32], [0.7]], &Device::Cpu).unwrap();
        let null = net.forward(&x, &t, None).unwrap();
        let explicit_null = net.forward(&x, &t, Some(&labels(&[3, 3]))).unwrap();
        assert_eq!(max_abs_diff(&null, &explicit_null), 0.0);
        let real = net.forward(&x, &t, Some(&labels(&[0, 2]))).unwrap();
        assert!(max_abs_diff(&null, &real) > 1e-4);
        assert!(net.forward(&x, &t, Some(&labels(&[4, 0]))).is_err());

        let q = Params::new(3, &Device::Cpu);
        let plain = UNet::new(&tiny([1, 8, 8], &[4, 8], 0), &q).unwrap();
        assert!(!q.vars().iter().any(|(n, _)| n.contains("label")));
        assert!(plain.forward(&x, &t, None).is_ok());
        assert!(plain.forward(&x, &t, Some(&labels(&[1, 0]))).is_err());
    }

    #[test]
    fn every_parameter_moves_after_one_step() {
        let p = Params::new(4, &Device::Cpu);
        let net = UNet::new(&tiny([1, 8, 8], &[4, 8], 3), &p).unwrap();
        let x = wobbly(&[4, 1, 8, 8], 5);
        every_parameter_moves(&net, &p, &x, Some(&labels(&[0, 1, 2, 3])), 1, &[]);
    }

    #[test]
    fn loss_falls_on_a_tiny_fixed_batch() {
        let p = Params::new(5, &Device::Cpu);
        let net = UNet::new(&tiny([1, 8, 8], &[8, 16], 3), &p).unwrap();
        let x = wobbly(&[8, 1, 8, 8], 6);
        loss_falls(
            &net,
            &p,
            &x,
            Some(&labels(&[0, 1, 2, 3, 0, 1, 2, 3])),
            50,
            0.2,
        );
    }

    #[test]
    fn config_round_trips_and_rebuilds_through_build() {
        let cfg = tiny([1, 8, 8], &[4, 8], 3);
        assert_eq!(UNetConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let lab = UNetConfig::from_json(&json!({"data_shape": [1, 28, 28], "groups": 8})).unwrap();
        assert_eq!(lab, UNetConfig::lab([1, 28, 28], 0));
        // groups is required: the tensors cannot tell it.
        let e = UNetConfig::from_json(&json!({"data_shape": [1, 28, 28]})).unwrap_err();
        assert!(
            e.contains("no 'groups'") && e.contains("[32, 64, 128]"),
            "{e}"
        );
        let mut bad = cfg.to_json();
        bad["groups"] = json!(3);
        assert!(UNetConfig::from_json(&bad).unwrap_err().contains("groups"));
        bad["data_shape"] = json!([2]);
        assert!(UNetConfig::from_json(&bad)
            .unwrap_err()
            .contains("[C, H, W]"));

        let p = Params::new(6, &Device::Cpu);
        let net = UNet::new(&cfg, &p).unwrap();
        let loaded = Params::from_tensors(p.tensors().into_iter().collect(), "", "m", &Device::Cpu);
        let rebuilt = crate::nn::build(&cfg.to_json(), &loaded).unwrap();
        let x = wobbly(&[2, 1, 8, 8], 7);
        let t = Tensor::new(&[[0.1f32], [0.9]], &Device::Cpu).unwrap();
        let y = labels(&[1, 3]);
        let a = net.forward(&x, &t, Some(&y)).unwrap();
        let b = rebuilt.forward(&x, &t, Some(&y)).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        assert_eq!(rebuilt.num_classes(), 3);
    }
}
