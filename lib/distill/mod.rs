//! Few-step generation by distillation (notes section 7): a trained velocity field (the
//! *teacher*) needs tens to hundreds of network evaluations (NFE) per sample; a *student*
//! trained from it gets good samples in one to four.
//!
//! Every method here learns from the same data: a **bank of teacher trajectories** ([`Bank`]),
//! M noise samples x_0 ~ p_init (N(0, I), or N(0, 50^2 I) for a VE teacher) carried by the
//! teacher's ODE dX = u_t(X) dt (notes eq. 1,
//! Algorithm 1) on the uniform grid t_k = k / N, every state kept (M, N + 1, ...). Distillation
//! needs no data set: the teacher's own ODE is the target. A conditional teacher is guided
//! while the bank is made (classifier-free guidance, notes eq. 65, at a fixed scale w, one label
//! per trajectory), so the student learns the guided field at that w, conditional on the label.
//!
//! The methods, one module each (each opens with its equation and paper):
//! - [`reflow`]: rectified flow (Liu et al. 2022): a velocity refitted on the straight couplings
//!   (x_0, x_1 = teacher ODE(x_0)); its trajectories are straighter, so Euler with few steps
//!   works. The student is a plain `velocity` model every tool can use.
//! - [`flowmap`]: a flow map X(x_s, s, t) = x_s + (t - s) u(x_s, s, t - s) that jumps from time
//!   s to t, trained with the shortcut self-consistency identity (Frans et al. 2024).
//! - [`consistency`]: consistency distillation (Song et al. 2023), f(x_t, t) -> x_1 for every
//!   point of a teacher trajectory, boundary f(x, 1) = x.
//!
//! Students reuse the teacher's architecture and start from its weights ([`init_from_teacher`];
//! the flow map's extra input starts at zero weight, so each student starts as the teacher's
//! Euler step). [`train`] runs the shared training loop ([`crate::train::trainer`]), [`sample`]
//! draws from any student (or from a velocity model with Euler) with each method's multistep
//! schedule.

pub mod bank;
pub mod consistency;
pub mod driver;
pub mod flowmap;
pub mod init;
pub mod reflow;
pub mod sample;
pub mod train;

use anyhow::anyhow;
use candle_core::Tensor;
use serde_json::Value;

use crate::Result;

pub use bank::{draw_index, draw_rows, Bank, LearnedTeacher, Teacher, TeacherField, TeacherSolver};
pub use init::{init_from_teacher, teacher_weights};
pub use sample::{sample, Student};
pub use train::{train, TrainOptions};

/// The distillation methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Rectified flow: refit a velocity on (noise, teacher output) pairs
    Reflow,
    /// Flow map / shortcut model: u(x, s, d) jumps from s to s + d
    Flowmap,
    /// Consistency distillation: f(x_t, t) maps a trajectory point to its end
    Consistency,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Reflow => "reflow",
            Method::Flowmap => "flowmap",
            Method::Consistency => "consistency",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        [Method::Reflow, Method::Flowmap, Method::Consistency]
            .into_iter()
            .find(|m| m.name() == s)
    }

    /// The kind of the student's model file: reflow's student is a plain velocity model.
    pub fn kind(self) -> &'static str {
        match self {
            Method::Reflow => "velocity",
            Method::Flowmap => "flowmap",
            Method::Consistency => "consistency",
        }
    }

    /// The sampling schedule written into the student's config.
    pub fn schedule(self) -> &'static str {
        match self {
            Method::Reflow => "Euler on t_k = k/K: x <- x + (1/K) v(x, t_k)",
            Method::Flowmap => "jumps on t_k = k/K: x <- x + (1/K) u(x, t_k, 1/K)",
            Method::Consistency => {
                "multistep consistency on t_k = k/K: x1 = f(x, t_k), x <- alpha_{t_k+1} x1 + \
                 beta_{t_k+1} eps"
            }
        }
    }
}

/// One value per row, shaped (B, 1, ..., 1) to broadcast against x (B, ...).
pub fn per_row(values: &[f32], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Ok(Tensor::from_slice(values, shape, like.device())?.to_dtype(like.dtype())?)
}

/// The config entry `distill` of a student file: method, teacher, guidance, schedule.
pub fn distill_config(config: &Value, name: &str) -> Result<(Method, Value)> {
    let d = &config["distill"];
    let method = d["method"]
        .as_str()
        .and_then(Method::parse)
        .ok_or_else(|| anyhow!("{name}: the model config has no distill.method"))?;
    Ok((method, d.clone()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fields::GaussianTarget;
    use crate::paths::GaussianPath;
    use crate::rng::{self, Purpose};
    use candle_core::Device;

    /// The closed-form flow map of N(0, I) -> N(m, s^2 I) on CondOT: the marginal at t is
    /// N(t m, sd_t^2 I) with sd_t^2 = t^2 s^2 + (1 - t)^2, and the ODE, an affine isotropic
    /// field, carries x_s to m_t + (sd_t / sd_s)(x_s - m_s).
    pub fn gaussian_flow_map(mean: &[f64], std: f64, x: &[f64], s: f64, t: f64) -> Vec<f64> {
        let sd = |u: f64| (u * u * std * std + (1.0 - u) * (1.0 - u)).sqrt();
        x.iter()
            .zip(mean)
            .map(|(&xi, &m)| t * m + sd(t) / sd(s) * (xi - s * m))
            .collect()
    }

    /// The Gaussian teacher of the closed-form tests: N(0, I) -> N((2, -1), 0.5^2 I) on CondOT.
    pub fn gaussian_teacher() -> GaussianTarget {
        GaussianTarget {
            mean: vec![2.0, -1.0],
            std: 0.5,
            path: GaussianPath::CONDOT,
            sigma: 0.0,
        }
    }

    /// A student of [`gaussian_teacher`] trained by `method` (an MLP with `hidden` widths) on a
    /// bank of 2048 Heun trajectories of 16 steps.
    pub fn gaussian_student(
        method: Method,
        hidden: &[usize],
        opts: &train::TrainOptions,
    ) -> sample::Student {
        let dev = Device::Cpu;
        let g = gaussian_teacher();
        let bank =
            Bank::generate(&g, &[2], 2048, 16, TeacherSolver::Heun, None, 1, 2048, &dev).unwrap();
        let cfg = crate::nn::MlpConfig {
            dim: 2,
            hidden: hidden.to_vec(),
            activation: crate::nn::Activation::Silu,
            time_features: 0,
        };
        let config = train::student_config(
            method,
            &cfg.to_json(),
            &crate::paths::Path::Gaussian(GaussianPath::CONDOT),
            serde_json::json!({}),
        );
        let params = crate::nn::Params::new(opts.seed, &dev);
        let state = train::train(method, &config, params, &bank, opts).unwrap();
        sample::Student::from_state(&config, &state, &dev).unwrap()
    }

    /// 256 points of N(0, I) (stream `seed`) carried to time s by the closed-form flow:
    /// (the points, as a (256, 2) tensor).
    pub fn points_at(seed: u64, s: f64) -> (Vec<Vec<f64>>, Tensor) {
        let g = gaussian_teacher();
        let x = rng::normal_rows(seed, Purpose::Misc, 0, 256, 2);
        let start: Vec<Vec<f64>> = x
            .chunks(2)
            .map(|p| {
                let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
                gaussian_flow_map(&g.mean, g.std, &p, 0.0, s)
            })
            .collect();
        let flat: Vec<f32> = start.iter().flatten().map(|&v| v as f32).collect();
        (
            start,
            Tensor::from_vec(flat, (256, 2), &Device::Cpu).unwrap(),
        )
    }

    /// The rms error per coordinate of `got` (rows) against the closed-form flow of `start`
    /// from s to t.
    pub fn rms_against_closed_form(start: &[Vec<f64>], got: &Tensor, s: f64, t: f64) -> f64 {
        let g = gaussian_teacher();
        let rows: Vec<Vec<f32>> = got.to_vec2().unwrap();
        let mut err = 0.0;
        for (p, row) in start.iter().zip(&rows) {
            let want = gaussian_flow_map(&g.mean, g.std, p, s, t);
            err += want
                .iter()
                .zip(row)
                .map(|(w, &v)| (w - v as f64).powi(2))
                .sum::<f64>();
        }
        (err / (2 * start.len()) as f64).sqrt()
    }

    /// Asserts that each jump (s, t) of `net`, from 256 points carried to s by the closed-form
    /// flow, lands within rms `tol` of the closed-form flow map. An untrained or Euler jump from
    /// 0 to 1 is off by about 0.5 per coordinate (the map scales each axis by sd_1 / sd_0 = 0.5),
    /// so tolerances below that need the map learned.
    pub fn assert_jumps_match(net: &super::flowmap::TwoTime, cases: &[(f64, f64, f64)]) {
        for &(s, t, tol) in cases {
            let (start, xs) = points_at(11, s);
            let got = net
                .jump(&xs, &[s as f32; 256], &[(t - s) as f32; 256], None)
                .unwrap();
            let rmse = rms_against_closed_form(&start, &got, s, t);
            assert!(rmse < tol, "jump {s} -> {t}: rms error {rmse}");
        }
    }

    #[test]
    fn bank_follows_the_closed_form_flow() {
        let g = GaussianTarget {
            mean: vec![2.0, -1.0],
            std: 0.5,
            path: GaussianPath::CONDOT,
            sigma: 0.0,
        };
        let bank = Bank::generate(
            &g,
            &[2],
            50,
            32,
            TeacherSolver::Heun,
            None,
            3,
            16,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(bank.states.dims(), &[50, 33, 2]);
        assert_eq!(bank.nfe, 50 * 32 * 2);
        let rows: Vec<usize> = (0..50).collect();
        let x0: Vec<Vec<f32>> = bank.at(&rows, &[0; 50]).unwrap().to_vec2().unwrap();
        let x1: Vec<Vec<f32>> = bank.at(&rows, &[32; 50]).unwrap().to_vec2().unwrap();
        for (a, b) in x0.iter().zip(&x1) {
            let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
            let want = gaussian_flow_map(&g.mean, g.std, &a, 0.0, 1.0);
            for (w, &got) in want.iter().zip(b) {
                // Heun's error with 32 steps on this smooth field is far below 1e-3.
                assert!((w - got as f64).abs() < 1e-3, "{want:?} vs {b:?}");
            }
        }
        // Noise row i is the same however the bank is chunked.
        let again = Bank::generate(
            &g,
            &[2],
            50,
            32,
            TeacherSolver::Heun,
            None,
            3,
            50,
            &Device::Cpu,
        )
        .unwrap();
        let d = (again.states - &bank.states)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6);
    }

    /// Grid indices at times of a density: uniform ones as random_range draws them (the bytes
    /// of runs before --time-density), Esser et al.'s mode:1.29 about twice as often in the
    /// middle half as at the ends.
    #[test]
    fn grid_indices_follow_the_time_density() {
        use crate::paths::TimeDensity;
        use rand::Rng;
        let n = 16;
        let mut a = rng::stream(1, Purpose::Time, 0);
        let mut b = rng::stream(1, Purpose::Time, 0);
        for _ in 0..100 {
            assert_eq!(
                draw_index(&mut a, &TimeDensity::Uniform, n),
                b.random_range(0..n)
            );
        }
        let mode = TimeDensity::Mode { s: 1.29 };
        let draws = 20_000;
        let middle = (0..draws)
            .map(|_| draw_index(&mut a, &mode, n))
            .inspect(|&k| assert!(k < n))
            .filter(|&k| (4..12).contains(&k))
            .count() as f64
            / draws as f64;
        // P(1/4 <= t < 3/4) under the density, from its CDF.
        let want = mode.cdf(0.75) - mode.cdf(0.25);
        assert!(want > 0.65, "{want}");
        assert!((middle - want).abs() < 0.02, "{middle} vs {want}");
    }
}
