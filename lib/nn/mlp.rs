//! The multilayer perceptron of Lab 2: a time-dependent vector field u_theta(x, t) on R^D
//! (notes section 3.2: "we parametrise u_t^theta as a neural network").
//!
//! Input features are [x, t] (N, D + 1): t enters as one more coordinate, as in the lab. With
//! `time_features = K > 0`, 2K Fourier features sin(2 pi k t), cos(2 pi k t) for k = 1..K are
//! appended ([x, t, sin.., cos..], (N, D + 1 + 2K)); they let a small net bend sharply in t, at
//! no cost in parameters beyond the first layer's width. Then `hidden` linear layers, each
//! followed by the activation (SiLU by default), and a linear output layer back to D.
//!
//! Parameter names: `layers.{i}.weight/bias` for the hidden layers (i = 0 reads the features)
//! and `out.weight/bias` for the output layer.

use candle_core::{Tensor, D};
use serde_json::{json, Value};

use super::init::{linear, Linear, Params};
use super::ops::Activated;
use super::FieldNet;
use crate::Result;

/// The nonlinearity between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Relu,
    Tanh,
}

impl Activation {
    /// The config names, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["silu", "relu", "tanh"];

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Activation::Silu, Activation::Relu, Activation::Tanh]
            .into_iter()
            .find(|a| a.name() == s)
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => super::ops::silu(x),
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
        }
    }

    /// The activation of `layer`'s output, act(layer(x)): one fused op for SiLU.
    pub fn after(self, layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => layer.forward_act(x, Activated::Silu),
            _ => self.apply(&layer.forward(x)?),
        }
    }
}

/// The sizes of an [`Mlp`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// D, the dimension of x.
    pub dim: usize,
    /// Widths of the hidden layers, e.g. [64, 64, 64, 64].
    pub hidden: Vec<usize>,
    pub activation: Activation,
    /// K Fourier frequencies of t (0: t as a raw input only).
    pub time_features: usize,
}

impl MlpConfig {
    /// The config fields: `arch`, `data_shape`, `hidden`, `activation`, `time_features`.
    pub fn to_json(&self) -> Value {
        json!({
            "arch": "mlp",
            "data_shape": [self.dim],
            "hidden": self.hidden,
            "activation": self.activation.name(),
            "time_features": self.time_features,
        })
    }

    /// Reads the fields written by [`Self::to_json`] from a model config.
    pub fn from_json(config: &Value) -> std::result::Result<MlpConfig, String> {
        let dims = |key: &str| -> std::result::Result<Vec<usize>, String> {
            config[key]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect())
                .ok_or_else(|| format!("'{key}' must be a list of sizes, found {}", config[key]))
        };
        let shape = dims("data_shape")?;
        let dim = match shape[..] {
            [d] if d > 0 => d,
            _ => return Err(format!("an mlp needs data_shape [D], found {shape:?}")),
        };
        let hidden = dims("hidden")?;
        if hidden.is_empty() || hidden.contains(&0) {
            return Err(format!("hidden widths must be positive, found {hidden:?}"));
        }
        // Required: the tensors of a SiLU and a ReLU network are alike, so a default would
        // load a file written with another one without a word.
        let activation = match &config["activation"] {
            Value::Null => {
                return Err(format!(
                    "the mlp config has no 'activation' ({}; its tensors cannot tell which)",
                    Activation::NAMES.join(", ")
                ))
            }
            v => v.as_str().and_then(Activation::parse).ok_or_else(|| {
                format!("unknown activation {v} ({})", Activation::NAMES.join(", "))
            })?,
        };
        let time_features = config["time_features"].as_u64().unwrap_or(0) as usize;
        Ok(MlpConfig {
            dim,
            hidden,
            activation,
            time_features,
        })
    }
}

/// u_theta(x, t): [x, t (, Fourier(t))] -> hidden layers with activation -> linear -> D.
pub struct Mlp {
    layers: Vec<Linear>,
    out: Linear,
    activation: Activation,
    /// 2 pi k for k = 1..K, shaped (1, K); `None` without Fourier features.
    freqs: Option<Tensor>,
    dim: usize,
}

impl Mlp {
    /// Builds the layers from `params` (initialising or loading them, see [`Params`]).
    pub fn new(cfg: &MlpConfig, params: &Params) -> Result<Mlp> {
        let mut width = cfg.dim + 1 + 2 * cfg.time_features;
        let mut layers = Vec::with_capacity(cfg.hidden.len());
        let hidden = params.pp("layers");
        for (i, &h) in cfg.hidden.iter().enumerate() {
            layers.push(linear(&hidden, &i.to_string(), width, h)?);
            width = h;
        }
        let out = linear(params, "out", width, cfg.dim)?;
        let freqs = match cfg.time_features {
            0 => None,
            k => {
                let f: Vec<f32> = (1..=k)
                    .map(|j| 2.0 * std::f32::consts::PI * j as f32)
                    .collect();
                Some(Tensor::from_vec(f, (1, k), params.device())?)
            }
        };
        Ok(Mlp {
            layers,
            out,
            activation: cfg.activation,
            freqs,
            dim: cfg.dim,
        })
    }

    /// The whole stack as one fused node ([`super::ops::mlp_stack`]) where it applies: SiLU,
    /// f32 on the CPU.
    fn fused(&self, h: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.activation != Activation::Silu {
            return Ok(None);
        }
        let mut layers = Vec::with_capacity(self.layers.len() + 1);
        for layer in self.layers.iter().chain([&self.out]) {
            match &layer.bias {
                Some(b) => layers.push((&layer.weight, b)),
                None => return Ok(None),
            }
        }
        super::ops::mlp_stack(h, &layers, Activated::Silu)
    }

    /// The input features [x, t (, sin 2 pi k t, cos 2 pi k t)]: (N, D + 1 + 2K).
    fn features(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        match &self.freqs {
            None => Tensor::cat(&[x, t], D::Minus1),
            Some(f) => {
                let arg = t.broadcast_mul(f)?;
                Tensor::cat(&[x, t, &arg.sin()?, &arg.cos()?], D::Minus1)
            }
        }
    }
}

impl FieldNet for Mlp {
    /// x: (N, D), t: (N, 1) -> (N, D). Unconditional: y must be `None` or the null label 0.
    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if x.dims().len() != 2 || x.dim(1)? != self.dim {
            candle_core::bail!(
                "the mlp expects x of shape (N, {}), got {:?}",
                self.dim,
                x.dims()
            );
        }
        if y.is_some() {
            super::embed::label_ids(y, x.dim(0)?, 0, x.device())?;
        }
        let h = self.features(x, t)?;
        if let Some(y) = self.fused(&h)? {
            return Ok(y);
        }
        let mut h = h;
        for layer in &self.layers {
            h = self.activation.after(layer, &h)?;
        }
        self.out.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::time_column;
    use candle_core::Device;

    fn cfg(hidden: &[usize], k: usize) -> MlpConfig {
        MlpConfig {
            dim: 2,
            hidden: hidden.to_vec(),
            activation: Activation::Silu,
            time_features: k,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn shapes_names_and_parameter_count() {
        let p = Params::new(0, &Device::Cpu);
        let mlp = Mlp::new(&cfg(&[8, 8], 3), &p).unwrap();
        let x = Tensor::zeros((5, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = time_column(&Tensor::new(0.3f32, &Device::Cpu).unwrap(), 5).unwrap();
        assert_eq!(mlp.forward(&x, &t, None).unwrap().dims(), &[5, 2]);
        // (2 + 1 + 6) * 8 + 8, 8 * 8 + 8, 8 * 2 + 2
        assert_eq!(p.count(), 80 + 72 + 18);
        let names: Vec<String> = p.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "layers.0.bias",
                "layers.0.weight",
                "layers.1.bias",
                "layers.1.weight",
                "out.bias",
                "out.weight"
            ]
        );
        let bad = Tensor::zeros((5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(mlp.forward(&bad, &t, None).is_err());
    }

    #[test]
    fn adding_a_layer_does_not_move_the_others() {
        let a = Params::new(5, &Device::Cpu);
        Mlp::new(&cfg(&[8, 8], 0), &a).unwrap();
        let b = Params::new(5, &Device::Cpu);
        Mlp::new(&cfg(&[8, 8, 8], 0), &b).unwrap();
        let (ta, tb): (Vec<_>, Vec<_>) = (a.tensors(), b.tensors());
        for (name, t) in &ta {
            let other = &tb.iter().find(|(n, _)| n == name).unwrap().1;
            assert_eq!(values(t), values(other), "{name} moved");
        }
        assert_eq!(tb.len(), ta.len() + 2);
    }

    #[test]
    fn time_features_make_the_output_depend_on_t() {
        let p = Params::new(1, &Device::Cpu);
        let mlp = Mlp::new(&cfg(&[16], 4), &p).unwrap();
        let x = Tensor::ones((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let at = |t: f32| {
            values(
                &mlp.forward(&x, &Tensor::new(&[[t]], &Device::Cpu).unwrap(), None)
                    .unwrap(),
            )
        };
        assert_ne!(at(0.1), at(0.6));
    }

    #[test]
    fn config_round_trips_and_rejects_bad_sizes() {
        let c = cfg(&[64, 32], 2);
        assert_eq!(MlpConfig::from_json(&c.to_json()).unwrap(), c);
        let mut v = c.to_json();
        v["hidden"] = json!([64, 0]);
        assert!(MlpConfig::from_json(&v).is_err());
        v["hidden"] = json!([4]);
        v["data_shape"] = json!([1, 28, 28]);
        assert!(MlpConfig::from_json(&v)
            .unwrap_err()
            .contains("data_shape [D]"));
    }
}
