//! A small CNN image classifier p_phi(y | x): the yardstick of the image metrics (classifier-FID,
//! KID, guided accuracy; see [`crate::eval::images`]) and the classifier of classifier guidance
//! (notes section 5.1, eq. of the guided score grad log p(x | y) = grad log p(x) + grad log
//! p(y | x)).
//!
//! ```text
//! x (N, C, H, W) -> for each level l: conv3x3 stride 2 (c_{l-1} -> c_l), GroupNorm, SiLU
//!   (H -> ceil(H / 2) per level: 28 -> 14 -> 7)
//!   -> flatten -> Linear -> SiLU = the penultimate features f(x) (N, F)
//!   -> Linear -> logits (N, K)
//! ```
//! Trained by minimising the cross-entropy -log softmax(z)_y, with the log-softmax written from
//! primitive ops that have a gradient (candle 0.11's fused softmax has none):
//! log softmax(z)_i = z_i - m - log sum_j exp(z_j - m), m = max_j z_j (detached: a constant shift
//! that leaves the value unchanged and keeps exp from overflowing).

use candle_core::{DType, Device, Tensor, D};
use serde_json::{json, Value};

use super::config::{groups, image_shape, positive, sizes, ConfigResult};
use super::init::{linear, Linear, Params, Weights};
use super::layers::{to_channels_last, Conv2d, GatherCache, Geometry, GroupNorm};
use super::ops::Activated;
use crate::io::model::ModelFile;
use crate::Result;

/// The model-file kind of a classifier.
pub const KIND: &str = "classifier";

/// The sizes of a [`Classifier`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// [C, H, W] of one image.
    pub data_shape: [usize; 3],
    /// Channels of the stride-2 convolutions, e.g. [32, 64].
    pub channels: Vec<usize>,
    /// F, the width of the penultimate features.
    pub features: usize,
    /// K, the number of classes.
    pub num_classes: usize,
    /// GroupNorm groups; must divide every channel count.
    pub groups: usize,
}

impl ClassifierConfig {
    /// The default sizes for images of `data_shape`: channels [32, 64], 128 features, 8 groups.
    pub fn small(data_shape: [usize; 3], num_classes: usize) -> ClassifierConfig {
        ClassifierConfig {
            data_shape,
            channels: vec![32, 64],
            features: 128,
            num_classes,
            groups: 8,
        }
    }

    /// The config fields: `kind` ("classifier"), `arch` ("cnn"), `data_shape`, `channels`,
    /// `features`, `num_classes`, `groups`.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": KIND,
            "arch": "cnn",
            "data_shape": self.data_shape,
            "channels": self.channels,
            "features": self.features,
            "num_classes": self.num_classes,
            "groups": self.groups,
        })
    }

    /// Reads a config; `num_classes` is required, the rest default to [`Self::small`]'s.
    pub fn from_json(config: &Value) -> ConfigResult<ClassifierConfig> {
        let data_shape = image_shape(config, "classifier")?;
        let channels = sizes(config, "channels")?.unwrap_or_else(|| vec![32, 64]);
        if channels.is_empty() || channels.contains(&0) {
            return Err(format!(
                "classifier channels must be positive, found {channels:?}"
            ));
        }
        let groups = groups(config, "classifier", &channels)?;
        let num_classes = match config["num_classes"].as_u64() {
            Some(k) if k >= 2 => k as usize,
            _ => {
                return Err(format!(
                    "a classifier needs num_classes of at least 2, found {}",
                    config["num_classes"]
                ))
            }
        };
        Ok(ClassifierConfig {
            data_shape,
            channels,
            features: positive(config, "features", 128)?,
            num_classes,
            groups,
        })
    }

    /// The (height, width) after the stride-2 convolutions.
    fn final_size(&self) -> (usize, usize) {
        let [_, mut h, mut w] = self.data_shape;
        for _ in &self.channels {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
        }
        (h, w)
    }
}

/// One stride-2 convolution with its normalisation.
#[derive(Clone)]
struct Level {
    conv: Conv2d,
    norm: GroupNorm,
}

/// The classifier network.
#[derive(Clone)]
pub struct Classifier {
    pub config: ClassifierConfig,
    levels: Vec<Level>,
    hidden: Linear,
    head: Linear,
}

impl Classifier {
    /// Builds the network, its weights from `params` (fresh or loaded).
    pub fn new(cfg: &ClassifierConfig, params: &Params) -> Result<Classifier> {
        let cache = GatherCache::default();
        let mut levels = Vec::new();
        let mut c_in = cfg.data_shape[0];
        for (l, &c) in cfg.channels.iter().enumerate() {
            let p = params.pp(format!("levels.{l}"));
            levels.push(Level {
                conv: Conv2d::new(&p, "conv", c_in, c, Geometry::DOWN3, &cache)?,
                norm: GroupNorm::new(&p, "norm", cfg.groups, c)?,
            });
            c_in = c;
        }
        let (h, w) = cfg.final_size();
        Ok(Classifier {
            config: cfg.clone(),
            levels,
            hidden: linear(params, "hidden", c_in * h * w, cfg.features)?,
            head: linear(params, "head", cfg.features, cfg.num_classes)?,
        })
    }

    /// The penultimate features f(x): x (N, C, H, W) -> (N, F).
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let mut h = to_channels_last(x)?;
        for level in &self.levels {
            h = level.norm.forward_silu(&level.conv.forward(&h, None)?)?;
        }
        self.hidden
            .forward_act(&h.reshape((n, ()))?, Activated::Silu)
    }

    /// The class logits z: x (N, C, H, W) -> (N, K).
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(&self.features(x)?)
    }

    /// Loads a classifier model file (kind `classifier`; EMA weights when it has them).
    pub fn open(path: &str, device: &Device) -> Result<(Classifier, ModelFile)> {
        let model = crate::io::model::load_kind(path, &[KIND], device)?;
        let build = |c: &Value, params: &Params| {
            let cfg = ClassifierConfig::from_json(c).map_err(anyhow::Error::msg)?;
            Classifier::new(&cfg, params)
        };
        let net = super::open_checked(&model, Weights::Auto, device, &model.config, build)?;
        Ok((net, model))
    }

    /// The logits of features `f` (N, F) from [`Self::features`]: (N, K).
    pub fn logits_of_features(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        self.head.forward(f)
    }
}

/// log softmax over the last dimension: z (N, K) -> (N, K), from ops with a gradient.
pub fn log_softmax(z: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = z.broadcast_sub(&z.max_keepdim(D::Minus1)?.detach())?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Mean cross-entropy -1/N sum_i log softmax(z_i)_{y_i}. `z`: (N, K) logits; `y`: (N,) integer
/// labels in 0..K.
pub fn cross_entropy(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = z.dims2()?;
    let picked = log_softmax(z)?.gather(&y.to_dtype(DType::U32)?.reshape((n, 1))?, 1)?;
    debug_assert!(k > 0);
    picked.sum_all()?.affine(-1.0 / n as f64, 0.0)
}

/// The predicted class argmax_k z_k of each row: (N, K) -> N labels.
pub fn predictions(z: &Tensor) -> candle_core::Result<Vec<u32>> {
    z.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::{max_abs_diff, wobbly};
    use candle_core::Device;

    fn cfg() -> ClassifierConfig {
        ClassifierConfig {
            data_shape: [1, 7, 8],
            channels: vec![8, 16],
            features: 12,
            num_classes: 3,
            groups: 4,
        }
    }

    #[test]
    fn shapes_and_config_round_trip() {
        let c = cfg();
        assert_eq!(ClassifierConfig::from_json(&c.to_json()).unwrap(), c);
        let net = Classifier::new(&c, &Params::new(0, &Device::Cpu)).unwrap();
        let x = wobbly(&[5, 1, 7, 8], 1);
        assert_eq!(net.features(&x).unwrap().dims(), &[5, 12]);
        assert_eq!(net.logits(&x).unwrap().dims(), &[5, 3]);
        let mut bad = c.to_json();
        bad["num_classes"] = json!(1);
        assert!(ClassifierConfig::from_json(&bad)
            .unwrap_err()
            .contains("num_classes"));
    }

    #[test]
    fn log_softmax_matches_candle_and_cross_entropy_its_closed_form() {
        let z = (wobbly(&[4, 5], 3) * 30.0).unwrap();
        let ours = log_softmax(&z).unwrap();
        let theirs = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
        assert!(max_abs_diff(&ours, &theirs) < 1e-4);
        // Uniform logits: the loss is log K whatever the labels.
        let flat = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 3, 1], &Device::Cpu).unwrap();
        let ce: f32 = cross_entropy(&flat, &y).unwrap().to_scalar().unwrap();
        assert!((ce - 4f32.ln()).abs() < 1e-6, "{ce}");
    }

    #[test]
    fn every_parameter_moves_under_the_cross_entropy() {
        let params = Params::new(2, &Device::Cpu);
        let net = Classifier::new(&cfg(), &params).unwrap();
        let x = wobbly(&[6, 1, 7, 8], 4);
        let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &Device::Cpu).unwrap();
        let loss = cross_entropy(&net.logits(&x).unwrap(), &y).unwrap();
        let unmoved = crate::train::unmoved_params(&params, &loss).unwrap();
        assert!(unmoved.is_empty(), "{unmoved:?}");
    }
}
