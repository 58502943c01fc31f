//! Trained models as fields: the ODE of a learned velocity, and the SDE of Theorem 17.
//!
//! - ODE (notes eq. 26 trained, Algorithm 1 sampled): dX_t = u_t^theta(X_t) dt.
//! - SDE (notes Theorem 17): dX_t = [u_t^theta(X_t) + (sigma_t^2 / 2) s_t^theta(X_t)] dt +
//!   sigma_t dW_t, which has the same marginals p_t for every sigma_t >= 0. The score comes
//!   from a score model, or from the velocity model itself by the conversion of Proposition 1
//!   (see [`crate::paths`]), so one flow-matching model samples both ways.
//! - sigma_t is a constant (`sigma=2`) or a multiple of the path's beta_t (`sigma=2,
//!   schedule=beta`: sigma_t = 2 beta_t), which vanishes at t = 1.
//!
//! Near t = 1, beta_t -> 0 and the score -(x - alpha_t z)/beta_t^2 grows without bound; the
//! conversions floor beta at `paths::MIN_DIVISOR`, so the drift stays finite, and with the
//! `beta` schedule sigma_t^2 s_t ~ beta_t vanishes there as it should.

use anyhow::bail;
use candle_core::{Device, Tensor};

use super::Field;
use crate::io::model::{self, ModelFile};
use crate::nn::{LearnedScore, LearnedVelocity};
use crate::paths::GaussianPath;
use crate::Result;

/// How sigma_t depends on t.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sigma {
    /// sigma_t = c
    Constant(f64),
    /// sigma_t = c beta_t of the model's path
    Beta(f64),
}

/// Where the SDE's score comes from.
enum ScoreSource {
    /// Converted from the velocity model (Proposition 1).
    FromVelocity,
    /// A separately trained score (or noise) model.
    Model(LearnedScore),
}

/// u_t^theta, and optionally the SDE of Theorem 17 built on it.
pub struct LearnedField {
    velocity: LearnedVelocity,
    sigma: Sigma,
    score: ScoreSource,
    /// The path's beta_t for the `beta` schedule.
    path: Option<GaussianPath>,
    device: Device,
}

impl LearnedField {
    /// The ODE of the velocity in `model` (a velocity, score or checkpoint file).
    pub fn ode(model: &ModelFile, device: &Device) -> Result<Self> {
        Self::sde(model, Sigma::Constant(0.0), None, device)
    }

    /// The SDE of Theorem 17 with diffusion `sigma` and the score from `score_model`, or
    /// converted from the velocity model when `None`.
    pub fn sde(
        model: &ModelFile,
        sigma: Sigma,
        score_model: Option<&ModelFile>,
        device: &Device,
    ) -> Result<Self> {
        let velocity = LearnedVelocity::load(model, device)?;
        let path = velocity.0.path.as_gaussian(velocity.0.gaussian_source);
        let noisy = !matches!(sigma, Sigma::Constant(c) | Sigma::Beta(c) if c == 0.0);
        let score = match score_model {
            Some(m) => {
                let s = LearnedScore::load(m, device)?;
                if s.data_shape() != velocity.data_shape() {
                    bail!(
                        "{}: score model for data of shape {:?}, but the velocity model {} is \
                         for {:?}",
                        m.name,
                        s.data_shape(),
                        model.name,
                        velocity.data_shape()
                    );
                }
                ScoreSource::Model(s)
            }
            None => {
                if noisy {
                    // Fails clearly when the model's path has no score (data-to-data bridge).
                    LearnedScore::load(model, device)?;
                }
                ScoreSource::FromVelocity
            }
        };
        if matches!(sigma, Sigma::Beta(_)) && path.is_none() {
            bail!(
                "{}: sigma schedule 'beta' needs a Gaussian path, the model was trained on {}",
                model.name,
                velocity.0.path.name()
            );
        }
        Ok(LearnedField {
            velocity,
            sigma,
            score,
            path,
            device: device.clone(),
        })
    }

    fn time(&self, t: f64) -> candle_core::Result<Tensor> {
        Tensor::new(&[t as f32], &self.device)
    }
}

/// candle's error from ours, for the Field trait's signature.
fn to_candle(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("{e:#}"))
}

impl Field for LearnedField {
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let tt = self.time(t)?;
        let u = self.velocity.velocity(x, &tt).map_err(to_candle)?;
        super::sde_drift(&u, self.diffusion(t), || {
            match &self.score {
                ScoreSource::Model(m) => m.score(x, &tt),
                ScoreSource::FromVelocity => self.velocity.0.score(x, &tt),
            }
            .map_err(to_candle)
        })
    }

    fn diffusion(&self, t: f64) -> f64 {
        match self.sigma {
            Sigma::Constant(c) => c,
            Sigma::Beta(c) => c * self.path.map_or(0.0, |p| p.beta.value(t)),
        }
    }
    fn gaussian_path(&self) -> Option<GaussianPath> {
        self.path
    }

    fn describe(&self) -> String {
        let name = &self.velocity.0.name;
        match (self.sigma, &self.score) {
            (Sigma::Constant(0.0), _) => format!("learned ODE of {name}"),
            (sigma, ScoreSource::FromVelocity) => {
                format!("learned SDE of {name} (sigma {sigma:?}, score from the velocity)")
            }
            (sigma, ScoreSource::Model(m)) => {
                format!(
                    "learned SDE of {name} (sigma {sigma:?}, score from {})",
                    m.0.name
                )
            }
        }
    }

    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(self.velocity.data_shape().to_vec())
    }
}

/// Loads a model file for a field spec's `model` or `score` key.
pub fn open_model(path: &str, device: &Device) -> Result<ModelFile> {
    model::load(path, device)
}
