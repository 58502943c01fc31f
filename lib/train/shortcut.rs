//! Shortcut models trained from data, without a teacher (Frans, Hafner, Levine & Abbeel 2024,
//! "One Step Diffusion via Shortcut Models", arXiv 2410.12557; notes section 7):
//! `fit-velocity --objective shortcut`.
//!
//! One network u(x, t, d) conditioned on the step size d jumps along the flow of the probability
//! path, X(x_t, t, t + d) = x_t + d u(x_t, t, d) ([`crate::distill::flowmap::TwoTime`], the
//! architecture with one more input channel holding d). Two regressions share each batch:
//! - flow matching at d = 0 (three quarters of the rows): at d -> 0 the jump's average velocity
//!   is the marginal field, so u(x_t, t, 0) regresses on the path's conditional velocity, with t
//!   from the run's time density (the plain loss of notes eq. 31, [`super::losses`]);
//! - self-consistency (a quarter): two jumps of d make one of 2d,
//!   u(x_t, t, 2d) ~ (u(x_t, t, d) + u(x', t + d, d)) / 2 with x' = x_t + d u(x_t, t, d),
//!   the right side computed with the current weights held fixed (stop-gradient). 2d = 2^-j for
//!   j uniform in 0..LEVELS (so 2d runs from 1 down to 1/64) and t uniform on the multiples of d
//!   with t + 2d <= 1. At the smallest d = 1/128 the right side is queried at d = 0, two Euler
//!   steps of the learned field itself: the recursion's base.
//!
//! Where distillation (`distill --method flowmap`, [`crate::distill::flowmap`]) reads its jumps
//! off a teacher's trajectories, here the only target from outside the network is the
//! conditional velocity: the model learns the flow and its shortcuts at once. The x_t of both
//! parts come from the same draw of data, source, noise, labels (with dropout) and pairing as
//! flow matching ([`super::losses::ConditionalLoss::batch_at`]); the file is a `flowmap` model
//! that `sample-fewstep` samples with K jumps of 1/K.

use candle_core::Tensor;
use rand::Rng;

use super::losses::ConditionalLoss;
use crate::distill::flowmap::TwoTime;
use crate::rng::{self, Purpose};

/// 2d takes the values 2^-j, j in 0..LEVELS: from 1 (one jump from noise to data) to 1/64.
pub const LEVELS: u32 = 7;

/// The share of each batch that regresses on self-consistency targets (Frans et al.'s 1/4).
pub const CONSISTENCY_FRACTION: f64 = 0.25;

/// The shortcut loss of step `step`: the mean over the batch of ||u - target||^2 summed over a
/// sample's coordinates, as the flow matching loss.
pub fn loss(net: &TwoTime, cl: &ConditionalLoss, step: u64) -> candle_core::Result<Tensor> {
    let b = cl.batch;
    let n_sc = ((b as f64 * CONSISTENCY_FRACTION).round() as usize).min(b.saturating_sub(1));
    let n_fm = b - n_sc;
    // Times: the run's density for the flow matching rows, the grid of the jump for the rest
    // (from a stream of its own, so the flow matching rows keep the times of plain training).
    let mut ts = vec![0f32; n_fm];
    cl.time
        .fill(&mut rng::stream(cl.seed, Purpose::Time, step), &mut ts);
    let mut ts: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
    let mut r = rng::stream(cl.seed, Purpose::Misc, step);
    let mut half = Vec::with_capacity(n_sc);
    for _ in 0..n_sc {
        let j = r.random_range(0..LEVELS);
        let d = 0.5f64.powi(j as i32 + 1);
        let m = 1u64 << (j + 1); // jumps of d in [0, 1]
        ts.push(r.random_range(0..=m - 2) as f64 * d);
        half.push(d);
    }
    let batch = cl.batch_at(step, &ts)?;
    let dev = batch.x.device();
    let col = |v: &[f64]| Tensor::from_vec(v.iter().map(|&v| v as f32).collect(), v.len(), dev);
    let y_part = |start: usize, len: usize| -> candle_core::Result<Option<Tensor>> {
        batch
            .y
            .as_ref()
            .map(|y| y.narrow(0, start, len))
            .transpose()
    };
    let t_all: Vec<f64> = batch
        .t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|&t| t as f64)
        .collect();

    // Flow matching at d = 0.
    let x_fm = batch.x.narrow(0, 0, n_fm)?;
    let pred_fm = net.forward(
        &x_fm,
        &col(&t_all[..n_fm])?,
        &col(&vec![0.0; n_fm])?,
        y_part(0, n_fm)?.as_ref(),
    )?;
    let mut sq = (pred_fm - batch.target.narrow(0, 0, n_fm)?)?
        .sqr()?
        .sum_all()?;

    if n_sc > 0 {
        let x = batch.x.narrow(0, n_fm, n_sc)?;
        let y = y_part(n_fm, n_sc)?;
        let t = &t_all[n_fm..];
        let smallest = 0.5f64.powi(LEVELS as i32);
        // The right side's step: d, or 0 at the smallest d (the recursion's base).
        let query: Vec<f64> = half
            .iter()
            .map(|&d| if d <= smallest { 0.0 } else { d })
            .collect();
        let per_row = |v: &[f64]| -> candle_core::Result<Tensor> {
            let mut shape = vec![v.len()];
            shape.extend(std::iter::repeat_n(1, x.rank() - 1));
            col(v)?.reshape(shape)?.to_dtype(x.dtype())
        };
        let u1 = net
            .forward(&x, &col(t)?, &col(&query)?, y.as_ref())?
            .detach();
        let x_mid = (&x + u1.broadcast_mul(&per_row(&half)?)?)?;
        let t_mid: Vec<f64> = t.iter().zip(&half).map(|(t, d)| t + d).collect();
        let u2 = net
            .forward(&x_mid, &col(&t_mid)?, &col(&query)?, y.as_ref())?
            .detach();
        let target = ((u1 + u2)? * 0.5)?;
        let full: Vec<f64> = half.iter().map(|d| 2.0 * d).collect();
        let pred = net.forward(&x, &col(t)?, &col(&full)?, y.as_ref())?;
        sq = (sq + (pred - target)?.sqr()?.sum_all()?)?;
    }
    sq.affine(1.0 / b as f64, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::tests::assert_jumps_match;
    use crate::train::testing::{gaussian_problem, small_mlp, train};

    #[test]
    fn a_shortcut_model_from_data_learns_the_gaussian_flow_map() {
        // Data from N((2, -1), 0.5^2 I) only, no teacher: the jumps 0 -> 1, 0 -> 1/2 and
        // 1/2 -> 1 must match the closed-form flow map of CondOT to N(0, I).
        let cl = gaussian_problem();
        let (config, params) = small_mlp();
        let net = TwoTime::new(&config, &params).unwrap();
        train(params, &config, 1500, 3e-3, &mut |step| {
            loss(&net, &cl, step)
        });
        assert_jumps_match(&net, &[(0.0, 1.0, 0.1), (0.0, 0.5, 0.08), (0.5, 1.0, 0.08)]);
    }
}
