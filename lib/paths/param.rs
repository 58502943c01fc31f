//! Parametrisations of a network's output (velocity, score, noise, denoiser) and the
//! conversions between them through the posterior means z^ and eps^ (Proposition 1, Remark 16;
//! formulas in the module doc of [`super`]).

use candle_core::{Result, Tensor};

use super::schedule::Cols;
use super::{time_values, GaussianPath};

/// What a network predicts (the "parametrisation" of a model file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// The marginal vector field u_t(x) (flow matching).
    Velocity,
    /// The marginal score grad log p_t(x) (score matching, Theorem 22).
    Score,
    /// The noise E[eps | x_t = x] (DDPM's epsilon prediction).
    Noise,
    /// The clean data E[z | x_t = x] (denoiser, x-prediction).
    Denoiser,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Param::Velocity => "velocity",
            Param::Score => "score",
            Param::Noise => "noise",
            Param::Denoiser => "denoiser",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

impl GaussianPath {
    /// Converts a prediction `pred` (N, ...) in parametrisation `from` at the point x (N, ...)
    /// into parametrisation `to` (Proposition 1, Remark 16; formulas in the module doc).
    pub fn convert(
        &self,
        from: Param,
        to: Param,
        pred: &Tensor,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        self.convert_at(from, to, pred, x, &time_values(t, x.dim(0)?)?)
    }

    /// [`Self::convert`] with the times as host values, one per row.
    pub fn convert_at(
        &self,
        from: Param,
        to: Param,
        pred: &Tensor,
        x: &Tensor,
        t: &[f64],
    ) -> Result<Tensor> {
        if from == to {
            return Ok(pred.clone());
        }
        let c = self.cols(t, x)?;
        match to {
            Param::Noise => to_noise(&c, from, pred, x),
            Param::Score => to_noise(&c, from, pred, x)?.broadcast_mul(&c.col(|k| -k.inv_beta())?),
            Param::Denoiser => to_denoiser(&c, from, pred, x),
            Param::Velocity => match from {
                // u = d_alpha z^ + d_beta (x - alpha z^) / beta  (eq. 20 with z = z^)
                Param::Denoiser => c.lin(
                    pred,
                    |k| k.d_alpha - k.d_beta * k.inv_beta() * k.alpha,
                    x,
                    |k| k.d_beta * k.inv_beta(),
                ),
                // u = (d_alpha / alpha) x + (d_beta - d_alpha beta / alpha) eps^  (Prop. 1)
                _ => {
                    let eps = to_noise(&c, from, pred, x)?;
                    c.lin(x, |k| k.d_alpha * k.inv_alpha(), &eps, |k| k.eps_gain())
                }
            },
        }
    }
}

/// eps^ = E[eps | x] from a prediction in any parametrisation; never divides by alpha.
fn to_noise(c: &Cols, from: Param, pred: &Tensor, x: &Tensor) -> Result<Tensor> {
    match from {
        Param::Noise => Ok(pred.clone()),
        Param::Score => pred.broadcast_mul(&c.col(|k| -k.beta)?),
        Param::Denoiser => c.lin(x, |k| k.inv_beta(), pred, |k| -k.alpha * k.inv_beta()),
        Param::Velocity => c.lin(x, |k| k.d_alpha / k.det(), pred, |k| -k.alpha / k.det()),
    }
}

/// z^ = E[z | x] from a prediction in any parametrisation.
fn to_denoiser(c: &Cols, from: Param, pred: &Tensor, x: &Tensor) -> Result<Tensor> {
    match from {
        Param::Denoiser => Ok(pred.clone()),
        Param::Velocity => c.lin(pred, |k| k.beta / k.det(), x, |k| -k.d_beta / k.det()),
        Param::Noise | Param::Score => {
            let eps = to_noise(c, from, pred, x)?;
            c.lin(x, |k| k.inv_alpha(), &eps, |k| -k.beta * k.inv_alpha())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn conversions_round_trip_for_all_schedules() {
        let all = [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser];
        let n = 20;
        let (pred, x) = (normal(7, &[n, 3]), normal(8, &[n, 3]));
        let ts = times(n);
        for p in PATHS {
            for from in all {
                for to in all {
                    let there = p.convert_at(from, to, &pred, &x, &ts).unwrap();
                    let back = p.convert_at(to, from, &there, &x, &ts).unwrap();
                    // Through z^ = x + beta^2 s and back, s = (z^ - x) / beta^2 cancels in
                    // f32: VE's beta is 0.013 at t = 0.97 (condot's 0.03), beta^2 s 1.7e-4 of x.
                    let tol = if p == GaussianPath::VE { 1e-3 } else { 2e-4 };
                    assert_close(&back, &pred, tol, &format!("{p:?} {from:?}->{to:?}"));
                }
            }
        }
    }

    #[test]
    fn conversions_agree_with_proposition_1() {
        // u = (beta^2 d_alpha / alpha - d_beta beta) s + (d_alpha / alpha) x
        let n = 8;
        let (s, x) = (normal(9, &[n, 2]), normal(10, &[n, 2]));
        let ts = times(n);
        for p in PATHS {
            let u = vals(
                &p.convert_at(Param::Score, Param::Velocity, &s, &x, &ts)
                    .unwrap(),
            );
            let (sv, xv) = (vals(&s), vals(&x));
            for i in 0..2 * n {
                let k = p.coefs(ts[i / 2]);
                let want = (k.beta * k.beta * k.d_alpha / k.alpha - k.d_beta * k.beta)
                    * sv[i] as f64
                    + k.d_alpha / k.alpha * xv[i] as f64;
                assert!((u[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0));
                // The score's weight alone, as classifier guidance uses it.
                let c = k.beta * k.beta * k.d_alpha / k.alpha - k.d_beta * k.beta;
                assert!((k.score_gain() - c).abs() < 1e-9 * c.abs().max(1.0));
            }
        }
    }
}
