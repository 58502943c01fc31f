//! The noisy, time-conditioned classifier p_phi(y | x_t, t) of classifier guidance (notes section
//! 5, the guided score grad log p_t(x | y) = grad log p_t(x) + grad_x log p_t(y | x)).
//!
//! Unlike the metrics classifier ([`super::classifier`], clean images only), it sees x_t along
//! the flow model's probability path at every time t, so its gradient in x is meaningful where the
//! sampler evaluates it. t enters as the flow models' MLP takes it: t itself and 2K Fourier
//! features sin(2 pi k t), cos(2 pi k t), k = 1..K.
//!
//! ```text
//! tmlp (points, data_shape [D]):
//!   [x, t, sin.., cos..] (N, D + 1 + 2K) -> hidden Linear + SiLU layers -> head Linear (N, K)
//! tcnn (images or latents, data_shape [C, H, W]):
//!   [x, t as one more channel] (N, C + 1, H, W) -> per level: conv3x3 stride 2, GroupNorm, SiLU
//!   -> flatten -> [., t, sin.., cos..] -> hidden Linear + SiLU -> head Linear (N, num_classes)
//! ```
//! The model file (kind `noisy-classifier`) also stores the path it was trained on, so that
//! guidance can refuse a flow model on another path.

use candle_core::{Device, Tensor, D};
use serde_json::{json, Value};

use super::config::{groups, positive, sizes, ConfigResult};
use super::init::{linear, Linear, Params, Weights};
use super::layers::{to_channels_last, Conv2d, GatherCache, Geometry, GroupNorm};
use super::ops::Activated;
use crate::io::model::ModelFile;
use crate::paths::{GaussianPath, Path};
use crate::Result;

/// The model-file kind of a noisy classifier.
pub const KIND: &str = "noisy-classifier";

/// The body of the network: an MLP for points, a CNN for images.
#[derive(Clone, Debug, PartialEq)]
pub enum NoisyArch {
    /// `tmlp`: hidden widths.
    Mlp { hidden: Vec<usize> },
    /// `tcnn`: stride-2 convolution channels, penultimate width, GroupNorm groups.
    Cnn {
        channels: Vec<usize>,
        features: usize,
        groups: usize,
    },
}

/// The sizes of a [`NoisyClassifier`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct NoisyConfig {
    /// [D] for points, [C, H, W] for images.
    pub data_shape: Vec<usize>,
    pub arch: NoisyArch,
    /// K Fourier frequencies of t.
    pub time_features: usize,
    /// The number of classes (at least 2).
    pub num_classes: usize,
    /// The Gaussian path x_t was drawn along in training.
    pub path: GaussianPath,
}

impl NoisyConfig {
    /// The config fields: `kind`, `arch` (`tmlp` or `tcnn`), `data_shape`, `time_features`,
    /// `num_classes`, `path`, and `hidden` (tmlp) or `channels`, `features`, `groups` (tcnn).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": KIND,
            "data_shape": self.data_shape,
            "time_features": self.time_features,
            "num_classes": self.num_classes,
            "path": Path::Gaussian(self.path).to_json(),
        });
        match &self.arch {
            NoisyArch::Mlp { hidden } => {
                v["arch"] = json!("tmlp");
                v["hidden"] = json!(hidden);
            }
            NoisyArch::Cnn {
                channels,
                features,
                groups,
            } => {
                v["arch"] = json!("tcnn");
                v["channels"] = json!(channels);
                v["features"] = json!(features);
                v["groups"] = json!(groups);
            }
        }
        v
    }

    /// Reads a config written by [`Self::to_json`].
    pub fn from_json(config: &Value) -> ConfigResult<NoisyConfig> {
        let data_shape = sizes(config, "data_shape")?.unwrap_or_default();
        if data_shape.is_empty() || data_shape.contains(&0) {
            return Err(format!(
                "a noisy classifier needs a data_shape [D] or [C, H, W], found {}",
                config["data_shape"]
            ));
        }
        let list = |key: &str| -> ConfigResult<Vec<usize>> {
            match sizes(config, key)? {
                Some(v) if !v.is_empty() && !v.contains(&0) => Ok(v),
                _ => Err(format!(
                    "the noisy classifier needs '{key}', a list of positive sizes, found {}",
                    config[key]
                )),
            }
        };
        let arch = match (config["arch"].as_str(), data_shape.len()) {
            (Some("tmlp"), 1) => NoisyArch::Mlp {
                hidden: list("hidden")?,
            },
            (Some("tcnn"), 3) => {
                let channels = list("channels")?;
                NoisyArch::Cnn {
                    groups: groups(config, "tcnn", &channels)?,
                    channels,
                    features: positive(config, "features", 128)?,
                }
            }
            (Some(a @ ("tmlp" | "tcnn")), _) => {
                return Err(format!(
                    "a {a} noisy classifier needs data_shape {}, found {data_shape:?}",
                    if a == "tmlp" { "[D]" } else { "[C, H, W]" }
                ))
            }
            _ => {
                return Err(format!(
                    "unknown noisy-classifier architecture {} (tmlp or tcnn)",
                    config["arch"]
                ))
            }
        };
        let num_classes = match config["num_classes"].as_u64() {
            Some(k) if k >= 2 => k as usize,
            _ => {
                return Err(format!(
                    "a noisy classifier needs num_classes of at least 2, found {}",
                    config["num_classes"]
                ))
            }
        };
        let path = match Path::from_json(&config["path"])? {
            Path::Gaussian(g) => g,
            Path::LinearInterpolant => {
                return Err("a noisy classifier's path must be Gaussian".into());
            }
        };
        Ok(NoisyConfig {
            data_shape,
            arch,
            time_features: super::config::size(config, "time_features", 0)?,
            num_classes,
            path,
        })
    }
}

/// One stride-2 convolution with its normalisation.
#[derive(Clone)]
struct Level {
    conv: Conv2d,
    norm: GroupNorm,
}

/// The noisy classifier network.
#[derive(Clone)]
pub struct NoisyClassifier {
    pub config: NoisyConfig,
    levels: Vec<Level>,
    hidden: Vec<Linear>,
    head: Linear,
    /// 2 pi k for k = 1..K, (1, K); `None` without Fourier features.
    freqs: Option<Tensor>,
}

impl NoisyClassifier {
    /// Builds the network, its weights from `params` (fresh or loaded).
    pub fn new(cfg: &NoisyConfig, params: &Params) -> Result<NoisyClassifier> {
        let time_width = 1 + 2 * cfg.time_features;
        let mut levels = Vec::new();
        let (mut width, widths) = match &cfg.arch {
            NoisyArch::Mlp { hidden } => (cfg.data_shape[0] + time_width, hidden.clone()),
            NoisyArch::Cnn {
                channels,
                features,
                groups,
            } => {
                let cache = GatherCache::default();
                let (mut c_in, mut h, mut w) =
                    (cfg.data_shape[0] + 1, cfg.data_shape[1], cfg.data_shape[2]);
                for (l, &c) in channels.iter().enumerate() {
                    let p = params.pp(format!("levels.{l}"));
                    levels.push(Level {
                        conv: Conv2d::new(&p, "conv", c_in, c, Geometry::DOWN3, &cache)?,
                        norm: GroupNorm::new(&p, "norm", *groups, c)?,
                    });
                    (c_in, h, w) = (c, h.div_ceil(2), w.div_ceil(2));
                }
                (c_in * h * w + time_width, vec![*features])
            }
        };
        let mut hidden = Vec::new();
        let hp = params.pp("layers");
        for (i, &h) in widths.iter().enumerate() {
            hidden.push(linear(&hp, &i.to_string(), width, h)?);
            width = h;
        }
        let freqs = match cfg.time_features {
            0 => None,
            k => {
                let f: Vec<f32> = (1..=k)
                    .map(|j| 2.0 * std::f32::consts::PI * j as f32)
                    .collect();
                Some(Tensor::from_vec(f, (1, k), params.device())?)
            }
        };
        Ok(NoisyClassifier {
            config: cfg.clone(),
            levels,
            hidden,
            head: linear(params, "head", width, cfg.num_classes)?,
            freqs,
        })
    }

    /// [t, sin 2 pi k t, cos 2 pi k t]: t (N, 1) -> (N, 1 + 2K).
    fn time_features(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match &self.freqs {
            None => Ok(t.clone()),
            Some(f) => {
                let arg = t.broadcast_mul(f)?;
                Tensor::cat(&[t, &arg.sin()?, &arg.cos()?], D::Minus1)
            }
        }
    }

    /// The class logits z: x (N, ...data_shape), t (N, 1) in x's dtype -> (N, K). Differentiable
    /// in x (the guidance gradient).
    pub fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let mut want = vec![n];
        want.extend_from_slice(&self.config.data_shape);
        if x.dims() != want.as_slice() {
            candle_core::bail!(
                "the noisy classifier expects x of shape {want:?}, got {:?}",
                x.dims()
            );
        }
        let t = super::time_column(t, n)?.to_dtype(x.dtype())?;
        let tf = self.time_features(&t)?;
        let mut h = match self.levels.is_empty() {
            true => Tensor::cat(&[x, &tf], D::Minus1)?,
            false => {
                let (_, _, hh, ww) = x.dims4()?;
                let tc = t.reshape((n, 1, 1, 1))?.broadcast_as((n, 1, hh, ww))?;
                let mut h = to_channels_last(&Tensor::cat(&[x, &tc.contiguous()?], 1)?)?;
                for level in &self.levels {
                    h = level.norm.forward_silu(&level.conv.forward(&h, None)?)?;
                }
                Tensor::cat(&[&h.reshape((n, ()))?, &tf], D::Minus1)?
            }
        };
        for layer in &self.hidden {
            h = layer.forward_act(&h, Activated::Silu)?;
        }
        self.head.forward(&h)
    }

    /// Loads a noisy-classifier model file (EMA weights when it has them), naming the file and
    /// what it is instead when it is another kind.
    pub fn open(path: &str, device: &Device) -> Result<(NoisyClassifier, ModelFile)> {
        let model = crate::io::model::load(path, device)?;
        if model.kind() != KIND {
            anyhow::bail!(
                "{}: expected a noisy classifier (kind {KIND}, from fit-noisy-classifier), found \
                 a model of kind {}{}",
                model.name,
                model.kind(),
                if model.kind() == super::classifier::KIND {
                    " (the metrics classifier sees clean images only)"
                } else {
                    ""
                }
            );
        }
        let build = |c: &Value, params: &Params| {
            let cfg = NoisyConfig::from_json(c).map_err(anyhow::Error::msg)?;
            NoisyClassifier::new(&cfg, params)
        };
        let net = super::open_checked(&model, Weights::Auto, device, &model.config, build)?;
        Ok((net, model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::classifier::{cross_entropy, log_softmax};
    use crate::nn::layers::tests::wobbly;

    pub fn cfgs() -> Vec<NoisyConfig> {
        vec![
            NoisyConfig {
                data_shape: vec![2],
                arch: NoisyArch::Mlp { hidden: vec![8, 8] },
                time_features: 2,
                num_classes: 3,
                path: GaussianPath::CONDOT,
            },
            NoisyConfig {
                data_shape: vec![2, 5, 6],
                arch: NoisyArch::Cnn {
                    channels: vec![8, 8],
                    features: 12,
                    groups: 4,
                },
                time_features: 1,
                num_classes: 4,
                path: GaussianPath::COSINE,
            },
        ]
    }

    #[test]
    fn config_round_trips_and_shapes() {
        for c in cfgs() {
            assert_eq!(NoisyConfig::from_json(&c.to_json()).unwrap(), c);
            let net = NoisyClassifier::new(&c, &Params::new(0, &Device::Cpu)).unwrap();
            let mut shape = vec![5];
            shape.extend_from_slice(&c.data_shape);
            let x = wobbly(&shape, 1);
            let t = crate::nn::testing::times(5);
            assert_eq!(net.logits(&x, &t).unwrap().dims(), &[5, c.num_classes]);
            assert!(net.logits(&wobbly(&[5, 7], 1), &t).is_err());
        }
        let mut bad = cfgs()[0].to_json();
        bad["data_shape"] = json!([1, 2, 3]);
        assert!(NoisyConfig::from_json(&bad).unwrap_err().contains("[D]"));
        bad["arch"] = json!("cnn");
        assert!(NoisyConfig::from_json(&bad).unwrap_err().contains("tmlp"));
    }

    /// The gradient in x through every fused layer equals central differences of log p(y | x, t).
    #[test]
    fn input_gradient_matches_finite_differences() {
        for c in cfgs() {
            let net = NoisyClassifier::new(&c, &Params::new(3, &Device::Cpu)).unwrap();
            let mut shape = vec![3];
            shape.extend_from_slice(&c.data_shape);
            let x = (wobbly(&shape, 5) * 2.0).unwrap();
            let t = crate::nn::testing::times(3);
            let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
            let logp = |x: &Tensor| -> Tensor {
                log_softmax(&net.logits(x, &t).unwrap())
                    .unwrap()
                    .gather(&y.reshape((3, 1)).unwrap(), 1)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let var = candle_core::Var::from_tensor(&x).unwrap();
            let grads = logp(var.as_tensor()).backward().unwrap();
            let g: Vec<f32> = grads
                .get(var.as_tensor())
                .expect("a gradient for x")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for i in (0..flat.len()).step_by(7) {
                let h = 1e-2f32;
                let at = |d: f32| {
                    let mut v = flat.clone();
                    v[i] += d;
                    let xx = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                    logp(&xx).to_scalar::<f32>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 2e-2 * (1.0 + fd.abs()),
                    "{:?} [{i}]: {} vs {fd}",
                    c.arch,
                    g[i]
                );
            }
            // Cross-entropy trains every parameter.
            let params = Params::new(4, &Device::Cpu);
            let net = NoisyClassifier::new(&c, &params).unwrap();
            let loss = cross_entropy(&net.logits(&x, &t).unwrap(), &y).unwrap();
            let unmoved = crate::train::unmoved_params(&params, &loss).unwrap();
            assert!(unmoved.is_empty(), "{unmoved:?}");
        }
    }
}
