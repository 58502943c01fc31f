//! Numerical solvers for ODEs dX = u_t(X) dt and SDEs dX = u_t(X) dt + σ_t dW_t
//! (notes section 2), on batches of candle tensors (N, ...) on any device and float dtype.
//!
//! On a time grid t_0 < t_1 < ... (or decreasing), with h = t_{k+1} - t_k:
//! - Euler (notes eq. 4): X_{k+1} = X_k + h u_{t_k}(X_k).                          1 NFE/step
//! - Heun (notes section 2.1): X' = X_k + h u_{t_k}(X_k),
//!   X_{k+1} = X_k + h/2 (u_{t_k}(X_k) + u_{t_{k+1}}(X')).                        2 NFE/step
//! - RK4: the classical fourth-order Runge-Kutta rule.                              4 NFE/step
//! - Euler-Maruyama (notes eq. 9): X_{k+1} = X_k + h u_{t_k}(X_k) + σ_{t_k} √|h| ε_k,
//!   ε_k ~ N(0, I).                                                                  1 NFE/step
//! - Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Nørsett & Wanner, Solving ODEs I,
//!   II.4-5): an embedded pair with FSAL (6 NFE per step after the first), local
//!   extrapolation (the 5th-order solution is kept) and the standard controller
//!   h_new = h · min(5, max(0.2, 0.9 · err^{-1/5})) (no growth right after a rejection).
//!   err is, per sample, the RMS over the sample's elements of
//!   (y5 - y4) / (atol + rtol · max(|y_k|, |y_{k+1}|)), then the maximum over samples: a
//!   batch is N independent ODEs, and each must meet the tolerance (with the RMS over the whole
//!   batch, one bad sample would be diluted by the others). The step is clipped to land exactly
//!   on every grid time, which are its output times.
//!
//! - DDIM (eta = 0) and the DDPM ancestral sampler (eta = 1), for a field along a Gaussian path:
//!   the posterior means z^, eps^ at x_t, then x_s = alpha_s z^ + sqrt(beta_s^2 - sigma^2) eps^
//!   + sigma xi ([`ddim`]).                                                          1 NFE/step
//!
//! **Straightness** of the path a deterministic fixed-step run takes (Liu, Gong & Liu 2022,
//! "Flow straight and fast", their S(Z) = int_0^1 E ||(X_1 - X_0) - u_t(X_t)||^2 dt), in the
//! discrete form with the steps' own velocities v_k = (X_{k+1} - X_k) / h_k on a grid from t_0
//! to t_0 + T:
//!
//! ```text
//! S = (1 / (N D)) sum_i [ sum_k h_k ||v_k - c / T||^2 ] = (1 / (N D)) sum_i [ sum_k h_k ||v_k||^2 - ||c||^2 / T ],
//! ```
//!
//! c = X_T - X_0 the chord of sample i (the two forms agree since sum_k h_k v_k = c), averaged
//! over the N samples and the D elements of each ([`Stats::straightness`]). 0 for a constant
//! velocity; the energy int ||u||^2 dt of the path minus that of the straight line, so never
//! negative. Measured for Euler, Heun, RK4 and DDIM with eta = 0; not for noisy steps (the sum
//! grows like sigma^2 / h) nor for Dormand-Prince (its own steps are not the grid's).
//! [`crate::distill`]'s reflow measures the same figure on its banks.
//!
//! Brownian increments come from per-sample streams (seed, Purpose::Brownian, first + i) held
//! for the whole run, each drawing its sample's ε_k step after step; the paths do not depend on
//! how a batch is split. (Dormand-Prince adapts one step size per batch, so its results depend
//! on the batch split within the tolerance; the fixed-step solvers give identical numbers.)

mod adaptive;
mod ddim;
mod driver;
mod fixed;
mod grid;
mod initial;

pub use ddim::{ddim_sigma, ddim_step};
pub use driver::{solve, solve_batched};
pub use fixed::{euler_maruyama_step, euler_step, heun_step, rk4_step, BrownianNoise};
pub use grid::{
    check_grid, grid_from_flags, is_stochastic, read_grid, saved_indices, uniform_grid,
};
pub use initial::initial_states;

use candle_core::Tensor;

use crate::{usage_bail, Result};

/// The integration rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Euler-Maruyama for an SDE, Euler for an ODE (Euler-Maruyama without noise).
    Auto,
    Euler,
    Heun,
    Rk4,
    /// Adaptive Dormand-Prince 5(4), with --rtol/--atol.
    #[value(alias = "dormand-prince")]
    Dopri5,
    EulerMaruyama,
    /// DDIM / DDPM ancestral steps with --eta (a field along a Gaussian path: a trained or
    /// guided model, or a Gaussian target), its own noise: give the ODE (sigma 0).
    Ddim,
}

impl Method {
    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Euler => "euler",
            Method::Heun => "heun",
            Method::Rk4 => "rk4",
            Method::Dopri5 => "dopri5",
            Method::EulerMaruyama => "euler-maruyama",
            Method::Ddim => "ddim",
        }
    }

    /// Resolves `auto` and refuses ODE rules for an SDE: `auto` is Euler-Maruyama for an SDE
    /// and Euler for an ODE (the notes' Algorithm 1 and 2; Euler-Maruyama at σ = 0 is Euler).
    pub fn resolve(self, stochastic: bool, field: &str) -> Result<Method> {
        Ok(match self {
            Method::Auto if stochastic => Method::EulerMaruyama,
            Method::Auto => Method::Euler,
            Method::EulerMaruyama => self,
            Method::Ddim if stochastic => usage_bail!(
                "solver ddim brings its own noise (--eta), but {field} has sigma > 0: give the \
                 ODE of the model (sigma 0)"
            ),
            _ if stochastic => usage_bail!(
                "solver {} integrates ODEs, but {field} has noise (sigma > 0): use \
                 euler-maruyama or auto",
                self.name()
            ),
            _ => self,
        })
    }
}

/// Counts of work done: field evaluations (one per call on a batch) and steps; and, for a
/// deterministic fixed-step run, the sums behind the path's straightness (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub nfe: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// sum over samples, steps and elements of h_k v_k^2 = (X_{k+1} - X_k)^2 / h_k.
    #[serde(skip)]
    pub path_energy: f64,
    /// sum over samples and elements of (X_T - X_0)^2 / T.
    #[serde(skip)]
    pub chord_energy: f64,
    /// N D, the elements measured; 0 where straightness is not measured.
    #[serde(skip)]
    pub measured: u64,
}

impl Stats {
    /// Adds another batch's counts.
    pub fn add(&mut self, o: Stats) {
        self.nfe += o.nfe;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.path_energy += o.path_energy;
        self.chord_energy += o.chord_energy;
        self.measured += o.measured;
    }

    /// The straightness S of the run's paths, per sample and element (module docs); `None`
    /// where it is not measured (noisy steps, Dormand-Prince).
    pub fn straightness(&self) -> Option<f64> {
        (self.measured > 0).then(|| (self.path_energy - self.chord_energy) / self.measured as f64)
    }
}

/// How to solve.
#[derive(Clone, Debug)]
pub struct SolveOptions {
    /// The rule; `Auto` is resolved by [`solve`] through [`Method::resolve`].
    pub method: Method,
    /// Relative and absolute tolerances of Dormand-Prince.
    pub rtol: f64,
    pub atol: f64,
    /// Dormand-Prince gives up after this many (accepted + rejected) steps.
    pub max_steps: u64,
    /// Seed of the Brownian streams, and the index of the batch's first sample.
    pub seed: u64,
    pub first: u64,
    /// Keep the state at every `k`-th grid time (and the last) when `Some(k)`.
    pub save_every: Option<usize>,
    /// DDIM's eta in [0, 1]: 0 deterministic, 1 the DDPM ancestral sampler.
    pub eta: f64,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            method: Method::Auto,
            rtol: 1e-5,
            atol: 1e-5,
            max_steps: 100_000,
            seed: 0,
            first: 0,
            save_every: None,
            eta: 0.0,
        }
    }
}

/// What [`solve`] returns.
pub struct Solution {
    /// The state at the last grid time, shaped like x0.
    pub x: Tensor,
    /// The kept states (N, T', ...) at the times of [`saved_indices`], when asked for.
    pub trajectory: Option<Tensor>,
    pub stats: Stats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_checked() {
        let err = Method::Heun.resolve(true, "ou").unwrap_err();
        assert!(crate::error::is_usage(&err));
        assert_eq!(
            Method::Auto.resolve(true, "ou").unwrap(),
            Method::EulerMaruyama
        );
        assert_eq!(
            Method::Auto.resolve(false, "linear").unwrap(),
            Method::Euler
        );
    }
}
