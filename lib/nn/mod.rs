//! Neural networks for vector fields, scores and noise predictors (notes sections 3.2, 4).
//!
//! Every network that predicts from (x_t, t) implements [`FieldNet`]: x (N, ...data_shape),
//! t (N, 1) and optional class labels y (N,) in, a tensor shaped like x out. Labels run over
//! 0..num_classes, and num_classes itself is the null label of classifier-free guidance (notes
//! section 5.1); no labels means all null. Unconditional networks have num_classes = 0. Its parameters come from an [`init::Params`], which
//! initialises them from our seeded streams (never candle's RNG) or reads them from a model file,
//! so one constructor serves training, resuming and loading. [`build`] picks the architecture
//! named by a model file's config (`"arch"`); [`learned`] wraps a loaded model as the velocity
//! u_t^theta(x) or the score s_t^theta(x), converting between parametrisations via the path.
//!
//! Layers follow candle-nn's style: a struct built by a constructor taking the `Params` and a
//! name, with a `forward`. Architectures: [`mlp`] (Lab 2), and Lab 3's [`cmlp`] (conditional
//! MLP for 2-D checks), [`unet`] and [`dit`] (diffusion transformer), built from [`layers`] and
//! [`embed`]. Their fused kernels ([`ops`]) serve f32 tensors on the CPU and hand any other
//! tensor to candle's own operations; the rest is device-generic (index tensors are built on
//! the host and moved), so the same code serves the CPU and CUDA.

pub mod classifier;
pub mod cmlp;
pub mod config;
#[cfg(test)]
mod contract;
pub mod dit;
pub mod embed;
#[cfg(test)]
mod fallback;
pub mod init;
pub mod layers;
pub mod learned;
pub mod mlp;
pub mod noisy;
pub mod ops;
pub mod text;
pub mod unet;
pub mod vae;

use anyhow::bail;
use candle_core::Tensor;
use serde_json::Value;

pub use cmlp::{Cmlp, CmlpConfig};
pub use dit::{Dit, DitConfig, FfActivation};
pub use init::{linear, linear_no_bias, Init, Linear, Params, Weights};
pub use learned::{Learned, LearnedScore, LearnedVelocity};
pub use mlp::{Activation, Mlp, MlpConfig};
pub use unet::{UNet, UNetConfig};

use crate::Result;

/// A network of (x_t, t, y): velocity, score, noise or denoiser, depending on how it was trained.
pub trait FieldNet: Send + Sync {
    /// x: (N, ...data_shape), t: (N, 1), y: (N,) labels in 0..=num_classes (u32, or i64 as on
    /// the wire; num_classes is the null label) or `None` (all null) -> (N, ...data_shape).
    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor>;

    /// The number of classes (labels 0..num_classes, plus the null label); 0: unconditional.
    fn num_classes(&self) -> usize {
        0
    }
}

/// Builds the network a model config describes (`"arch"`), its weights from `params`.
pub fn build(config: &Value, params: &Params) -> Result<Box<dyn FieldNet>> {
    match config["arch"].as_str() {
        Some("mlp") => {
            let cfg = MlpConfig::from_json(config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(Mlp::new(&cfg, params)?))
        }
        Some("cmlp") => {
            let cfg = CmlpConfig::from_json(config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(Cmlp::new(&cfg, params)?))
        }
        Some("unet") => {
            let cfg = UNetConfig::from_json(config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(UNet::new(&cfg, params)?))
        }
        Some("dit") => {
            let cfg = DitConfig::from_json(config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(Dit::new(&cfg, params)?))
        }
        Some(other) => bail!("unknown architecture '{other}'"),
        None => bail!("the model config names no architecture ('arch')"),
    }
}

/// Builds a network from a model file's tensors with `build`, adding every problem of the file
/// to `problems` (without the file's name): the config's (what `build` refuses) and the tensors
/// the network leaves unused. When the config fails, the tensors are still checked against the
/// network of the same config with `activation` and `groups` filled in (they decide no tensor's
/// name or shape), so a misspelt or missing tensor is reported together with the config's
/// problem. The weights are frozen ([`Params::frozen`]): every loader that builds through here
/// evaluates its network, none trains it.
pub fn build_from_file<T>(
    model: &crate::io::model::ModelFile,
    weights: Weights,
    device: &candle_core::Device,
    config: &Value,
    build: impl Fn(&Value, &Params) -> Result<T>,
    problems: &mut Vec<String>,
) -> Result<Option<T>> {
    let own = |e: anyhow::Error| {
        let text = format!("{e:#}");
        match text.strip_prefix(&format!("{}: ", model.name)) {
            Some(rest) => rest.to_string(),
            None => text,
        }
    };
    let params = Params::from_model(model, weights, device)?.frozen();
    match build(config, &params) {
        Ok(net) => {
            if let Err(e) = params.ensure_all_used() {
                problems.push(own(e));
            }
            Ok(Some(net))
        }
        Err(e) => {
            problems.push(own(e));
            let mut lenient = config.clone();
            if let Some(c) = lenient.as_object_mut() {
                c.insert("activation".into(), "silu".into());
                c.insert("groups".into(), 1.into());
                let params = Params::from_model(model, weights, device)?;
                let more = build(&lenient, &params).and_then(|_| params.ensure_all_used());
                if let Err(e) = more.map_err(own) {
                    if !problems.contains(&e) {
                        problems.push(e);
                    }
                }
            }
            Ok(None)
        }
    }
}

/// [`build_from_file`] for a loader with no other checks: the network, or one error naming the
/// file and listing every problem.
pub fn open_checked<T>(
    model: &crate::io::model::ModelFile,
    weights: Weights,
    device: &candle_core::Device,
    config: &Value,
    build: impl Fn(&Value, &Params) -> Result<T>,
) -> Result<T> {
    let mut problems = Vec::new();
    match build_from_file(model, weights, device, config, build, &mut problems)? {
        Some(net) if problems.is_empty() => Ok(net),
        _ => bail!("{}: {}", model.name, problems.join("; ")),
    }
}

/// Times as a contiguous (N, 1) column: `t` is (N,), (N, 1), or one value for every row.
pub fn time_column(t: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    let flat = t.flatten_all()?;
    match flat.dim(0)? {
        len if len == n => flat.reshape((n, 1)),
        1 => flat.reshape((1, 1))?.broadcast_as((n, 1))?.contiguous(),
        len => candle_core::bail!("expected {n} times (one per row) or one, got {len}"),
    }
}

/// Training checks shared by the architectures' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{FieldNet, Params};
    use candle_core::{DType, Tensor};
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW, SGD};

    /// Times 0.1, 0.3, ... for a batch of n.
    pub fn times(n: usize) -> Tensor {
        let t: Vec<f32> = (0..n).map(|i| 0.1 + 0.8 * i as f32 / n as f32).collect();
        Tensor::from_vec(t, (n, 1), &candle_core::Device::Cpu).unwrap()
    }

    /// mean((net(x, t, y) - target)^2) with target = the fixed tensor -x / 2 + 0.3.
    fn loss(net: &dyn FieldNet, x: &Tensor, y: Option<&Tensor>) -> Tensor {
        let target = ((x * -0.5).unwrap() + 0.3).unwrap();
        let out = net.forward(x, &times(x.dim(0).unwrap()), y).unwrap();
        (out - target).unwrap().sqr().unwrap().mean_all().unwrap()
    }

    fn scalar(t: &Tensor) -> f32 {
        t.to_dtype(DType::F32).unwrap().to_scalar().unwrap()
    }

    /// At the `steps`-th plain SGD step every row of every parameter (every element of a bias)
    /// has a nonzero gradient, and after it every parameter has moved: no layer silently lacks a
    /// backward pass, and no part of a fused weight (the q and k rows of a QKV projection, say)
    /// is cut off from the loss. (Rows are checked on the gradient: some updates of zero-started
    /// adaLN paths are below f32 resolution after a few steps.)
    pub fn every_parameter_moves(
        net: &dyn FieldNet,
        params: &Params,
        x: &Tensor,
        y: Option<&Tensor>,
        steps: usize,
        exempt: &[(&str, std::ops::Range<usize>)],
    ) {
        let before = params.snapshot().unwrap();
        let vars = params.vars();
        let mut opt = SGD::new(vars.iter().map(|(_, v)| v.clone()).collect(), 0.05).unwrap();
        for _ in 1..steps {
            opt.backward_step(&loss(net, x, y)).unwrap();
        }
        let grads = loss(net, x, y).backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient at step {steps}"));
            let rows = g.dim(0).unwrap();
            let per_row: Vec<f32> = g
                .abs()
                .unwrap()
                .reshape((rows, ()))
                .unwrap()
                .max(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let largest = per_row.iter().fold(0f32, |a, &b| a.max(b));
            for (r, &m) in per_row.iter().enumerate() {
                let zero_in_theory = exempt
                    .iter()
                    .any(|(n, rows)| n == name && rows.contains(&r));
                match zero_in_theory {
                    // Zero in exact arithmetic: at most rounding noise, whichever it is.
                    true => assert!(m <= 1e-4 * largest, "row {r} of {name}: gradient {m}"),
                    false => assert!(
                        m > 0.0,
                        "row {r} of {name} has a zero gradient at step {steps}"
                    ),
                }
            }
        }
        opt.step(&grads).unwrap();
        let after = params.snapshot().unwrap();
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            let moved = scalar(&(a - b).unwrap().abs().unwrap().max_all().unwrap());
            assert!(moved > 0.0, "{name} did not move in {steps} SGD steps");
        }
    }

    /// AdamW on one fixed batch: the loss ends below `fraction` of its start.
    pub fn loss_falls(
        net: &dyn FieldNet,
        params: &Params,
        x: &Tensor,
        y: Option<&Tensor>,
        steps: usize,
        fraction: f32,
    ) {
        let vars = params.vars().into_iter().map(|(_, v)| v).collect();
        let cfg = ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars, cfg).unwrap();
        let first = scalar(&loss(net, x, y));
        for _ in 0..steps {
            opt.backward_step(&loss(net, x, y)).unwrap();
        }
        let last = scalar(&loss(net, x, y));
        assert!(
            last < fraction * first,
            "loss {first} -> {last} after {steps} steps (wanted below {fraction} of the start)"
        );
    }
}
