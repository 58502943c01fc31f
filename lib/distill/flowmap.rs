//! Flow maps by shortcut self-consistency (Frans, Hafner, Levine & Abbeel 2024, "One Step
//! Diffusion via Shortcut Models", arXiv 2410.12557; flow maps as in Boffi, Albergo &
//! Vanden-Eijnden 2024, "Flow Map Matching", arXiv 2406.07507; notes section 7).
//!
//! The flow map of the teacher's ODE, Phi_{s,t}(x_s) = x_t, is written with an average
//! velocity u over the jump d = t - s:
//!
//! ```text
//!     X(x_s, s, s + d) = x_s + d u(x_s, s, d).
//! ```
//! Flow maps compose, Phi_{s,s+2d} = Phi_{s+d,s+2d} o Phi_{s,s+d}, which in terms of u is the
//! shortcut self-consistency identity
//!
//! ```text
//!     u(x, s, 2d) = ( u(x, s, d) + u(x', s + d, d) ) / 2,     x' = x + d u(x, s, d),
//! ```
//! and as d -> 0 the average velocity is the teacher's, u(x, s, 0) = u_s(x). Training therefore
//! mixes two regressions on points x_s of the teacher's trajectories (the [`super::Bank`], grid
//! 1/N with N a power of two):
//! - a quarter of each batch: the smallest jump d = 1/N, target the teacher's own step
//!   (x_{s+1/N} - x_s) N (exact for the bank's solver);
//! - the rest: 2d = 2^-j for j uniform in 0..log2 N, target the right side of the identity
//!   computed with the current weights held fixed (stop-gradient, as Frans et al.).
//!
//! The network is the teacher's architecture with one more input channel holding d (a constant
//! plane for images, one more coordinate for points) and time s; the extra output channel is
//! dropped. Starting from the teacher with that channel's weights at zero, u(x, s, d) = u_s(x)
//! and the map starts as the teacher's Euler step. K-step sampling jumps t_k = k/K -> t_{k+1}.
//!
//! Why the shortcut identity rather than MeanFlow's u = v - (t - r) du/dt (Geng et al. 2025):
//! that needs the total derivative du/dt, a Jacobian-vector product, and candle has no
//! forward-mode differentiation; the shortcut identity needs only forward passes, is exact for
//! the flow map, and its base case is the teacher's own step.

use anyhow::bail;
use candle_core::Tensor;
use serde_json::Value;

use super::{draw_index, draw_rows, per_row, Bank};
use crate::nn::{build, time_column, FieldNet, Params};
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::Result;

/// The share of each batch that regresses the smallest jump on the teacher's step.
pub const BASE_FRACTION: f64 = 0.25;

/// u(x, s, d): an architecture with an extra input channel holding the jump d.
pub struct TwoTime {
    inner: Box<dyn FieldNet>,
    /// The data channels C (or the dimension D of points).
    channels: usize,
}

impl TwoTime {
    /// Builds the inner network of `config` (the student's config, whose `data_shape` is the
    /// data's) with one more channel.
    pub fn new(config: &Value, params: &Params) -> Result<TwoTime> {
        let (inner_config, channels) = inner_config(config)?;
        Ok(TwoTime {
            inner: build(&inner_config, params)?,
            channels,
        })
    }

    /// u(x, s, d): x (N, C, ...), s and d (N,) or (N, 1), y (N,) labels -> (N, C, ...).
    pub fn forward(
        &self,
        x: &Tensor,
        s: &Tensor,
        d: &Tensor,
        y: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let mut shape = x.dims().to_vec();
        shape[1] = 1;
        let mut col = vec![n, 1];
        col.extend(std::iter::repeat_n(1, x.rank() - 2));
        let plane = d
            .flatten_all()?
            .reshape(col)?
            .to_dtype(x.dtype())?
            .broadcast_as(shape)?;
        let xa = Tensor::cat(&[x, &plane.contiguous()?], 1)?;
        let out = self.inner.forward(&xa, &time_column(s, n)?, y)?;
        out.narrow(1, 0, self.channels)
    }

    /// X(x, s, s + d) = x + d u(x, s, d), with d as per-row values.
    pub fn jump(&self, x: &Tensor, s: &[f32], d: &[f32], y: Option<&Tensor>) -> Result<Tensor> {
        let dev = x.device();
        let n = x.dim(0)?;
        let u = self.forward(
            x,
            &Tensor::from_slice(s, n, dev)?,
            &Tensor::from_slice(d, n, dev)?,
            y,
        )?;
        Ok((x + u.broadcast_mul(&per_row(d, x)?)?)?)
    }
}

/// The inner network's config (data channels + 1) and the number of data channels.
pub fn inner_config(config: &Value) -> Result<(Value, usize)> {
    let mut c = config.clone();
    let shape = c["data_shape"].as_array_mut();
    let Some(first) = shape.and_then(|s| s.first_mut()) else {
        bail!("a flow map needs data_shape in its config");
    };
    let channels = first.as_u64().unwrap_or(0) as usize;
    if channels == 0 {
        bail!("a flow map needs a positive first data dimension");
    }
    *first = Value::from(channels + 1);
    Ok((c, channels))
}

/// log2 of the bank's steps, which must be a power of two.
pub fn levels(steps: usize) -> Result<u32> {
    if !steps.is_power_of_two() || steps < 2 {
        bail!("the flow map needs a power of two (at least 2) of teacher steps, got {steps}");
    }
    Ok(steps.trailing_zeros())
}

/// The shortcut loss of training step `step` (rows from (seed, Shuffle, step); jumps and
/// times from (seed, Time, step), the start times of density `time`).
pub fn loss(
    net: &TwoTime,
    bank: &Bank,
    batch: usize,
    seed: u64,
    step: u64,
    time: &TimeDensity,
) -> Result<Tensor> {
    use rand::Rng;
    let n = bank.steps;
    let l = levels(n)?;
    let h = 1.0 / n as f64;
    let rows = draw_rows(seed, step, batch, bank.len());
    let mut r = rng::stream(seed, Purpose::Time, step);
    let n_base = ((batch as f64 * BASE_FRACTION).ceil() as usize).min(batch);
    // Base rows: d = h at k in 0..n. Consistency rows: 2d = 2^-j, k in 0..=n - 2d n.
    let mut ks = Vec::with_capacity(batch);
    let mut ds = Vec::with_capacity(batch);
    for i in 0..batch {
        if i < n_base {
            ks.push(draw_index(&mut r, time, n));
            ds.push(h);
        } else {
            let j = r.random_range(0..l);
            let two_d = (n >> j) as usize; // grid steps in the jump 2d
            ks.push(draw_index(&mut r, time, n - two_d + 1));
            ds.push(two_d as f64 * h / 2.0);
        }
    }
    let x = bank.at(&rows, &ks)?;
    let y = bank.labels_of(&rows)?;
    let s: Vec<f32> = ks.iter().map(|&k| (k as f64 * h) as f32).collect();

    // Base targets: the teacher's step.
    let (rb, kb) = (&rows[..n_base], &ks[..n_base]);
    let next: Vec<usize> = kb.iter().map(|k| k + 1).collect();
    let xb = x.narrow(0, 0, n_base)?;
    let base_target = ((bank.at(rb, &next)? - &xb)? * n as f64)?;

    // Self-consistency targets with the current weights, detached.
    let m = batch - n_base;
    let mut targets = vec![base_target];
    let mut jumps = vec![h as f32; n_base];
    if m > 0 {
        let xc = x.narrow(0, n_base, m)?;
        let yc = match &y {
            Some(y) => Some(y.narrow(0, n_base, m)?),
            None => None,
        };
        let d: Vec<f32> = ds[n_base..].iter().map(|&d| d as f32).collect();
        let sc = &s[n_base..];
        let dev = x.device();
        let u1 = net
            .forward(
                &xc,
                &Tensor::from_slice(sc, m, dev)?,
                &Tensor::from_slice(&d, m, dev)?,
                yc.as_ref(),
            )?
            .detach();
        let xm = (&xc + u1.broadcast_mul(&per_row(&d, &xc)?)?)?;
        let sm: Vec<f32> = sc.iter().zip(&d).map(|(s, d)| s + d).collect();
        let u2 = net
            .forward(
                &xm,
                &Tensor::from_slice(&sm, m, dev)?,
                &Tensor::from_slice(&d, m, dev)?,
                yc.as_ref(),
            )?
            .detach();
        targets.push(((u1 + u2)? * 0.5)?);
        jumps.extend(d.iter().map(|d| 2.0 * d));
    }
    let target = Tensor::cat(&targets, 0)?;
    let dev = x.device();
    let pred = net.forward(
        &x,
        &Tensor::from_slice(&s, batch, dev)?,
        &Tensor::from_slice(&jumps, batch, dev)?,
        y.as_ref(),
    )?;
    Ok((pred - target)?.sqr()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use crate::distill::sample::Student;
    use crate::distill::tests::{assert_jumps_match, gaussian_student};
    use crate::distill::train::TrainOptions;
    use crate::distill::Method;

    #[test]
    fn trained_flow_map_matches_the_gaussian_closed_form() {
        let opts = TrainOptions {
            steps: 600,
            batch: 256,
            lr: 3e-3,
            seed: 2,
            ..TrainOptions::default()
        };
        let student = gaussian_student(Method::Flowmap, &[32, 32], &opts);
        let Student::FlowMap { net, .. } = &student else {
            panic!("not a flow map")
        };
        assert_jumps_match(net, &[(0.0, 1.0, 0.08), (0.0, 0.5, 0.08), (0.5, 1.0, 0.08)]);
    }
}
