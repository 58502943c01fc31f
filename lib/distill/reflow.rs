//! Reflow (rectified flow; Liu, Gong & Liu 2022, "Flow Straight and Fast: Learning to Generate
//! and Transfer Data with Rectified Flow", arXiv 2209.03003; notes section 7).
//!
//! The teacher's ODE couples each noise sample x_0 with its output x_1 = Phi_1(x_0). Reflow
//! refits a velocity on the straight line between the coupled points:
//!
//! ```text
//!     L(theta) = E_{t ~ U[0,1], (x_0, x_1) ~ teacher} || v_theta(x_t, t) - (x_1 - x_0) ||^2,
//!     x_t = (1 - t) x_0 + t x_1.
//! ```
//! The minimiser v(x, t) = E[x_1 - x_0 | x_t = x] transports N(0, I) to the same p_1 as the
//! teacher with paths that do not cross more than the coupling makes them, so they are
//! straighter (Liu et al., Theorem 3.5) and Euler with one to four steps lands close to x_1.
//! Straightness is measured as (their eq. (9), on a grid)
//!
//! ```text
//!     S(v) = int_0^1 E || (X_1 - X_0) - v(X_t, t) ||^2 dt,
//! ```
//! zero exactly when every trajectory is a straight line travelled at constant speed.
//! The student starts from the teacher's weights; with a conditional teacher it learns the
//! guided field at the bank's w for each label (no null label is trained).

use candle_core::Tensor;

use super::{draw_rows, per_row, Bank};
use crate::nn::{time_column, FieldNet};
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::Result;

/// The reflow loss of training step `step` on a minibatch of `batch` couplings from `bank`
/// (rows from stream (seed, Shuffle, step), times from (seed, Time, step), of density `time`).
pub fn loss(
    net: &dyn FieldNet,
    bank: &Bank,
    batch: usize,
    seed: u64,
    step: u64,
    time: &TimeDensity,
) -> Result<Tensor> {
    let rows = draw_rows(seed, step, batch, bank.len());
    let t = match time {
        TimeDensity::Uniform => rng::uniform_rows(seed, Purpose::Time, step, 1, batch, 0.0, 1.0),
        d => {
            use rand::Rng;
            let mut r = rng::stream(seed, Purpose::Time, step);
            (0..batch)
                .map(|_| d.quantile(r.random::<f64>()) as f32)
                .collect()
        }
    };
    let x0 = bank.at(&rows, &vec![0; batch])?;
    let x1 = bank.at(&rows, &vec![bank.steps; batch])?;
    let tc = per_row(&t, &x0)?;
    let xt = (x0.broadcast_mul(&(1.0 - &tc)?)? + x1.broadcast_mul(&tc)?)?;
    let y = bank.labels_of(&rows)?;
    let tt = time_column(&Tensor::from_slice(&t, batch, x0.device())?, batch)?;
    let v = net.forward(&xt, &tt, y.as_ref())?;
    Ok((v - (x1 - x0)?)?.sqr()?.mean_all()?)
}

/// S = (1/N) sum_k E || (X_1 - X_0) - (X_{k+1} - X_k) N ||^2 over the trajectories of a bank:
/// the straightness of the field that made it (the discrete form of the module doc's
/// integral, with v(X_t, t) read off the trajectory's own steps). Per dimension of x.
pub fn straightness(bank: &Bank) -> Result<f64> {
    let n = bank.steps;
    let s = &bank.states;
    let chord = (s.narrow(1, n, 1)? - s.narrow(1, 0, 1)?)?;
    let steps = ((s.narrow(1, 1, n)? - s.narrow(1, 0, n)?)? * n as f64)?;
    let dev = steps.broadcast_sub(&chord)?.sqr()?.mean_all()?;
    Ok(dev.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::train::{self, TrainOptions};
    use crate::distill::{Method, Teacher, TeacherSolver};
    use crate::nn::{Activation, MlpConfig, Params};
    use candle_core::Device;

    /// A curved teacher with a closed form: the exact CondOT field to the two-point mixture
    /// (1/2) N(-a, s^2) + (1/2) N(a, s^2) in 1-D, whose trajectories bend as the modes split.
    struct TwoModes {
        a: f64,
        s: f64,
    }

    impl Teacher for TwoModes {
        fn velocity(&self, x: &Tensor, t: f64, _y: Option<&Tensor>) -> Result<Tensor> {
            // p_t(x | z) = N(t z, (1 - t)^2) with z ~ N(+-a, s^2): x | mode = N(+-t a, v),
            // v = t^2 s^2 + (1 - t)^2. E[z | x, mode] = +-a + t s^2 (x -+ t a) / v, and
            // u = (E[z | x] - x) / (1 - t) for CondOT (E[eps] eliminated: x = t z + (1 - t) eps).
            let (a, s) = (self.a, self.s);
            let v = t * t * s * s + (1.0 - t) * (1.0 - t);
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let out: Vec<f32> = xs
                .iter()
                .map(|&xf| {
                    let x = xf as f64;
                    let lp = -(x - t * a).powi(2) / (2.0 * v);
                    let lm = -(x + t * a).powi(2) / (2.0 * v);
                    let w = 1.0 / (1.0 + (lm - lp).exp()); // P(+ | x)
                    let ez_p = a + t * s * s * (x - t * a) / v;
                    let ez_m = -a + t * s * s * (x + t * a) / v;
                    let ez = w * ez_p + (1.0 - w) * ez_m;
                    ((ez - x) / (1.0 - t).max(1e-3)) as f32
                })
                .collect();
            Ok(Tensor::from_vec(out, x.dims(), x.device())?)
        }
        fn num_classes(&self) -> usize {
            0
        }
    }

    #[test]
    fn reflow_makes_trajectories_straighter() {
        let dev = Device::Cpu;
        let teacher = TwoModes { a: 2.0, s: 0.3 };
        let bank = Bank::generate(
            &teacher,
            &[1],
            1024,
            32,
            TeacherSolver::Heun,
            None,
            1,
            1024,
            &dev,
        )
        .unwrap();
        let before = straightness(&bank).unwrap();
        let cfg = MlpConfig {
            dim: 1,
            hidden: vec![32, 32],
            activation: Activation::Silu,
            time_features: 2,
        };
        let config = train::student_config(
            Method::Reflow,
            &cfg.to_json(),
            &crate::paths::Path::Gaussian(crate::paths::GaussianPath::CONDOT),
            serde_json::json!({}),
        );
        let opts = TrainOptions {
            steps: 400,
            batch: 256,
            lr: 3e-3,
            seed: 4,
            ..TrainOptions::default()
        };
        let state =
            train::train(Method::Reflow, &config, Params::new(4, &dev), &bank, &opts).unwrap();
        let student = crate::distill::sample::Student::from_state(&config, &state, &dev).unwrap();
        let after_bank = student.bank(512, 32, 9, &dev).unwrap();
        let after = straightness(&after_bank).unwrap();
        // The exact teacher is visibly curved (S about 1 here); the reflowed field must remove
        // most of it: a trained fit leaves well under half.
        assert!(before > 0.3, "teacher straightness {before}");
        assert!(after < 0.5 * before, "straightness {before} -> {after}");
    }
}
