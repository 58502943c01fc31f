//! Neural networks for vector fields, scores and noise predictors (notes sections 3.2, 4).
//!
//! Every network that predicts from (x_t, t) implements [`FieldNet`]: x (N, ...data_shape) and
//! t (N, 1) in, a tensor shaped like x out. Its parameters come from an [`init::Params`], which
//! initialises them from our seeded streams (never candle's RNG) or reads them from a model file,
//! so one constructor serves training, resuming and loading. [`build`] picks the architecture
//! named by a model file's config (`"arch"`); [`learned`] wraps a loaded model as the velocity
//! u_t^theta(x) or the score s_t^theta(x), converting between parametrisations via the path.
//!
//! Layers follow candle-nn's style: a struct built by a constructor taking the `Params` and a
//! name, with a `forward`. Architectures: [`mlp`] (Lab 2).

pub mod init;
pub mod learned;
pub mod mlp;
pub mod ops;

use anyhow::bail;
use candle_core::Tensor;
use serde_json::Value;

pub use init::{linear, linear_no_bias, Init, Linear, Params, Weights};
pub use learned::{Learned, LearnedScore, LearnedVelocity};
pub use mlp::{Activation, Mlp, MlpConfig};

use crate::Result;

/// A network of (x_t, t): velocity, score, noise or denoiser, depending on how it was trained.
pub trait FieldNet: Send + Sync {
    /// x: (N, ...data_shape), t: (N, 1) -> (N, ...data_shape).
    fn forward(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor>;
}

/// Builds the network a model config describes (`"arch"`), its weights from `params`.
pub fn build(config: &Value, params: &Params) -> Result<Box<dyn FieldNet>> {
    match config["arch"].as_str() {
        Some("mlp") => {
            let cfg = MlpConfig::from_json(config).map_err(anyhow::Error::msg)?;
            Ok(Box::new(Mlp::new(&cfg, params)?))
        }
        Some(other) => bail!("unknown architecture '{other}'"),
        None => bail!("the model config names no architecture ('arch')"),
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
