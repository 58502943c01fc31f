//! MeanFlow models trained from data, without a teacher (Geng, Deng, Bai, Kolter & He 2025,
//! "Mean Flows for One-step Generative Modeling", arXiv 2505.13447; notes section 7):
//! `fit-velocity --objective meanflow`.
//!
//! The network is a shortcut model's, u(x, s, d) with the jump d = t - s as one more input
//! channel ([`crate::distill::flowmap::TwoTime`]), read as the average velocity of the flow over
//! the jump, X(x_s, s, s + d) = x_s + d u(x_s, s, d); the file is a `flowmap` model that
//! `sample-fewstep` samples with K jumps of 1/K. What differs from [`super::shortcut`] is the
//! target: an identity that holds at every (s, t), not one that composes two half jumps.
//!
//! **The MeanFlow identity in our time convention** (t = 0 noise, t = 1 data; Geng et al. run
//! time the other way, from data at 0 to noise at 1, and jump from the later time back). Let
//! x_tau follow the marginal flow, dx_tau/dtau = v(x_tau, tau), and
//!
//! ```text
//!     U(x_s, s, t) = 1/(t - s) * integral_s^t v(x_tau, tau) dtau,     s <= t,
//! ```
//! the average velocity from the noisier end s to t, so that X(x_s, s, t) = x_s + (t - s) U.
//! Move the start s along the trajectory with t fixed: the integral loses its lower end and
//! nothing else (the trajectory through x_s at s is the same curve), so
//!
//! ```text
//!     d/ds [ (t - s) U(x_s, s, t) ] = -v(x_s, s)   =>   -U + (t - s) dU/ds = -v
//!     =>   U = v(x_s, s) + (t - s) dU/ds.
//! ```
//! With the network's arguments u(x, s, d), d = t - s, the total derivative along the
//! trajectory moves (x, s, d) along (v, 1, -1):
//!
//! ```text
//!     dU/ds = (d_x u) v + d_s u - d_d u,
//! ```
//! a Jacobian-vector product of u with the tangent (v, 1, -1). (Geng et al.'s
//! u = v - (t - r) du/dt is the same identity seen from the other end.) Training regresses u on
//! the right side with the current weights held fixed, and, as Geng et al., with the path's
//! conditional velocity v_cond = alpha'_s z + beta'_s eps in place of the marginal v in both
//! places (the regression's minimiser is then the marginal one, as for flow matching):
//!
//! ```text
//!     u_tgt = sg( v_cond + d * JVP ),     loss = mean over the batch of w ||u(x_s, s, d) - u_tgt||^2
//! ```
//! summed over a sample's coordinates, as the flow matching loss. At d = 0 the target is v_cond:
//! plain flow matching.
//!
//! **Times.** Two draws from the run's time density (`--time-density`; stream (seed, Time,
//! step)), s the smaller and t the larger; for a share 1 - [`RATIO`] of the rows t is set to s
//! (d = 0, flow matching). Geng et al.'s best ablation has r != t for 25% of the rows, and their
//! code fixes that count per batch rather than drawing it row by row: so do we (the last
//! round(B * RATIO) rows), which also lets the JVP be computed for those rows alone. The x_s
//! come from the same draw of data, source, noise, labels (with dropout) and pairing as flow
//! matching ([`super::losses::ConditionalLoss::batch_at`]).
//!
//! **The JVP by a central finite difference** (not forward mode: candle has none, and reverse
//! mode would need one backward pass per output coordinate). Along the tangent,
//!
//! ```text
//!     JVP ~ ( u(x + h v, s + h, d - h) - u(x - h v, s - h, d + h) ) / (2h),
//! ```
//! two forward passes without a graph (detached, as the stop-gradient asks anyway). Its error
//! is h^2/6 times u's third derivative along the tangent (truncation) plus about
//! eps_f32 |u| / h (rounding, eps_f32 = 1.2e-7). For derivatives of order one the sum is
//! smallest near h = eps^(1/3) ~ 5e-3, and we take h = [`FD_STEP`] = 1e-2 (truncation and
//! rounding both ~1e-5 relative). But u varies in s as fast as its fastest time feature: the
//! MLP's Fourier features sin(2 pi k t), k <= K (`--time-features K`), scale the truncation
//! error by (2 pi K)^2, so [`fd_step`] shrinks h to 3e-3 / K, keeping 2 pi K h ~ 0.02.
//! The unit test `finite_difference_jvp_matches_the_exact_one` compares it with the exact JVP
//! (reverse mode, one backward pass per output coordinate) on 2D points and bounds the error at
//! 1e-3 of the JVP's rms; measured 2026-12-07, relative rms errors of h against the exact JVP
//! for the default MLP (4 x 64, K = 0) and a 2 x 64 MLP with K = 4, at random weights:
//!
//! ```text
//!     h       3e-2    1e-2    5e-3    3e-3    2e-3    1e-3    5e-4    2e-4
//!     K = 0   1.2e-4  5.7e-5  1.2e-4  2.3e-4  2.9e-4  6.2e-4  1.3e-3  2.9e-3
//!     K = 4   7.8e-2  9.0e-3  2.3e-3  8.1e-4  3.6e-4  9.7e-5  4.8e-5  1.1e-4
//! ```
//! ([`fd_step`]: 1e-2 for K = 0; 7.5e-4 for K = 4, error 5.3e-5 there.) For a DiT, whose
//! sinusoidal features cos/sin(S t omega_k) reach the angular frequency S (the config's
//! `time_scale`), `finite_difference_jvp_on_a_dit_matches_the_exact_one` measured, on a random
//! 2-block DiT: 8.8e-4 at the default S = 1000 (h = 1.9e-5, near the rounding floor) and 2.1e-4
//! at S = 1 (h = 1e-2). Near s = 0 or d = 0 the stencil leaves [0, 1] by h: the network is
//! smooth there and the difference stays a derivative of it, not of the data.
//!
//! **Slow time features for a DiT.** The regression is a fixed-point iteration: the target is
//! v + d du/ds of the current network. A part of u that oscillates in s as sin(omega s) comes
//! back in the target amplified by d omega, so every frequency omega > 1/d feeds itself. The
//! MLPs (raw t, or K <= 4 harmonics) and the U-Net (learned frequencies near 2 pi) stay below
//! that, but the DiT's default features reach omega = 1000: trained so on the main job's
//! latents (at f2c27f4) the loss rose from 550 to 3,000-5,000 while a shortcut model's fell to
//! 97, and one jump gave classifier-FID 337. A MeanFlow DiT is therefore built with
//! [`DIT_TIME_SCALE`] = 1 unless `--time-scale` says otherwise (the features then vary on the
//! scale of t itself; the flow-matching rows still resolve t through the time MLP). So built
//! (measured 2026-12-08 at 546cb2a, `make distill-latent`'s recipe, 2 cores of an AMD EPYC), the
//! loss fell from 448 to 167, and classifier-FID / guided accuracy at 1, 2, 4 jumps were
//! 195 / 83%, 110 / 97%, 93 / 98% (shortcut from data: 207 / 81%, 76 / 90%, 63 / 95%).
//!
//! **Adaptive weight.** Geng et al. weight each row by w = sg(1 / (||Delta||^2 + c)^p), c = 1e-3,
//! p = 1 their best (a robust loss close to ||Delta||); p = 0 is the plain squared error. On
//! the checkerboard p = 0 is better, so [`ADAPTIVE_P`] = 0: measured 2026-12-07 on 2 cores of
//! an AMD EPYC at 0473b0c (release; p switched by a temporary variable), MLP 4 x 64, 3000
//! steps, batch 512, lr 1e-3, lab 2's checkerboard (20,000 points, seed 2), energy distance of
//! 2,000 samples to 2,000 held-out points, for training seeds 4 / 5 / 6:
//!
//! ```text
//!                     1 jump                   2 jumps                  4 jumps
//!     MeanFlow p = 0  0.0168 0.0129 0.0117     0.0035 0.0028 0.0155     0.0055 0.0022 0.0207
//!     MeanFlow p = 1  0.0347 0.0538 0.0132     0.0117 0.0241 0.0202     0.0218 0.0263 0.0472
//!     shortcut        0.0128 0.0134 0.0072     0.0120 0.0134 0.0055     0.0094 0.0052 0.0060
//!     flow matching, Euler: 1 step 1.98 2.07 2.04, 2 steps 0.81 0.87 0.96, 100 steps 0.0013 (4)
//! ```

use candle_core::{Tensor, D};
use serde_json::Value;

use super::losses::ConditionalLoss;
use crate::distill::flowmap::TwoTime;
use crate::rng::{self, Purpose};

/// The share of each batch with t != s (Geng et al.'s best ablation, 25%); the rest is plain
/// flow matching at d = 0.
pub const RATIO: f64 = 0.25;

/// The step h of the finite-difference JVP for networks whose time features vary on the scale
/// of 1 (see the module header).
pub const FD_STEP: f64 = 1e-2;

/// The step h of the finite-difference JVP for the network of `config`: [`FD_STEP`], shrunk to
/// keep 2 pi f h ~ 0.02 for the fastest time frequency f of the architecture (the MLPs'
/// `time_features` K: f = K; DiT's sinusoidal features of time scale S: f = S / (2 pi); the
/// U-Net's learned Fourier frequencies start as N(0, 1) draws: f = 3, three standard
/// deviations).
pub fn fd_step(config: &Value) -> f64 {
    let fastest = match config["arch"].as_str() {
        Some("mlp" | "cmlp") => config["time_features"].as_u64().unwrap_or(0) as f64,
        Some("dit") => {
            let scale = config["time_scale"].as_f64();
            scale.unwrap_or(crate::nn::embed::DEFAULT_TIME_SCALE) / std::f64::consts::TAU
        }
        Some("unet") => 3.0,
        _ => 0.0,
    };
    FD_STEP.min(3e-3 / fastest)
}

/// The time scale S of a MeanFlow DiT's sinusoidal features unless `--time-scale` names
/// another: the features vary on the scale of t itself (see the module header).
pub const DIT_TIME_SCALE: f64 = 1.0;

/// The power p of the adaptive weight w = sg(1 / (||Delta||^2 + c)^p).
pub const ADAPTIVE_P: f64 = 0.0;

/// The constant c of the adaptive weight (Geng et al.'s 1e-3).
pub const ADAPTIVE_C: f64 = 1e-3;

/// The JVP of u along (v, 1, -1) at (x, s, d) by a central difference of step `h`, detached:
/// x and v (N, ...), s and d (N,) values, y (N,) labels -> (N, ...).
pub fn jvp_fd(
    net: &TwoTime,
    x: &Tensor,
    v: &Tensor,
    s: &[f32],
    d: &[f32],
    y: Option<&Tensor>,
    h: f64,
) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let dev = x.device();
    let shift = |sign: f64| -> candle_core::Result<Tensor> {
        let k = sign * h;
        let xs = (x + (v * k)?)?;
        let ss: Vec<f32> = s.iter().map(|&s| (s as f64 + k) as f32).collect();
        let ds: Vec<f32> = d.iter().map(|&d| (d as f64 - k) as f32).collect();
        net.forward(
            &xs,
            &Tensor::from_vec(ss, n, dev)?.to_dtype(x.dtype())?,
            &Tensor::from_vec(ds, n, dev)?.to_dtype(x.dtype())?,
            y,
        )
    };
    let up = shift(1.0)?.detach();
    let down = shift(-1.0)?.detach();
    (up - down)?.affine(0.5 / h, 0.0)
}

/// The MeanFlow loss of step `step`: the mean over the batch of (weighted) ||u - u_tgt||^2
/// summed over a sample's coordinates; `h` the JVP's step ([`fd_step`] of the network's config).
pub fn loss(net: &TwoTime, cl: &ConditionalLoss, step: u64, h: f64) -> candle_core::Result<Tensor> {
    let b = cl.batch;
    let n_mf = ((b as f64 * RATIO).round() as usize).min(b.saturating_sub(1));
    let n_fm = b - n_mf;
    // Two times per row from the run's density; s the smaller, t the larger (rows below n_fm:
    // t = s).
    let mut draws = vec![0f32; 2 * b];
    cl.time
        .fill(&mut rng::stream(cl.seed, Purpose::Time, step), &mut draws);
    let (a, c) = draws.split_at(b);
    let s: Vec<f32> = a.iter().zip(c).map(|(a, c)| a.min(*c)).collect();
    let d: Vec<f32> = a
        .iter()
        .zip(c)
        .enumerate()
        .map(|(i, (a, c))| if i < n_fm { 0.0 } else { (a - c).abs() })
        .collect();
    let ts: Vec<f64> = s.iter().map(|&s| s as f64).collect();
    let batch = cl.batch_at(step, &ts)?;
    let dev = batch.x.device().clone();
    let y = batch.y.as_ref();

    let mut target = batch.target.clone();
    if n_mf > 0 {
        let x = batch.x.narrow(0, n_fm, n_mf)?;
        let v = batch.target.narrow(0, n_fm, n_mf)?;
        let ym = y.map(|y| y.narrow(0, n_fm, n_mf)).transpose()?;
        let (sm, dm) = (&s[n_fm..], &d[n_fm..]);
        let jvp = jvp_fd(net, &x, &v, sm, dm, ym.as_ref(), h)?;
        let mut shape = vec![n_mf];
        shape.extend(std::iter::repeat_n(1, x.rank() - 1));
        let dcol = Tensor::from_slice(dm, shape, &dev)?.to_dtype(x.dtype())?;
        let tgt = (v + jvp.broadcast_mul(&dcol)?)?;
        target = Tensor::cat(&[&batch.target.narrow(0, 0, n_fm)?, &tgt], 0)?;
    }
    let target = target.detach();
    let pred = net.forward(
        &batch.x,
        &Tensor::from_slice(&s, b, &dev)?,
        &Tensor::from_slice(&d, b, &dev)?,
        y,
    )?;
    // ||Delta||^2 per row: (B,).
    let sq = (pred - target)?.sqr()?.flatten_from(1)?.sum(D::Minus1)?;
    let sq = if ADAPTIVE_P > 0.0 {
        let w = (sq.detach() + ADAPTIVE_C)?.powf(-ADAPTIVE_P)?.detach();
        (sq * w)?
    } else {
        sq
    };
    sq.sum_all()?.affine(1.0 / b as f64, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::tests::assert_jumps_match;
    use crate::paths::TimeDensity;
    use crate::train::testing::{gaussian_problem, small_mlp, train};
    use candle_core::{Device, Var};

    /// The exact JVP of u along (v, 1, -1) by reverse mode: the rows of an MLP are independent,
    /// so the gradient of the sum over the batch of output column i is each row's gradient of
    /// u_i with respect to its own x, s and d.
    fn jvp_exact(net: &TwoTime, x: &Tensor, v: &Tensor, s: &[f32], d: &[f32]) -> Tensor {
        let n = x.dim(0).unwrap();
        let dev = x.device();
        let xv = Var::from_tensor(x).unwrap();
        let sv = Var::from_tensor(&Tensor::from_slice(s, n, dev).unwrap()).unwrap();
        let dv = Var::from_tensor(&Tensor::from_slice(d, n, dev).unwrap()).unwrap();
        let out = net
            .forward(xv.as_tensor(), sv.as_tensor(), dv.as_tensor(), None)
            .unwrap();
        let flat = out.flatten_from(1).unwrap();
        let mut cols = Vec::new();
        for i in 0..flat.dim(1).unwrap() {
            let g = flat
                .narrow(1, i, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gx = g.get(xv.as_tensor()).unwrap();
            let gs = g.get(sv.as_tensor()).unwrap();
            let gd = g.get(dv.as_tensor()).unwrap();
            let col = ((gx * v)
                .unwrap()
                .flatten_from(1)
                .unwrap()
                .sum_keepdim(1)
                .unwrap()
                + (gs - gd).unwrap().reshape((n, 1)).unwrap())
            .unwrap();
            cols.push(col);
        }
        Tensor::cat(&cols, 1).unwrap().reshape(out.dims()).unwrap()
    }

    /// rms of `a - b` over the rms of `b`.
    fn relative_rms(a: &Tensor, b: &Tensor) -> f64 {
        let err = (a - b).unwrap().sqr().unwrap().mean_all().unwrap();
        let scale = b.sqr().unwrap().mean_all().unwrap();
        (err.to_scalar::<f32>().unwrap() as f64 / scale.to_scalar::<f32>().unwrap() as f64).sqrt()
    }

    #[test]
    fn finite_difference_jvp_matches_the_exact_one() {
        // The default MLP (4 x 64, SiLU) and one with Fourier time features, whose higher
        // derivatives in s are larger, at random weights, points, velocities and times.
        let n = 128;
        let x = Tensor::from_vec(
            rng::normal_rows(1, Purpose::Misc, 0, n, 2)
                .iter()
                .map(|v| 1.5 * v)
                .collect::<Vec<f32>>(),
            (n, 2),
            &Device::Cpu,
        )
        .unwrap();
        let v = Tensor::from_vec(
            rng::normal_rows(1, Purpose::Misc, 1, n, 2),
            (n, 2),
            &Device::Cpu,
        )
        .unwrap();
        let mut times = vec![0f32; 2 * n];
        TimeDensity::Uniform.fill(&mut rng::stream(1, Purpose::Time, 0), &mut times);
        let (a, c) = times.split_at(n);
        let s: Vec<f32> = a.iter().zip(c).map(|(a, c)| a.min(*c)).collect();
        let d: Vec<f32> = a.iter().zip(c).map(|(a, c)| (a - c).abs()).collect();
        let configs = [(vec![64; 4], 0), (vec![64, 64], 4)].map(|(hidden, time_features)| {
            crate::nn::MlpConfig {
                dim: 2,
                hidden,
                activation: crate::nn::Activation::Silu,
                time_features,
            }
            .to_json()
        });
        // The labelled MLP's harmonics need the same smaller step (its null label here).
        let cmlp = serde_json::json!({"arch": "cmlp", "data_shape": [2], "hidden": [64, 64],
            "activation": "silu", "time_features": 4, "num_classes": 3, "label_embed_dim": 4});
        for config in configs.into_iter().chain([cmlp]) {
            let time_features = &config["time_features"];
            let params = crate::nn::Params::new(3, &Device::Cpu);
            let net = TwoTime::new(&config, &params).unwrap();
            let exact = jvp_exact(&net, &x, &v, &s, &d);
            let h = fd_step(&config);
            let fd = jvp_fd(&net, &x, &v, &s, &d, None, h).unwrap();
            let err = relative_rms(&fd, &exact);
            // Measured 2026-12-07: 5.7e-5 (K = 0, h = 1e-2) and 5.3e-5 (K = 4, h = 7.5e-4); the
            // table of other h is in the module header.
            assert!(err < 1e-3, "time features {time_features}: {err}");
        }
    }

    #[test]
    fn finite_difference_jvp_on_a_dit_matches_the_exact_one() {
        // A small DiT, at the default time scale and at MeanFlow's, with every weight drawn at
        // random (adaLN-Zero's zero gates would make the output constant in s), 2 x 4 x 4
        // samples.
        for (scale, bound) in [(1000.0, 2e-3), (DIT_TIME_SCALE, 1e-3)] {
            let config = crate::nn::DitConfig {
                data_shape: [2, 4, 4],
                patch_size: 2,
                width: 32,
                depth: 2,
                heads: 2,
                num_classes: 0,
                mlp_ratio: 2,
                time_features: 64,
                time_scale: scale,
                activation: crate::nn::FfActivation::Silu,
                text: None,
            }
            .to_json();
            let params = crate::nn::Params::new(3, &Device::Cpu);
            let net = TwoTime::new(&config, &params).unwrap();
            for (i, (_, var)) in params.vars().into_iter().enumerate() {
                let fan = *var.dims().last().unwrap_or(&1) as f32;
                let w: Vec<f32> = rng::normal_rows(5, Purpose::Misc, i as u64, 1, var.elem_count())
                    .iter()
                    .map(|v| v / fan.sqrt())
                    .collect();
                var.set(&Tensor::from_vec(w, var.dims(), &Device::Cpu).unwrap())
                    .unwrap();
            }
            let n = 8;
            let draw = |k| {
                let v = rng::normal_rows(1, Purpose::Misc, k, n, 32);
                Tensor::from_vec(v, (n, 2, 4, 4), &Device::Cpu).unwrap()
            };
            let (x, v) = (draw(0), draw(1));
            let mut times = vec![0f32; 2 * n];
            TimeDensity::Uniform.fill(&mut rng::stream(1, Purpose::Time, 0), &mut times);
            let (a, c) = times.split_at(n);
            let s: Vec<f32> = a.iter().zip(c).map(|(a, c)| a.min(*c)).collect();
            let d: Vec<f32> = a.iter().zip(c).map(|(a, c)| (a - c).abs()).collect();
            let exact = jvp_exact(&net, &x, &v, &s, &d);
            let fd = jvp_fd(&net, &x, &v, &s, &d, None, fd_step(&config)).unwrap();
            let err = relative_rms(&fd, &exact);
            // Measured 2026-12-08: 8.8e-4 at S = 1000 (h = 1.9e-5) and 2.1e-4 at S = 1
            // (h = 1e-2).
            assert!(err < bound, "time scale {scale}: {err}");
        }
    }

    #[test]
    fn a_meanflow_model_from_data_learns_the_gaussian_flow_map() {
        // Data from N((2, -1), 0.5^2 I) only, no teacher: the jumps 0 -> 1, 0 -> 1/2 and
        // 1/2 -> 1 must match the closed-form flow map of CondOT to N(0, I).
        let cl = gaussian_problem();
        let (config, params) = small_mlp();
        let net = TwoTime::new(&config, &params).unwrap();
        // The target's variance (v_cond enters it twice) needs more steps than the shortcut
        // model's 1500: at 1500 the jumps to t = 1 are still off by 0.12-0.13, at 4000 by
        // 0.10-0.16, at 8000 by 0.035 (0 -> 1), 0.009 (0 -> 1/2) and 0.029 (1/2 -> 1); about 14 s
        // in a debug build.
        let h = fd_step(&config);
        train(params, &config, 8000, 3e-3, &mut |step| {
            loss(&net, &cl, step, h)
        });
        assert_jumps_match(
            &net,
            &[(0.0, 1.0, 0.08), (0.0, 0.5, 0.05), (0.5, 1.0, 0.08)],
        );
    }
}
