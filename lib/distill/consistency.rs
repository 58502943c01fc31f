//! Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models",
//! arXiv 2303.01469, Algorithm 2; notes section 7), in our time convention (t = 0 noise,
//! t = 1 data).
//!
//! A consistency function maps every point of an ODE trajectory to the trajectory's end:
//! f(x_t, t) = x_1 for all t, with the boundary condition f(x, 1) = x. We build the boundary
//! in with the skip parametrisation c_skip(t) = 1, c_out(t) = 1 - t:
//!
//! ```text
//!     f_theta(x, t) = x + (1 - t) F_theta(x, t),
//! ```
//! which is also one Euler step of the velocity F from t to 1, so a student that starts from
//! the teacher's weights starts as the teacher's one-step Euler sampler. Distillation pulls the
//! function to agree across adjacent points of a teacher trajectory (the [`super::Bank`],
//! where x_{t_{k+1}} is one teacher ODE step from x_{t_k}):
//!
//! ```text
//!     L(theta) = E_{k ~ U{0..N-1}} || f_theta(x_{t_k}, t_k) - sg f_theta(x_{t_{k+1}}, t_{k+1}) ||^2,
//! ```
//! with sg the stop-gradient target network. Song et al. use an EMA of theta as the target;
//! we use the current weights held fixed (target decay 0), which Song & Dhariwal (2023,
//! "Improved Techniques for Training Consistency Models", arXiv 2310.14189) found as good or
//! better. At k + 1 = N the target is x_1 itself (the boundary), which anchors the chain.
//!
//! Multistep sampling (Song et al., Algorithm 1), K steps on t_k = k/K: x_1^ = f(x_0, 0); then
//! for k = 1..K-1 re-noise along the teacher's Gaussian path, x = alpha_{t_k} x_1^ +
//! beta_{t_k} eps_k, and x_1^ = f(x, t_k). The noise eps_k of sample i comes from stream
//! (seed, Brownian, i), so sample i never depends on the batch. More steps are not always
//! better: each re-noised point asks f for an answer at an intermediate time, and the errors of
//! the bootstrapped chain do not shrink there (on the checkerboard, `make distill-2d` measures
//! 1 step best).

use candle_core::Tensor;

use super::{draw_index, draw_rows, per_row, Bank};
use crate::nn::FieldNet;
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::Result;

/// The `parametrisation` of a consistency model's config.
pub const PARAMETRISATION: &str = "consistency: f(x, t) = x + (1 - t) F(x, t)";

/// f(x, t) = x + (1 - t) F(x, t): x (N, ...), t per row, y (N,) labels or `None`.
pub fn consistency_fn(
    net: &dyn FieldNet,
    x: &Tensor,
    t: &[f32],
    y: Option<&Tensor>,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let tt = Tensor::from_slice(t, (n, 1), x.device())?.to_dtype(x.dtype())?;
    let f = net.forward(x, &tt, y)?;
    let c_out: Vec<f32> = t.iter().map(|t| 1.0 - t).collect();
    Ok((x + f.broadcast_mul(&per_row(&c_out, x)?)?)?)
}

/// The consistency distillation loss of training step `step` (rows from (seed, Shuffle, step),
/// grid indices from (seed, Time, step), their times of density `time`).
pub fn loss(
    net: &dyn FieldNet,
    bank: &Bank,
    batch: usize,
    seed: u64,
    step: u64,
    time: &TimeDensity,
) -> Result<Tensor> {
    let n = bank.steps;
    let rows = draw_rows(seed, step, batch, bank.len());
    let mut r = rng::stream(seed, Purpose::Time, step);
    let ks: Vec<usize> = (0..batch).map(|_| draw_index(&mut r, time, n)).collect();
    let next: Vec<usize> = ks.iter().map(|k| k + 1).collect();
    let t: Vec<f32> = ks.iter().map(|&k| k as f32 / n as f32).collect();
    let t_next: Vec<f32> = next.iter().map(|&k| k as f32 / n as f32).collect();
    let y = bank.labels_of(&rows)?;
    let x = bank.at(&rows, &ks)?;
    let x_next = bank.at(&rows, &next)?;
    let target = consistency_fn(net, &x_next, &t_next, y.as_ref())?.detach();
    let pred = consistency_fn(net, &x, &t, y.as_ref())?;
    Ok((pred - target)?.sqr()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::sample::Student;
    use crate::distill::tests::{gaussian_student, points_at, rms_against_closed_form};
    use crate::distill::train::TrainOptions;
    use crate::distill::Method;

    #[test]
    fn consistency_function_maps_trajectory_points_to_the_closed_form_end() {
        let opts = TrainOptions {
            steps: 1000,
            batch: 256,
            lr: 3e-3,
            decay: crate::train::optim::Decay::Cosine,
            seed: 3,
            ..TrainOptions::default()
        };
        let student = gaussian_student(Method::Consistency, &[64, 64], &opts);
        let Student::Consistency { net, .. } = &student else {
            panic!("not a consistency model")
        };
        // The one-step Euler jump of the exact field, m, is off by 0.5 |x| (about 0.7 rms); a
        // chain of N = 16 bootstrapped links leaves about 0.08 (the flow map's 4 levels: 0.04).
        for (s, tol) in [(0.0, 0.12), (0.5, 0.12)] {
            let (start, xs) = points_at(12, s);
            let got = consistency_fn(net.as_ref(), &xs, &[s as f32; 256], None).unwrap();
            let rmse = rms_against_closed_form(&start, &got, s, 1.0);
            assert!(rmse < tol, "f(x_{s}, {s}): rms error {rmse}");
        }
        // The boundary holds exactly: f(x, 1) = x.
        let (_, xs) = points_at(12, 0.0);
        let at1 = consistency_fn(net.as_ref(), &xs, &[1.0; 256], None).unwrap();
        let d: f32 = (at1 - &xs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
