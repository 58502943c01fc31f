//! A conditional MLP u_theta(x, t, y) for 2-D sanity checks of classifier-free guidance (Lab 3,
//! the 3-mode Gaussian mixture; notes section 5.1): the Lab 2 MLP ([`super::mlp`]) with a label
//! embedding e(y) appended to its inputs, [x, t, sin(2 pi k t), cos(2 pi k t), e(y)], where the
//! row num_classes of the embedding is the null label.

use candle_core::{Tensor, D};
use serde_json::{json, Value};

use super::config::{positive, size, ConfigResult};
use super::embed::{harmonics, LabelEmbedding};
use super::init::{linear, Linear, Params};
use super::mlp::{Activation, MlpConfig};
use super::{time_column, FieldNet};
use crate::Result;

/// The sizes of a [`Cmlp`]: an [`MlpConfig`] plus the labels.
#[derive(Clone, Debug, PartialEq)]
pub struct CmlpConfig {
    /// D, hidden widths, activation, K harmonics of t.
    pub mlp: MlpConfig,
    /// Classes 0..num_classes (must be positive), plus the null label num_classes.
    pub num_classes: usize,
    pub label_embed_dim: usize,
}

impl CmlpConfig {
    /// The MLP's fields (`data_shape`, `hidden`, `activation`, `time_features`) with `arch`
    /// "cmlp", `num_classes` and `label_embed_dim`.
    pub fn to_json(&self) -> Value {
        let mut v = self.mlp.to_json();
        v["arch"] = json!("cmlp");
        v["num_classes"] = json!(self.num_classes);
        v["label_embed_dim"] = json!(self.label_embed_dim);
        v
    }

    /// Reads the fields written by [`Self::to_json`]; `label_embed_dim` defaults to 16.
    pub fn from_json(config: &Value) -> ConfigResult<CmlpConfig> {
        let mlp = MlpConfig::from_json(config)?;
        let num_classes = size(config, "num_classes", 0)?;
        if num_classes == 0 {
            return Err("a cmlp needs num_classes > 0 (use the mlp when unconditional)".into());
        }
        Ok(CmlpConfig {
            mlp,
            num_classes,
            label_embed_dim: positive(config, "label_embed_dim", 16)?,
        })
    }
}

/// u_theta(x, t, y): [x, harmonics(t), e(y)] -> hidden layers -> linear -> D.
#[derive(Clone)]
pub struct Cmlp {
    pub config: CmlpConfig,
    label_embed: LabelEmbedding,
    layers: Vec<Linear>,
    out: Linear,
    activation: Activation,
}

impl Cmlp {
    /// Names: `label_embed.weight`, `layers.<i>.{weight,bias}`, `out.{weight,bias}`.
    pub fn new(cfg: &CmlpConfig, params: &Params) -> Result<Cmlp> {
        let m = &cfg.mlp;
        let mut width = m.dim + 1 + 2 * m.time_features + cfg.label_embed_dim;
        let mut layers = Vec::with_capacity(m.hidden.len());
        for (i, &h) in m.hidden.iter().enumerate() {
            layers.push(linear(&params.pp("layers"), &i.to_string(), width, h)?);
            width = h;
        }
        Ok(Cmlp {
            label_embed: LabelEmbedding::new(
                params,
                "label_embed",
                cfg.num_classes,
                cfg.label_embed_dim,
            )?,
            layers,
            out: linear(params, "out", width, m.dim)?,
            activation: m.activation,
            config: cfg.clone(),
        })
    }
}

impl FieldNet for Cmlp {
    /// x: (N, D), t: (N, 1), y: (N,) labels or None (null) -> (N, D).
    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let dim = self.config.mlp.dim;
        if x.rank() != 2 || x.dim(1)? != dim {
            candle_core::bail!("the cmlp expects x of shape (N, {dim}), got {:?}", x.dims());
        }
        let n = x.dim(0)?;
        let t = harmonics(&time_column(t, n)?, self.config.mlp.time_features)?;
        let e = self.label_embed.forward(y, n)?;
        let mut h = Tensor::cat(&[x, &t, &e], D::Minus1)?;
        for layer in &self.layers {
            h = self.activation.after(layer, &h)?;
        }
        self.out.forward(&h)
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

    fn cfg() -> CmlpConfig {
        CmlpConfig {
            mlp: MlpConfig {
                dim: 2,
                hidden: vec![32, 32],
                activation: Activation::Silu,
                time_features: 2,
            },
            num_classes: 3,
            label_embed_dim: 4,
        }
    }

    #[test]
    fn shapes_labels_and_parameters() {
        let p = Params::new(0, &Device::Cpu);
        let net = Cmlp::new(&cfg(), &p).unwrap();
        // (2 + 1 + 4 + 4) * 32 + 32, 32 * 32 + 32, 32 * 2 + 2, 4 * 4 embedding rows
        assert_eq!(p.count(), 384 + 1056 + 66 + 16);
        let x = wobbly(&[3, 2], 1);
        let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
        let out = net.forward(&x, &t, Some(&y)).unwrap();
        assert_eq!(out.dims(), &[3, 2]);
        let null = net.forward(&x, &t, None).unwrap();
        assert!(max_abs_diff(&out, &null) > 1e-4);
        assert!(net.forward(&wobbly(&[3, 3], 1), &t, None).is_err());
    }

    #[test]
    fn trains_on_the_three_mode_mixture_labels() {
        let p = Params::new(1, &Device::Cpu);
        let net = Cmlp::new(&cfg(), &p).unwrap();
        let x = wobbly(&[12, 2], 2);
        let y: Vec<u32> = (0..12).map(|i| i % 4).collect();
        let y = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
        every_parameter_moves(&net, &p, &x, Some(&y), 1, &[]);
        loss_falls(&net, &p, &x, Some(&y), 50, 0.2);
    }

    #[test]
    fn config_round_trips_and_needs_classes() {
        let c = cfg();
        assert_eq!(CmlpConfig::from_json(&c.to_json()).unwrap(), c);
        let mut v = c.to_json();
        v["num_classes"] = json!(0);
        assert!(CmlpConfig::from_json(&v)
            .unwrap_err()
            .contains("num_classes"));
    }
}
