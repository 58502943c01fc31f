//! Few-step generation by distillation (notes section 7): a trained velocity field (the
//! *teacher*) needs tens to hundreds of network evaluations (NFE) per sample; a *student*
//! trained from it gets good samples in one to four.
//!
//! Every method here learns from the same data: a **bank of teacher trajectories** ([`Bank`]),
//! M noise samples x_0 ~ N(0, I) carried by the teacher's ODE dX = u_t(X) dt (notes eq. 1,
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

pub mod consistency;
pub mod driver;
pub mod flowmap;
pub mod reflow;
pub mod sample;
pub mod train;

use anyhow::{anyhow, bail};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;

use crate::fields::{Field, GaussianTarget};
use crate::guidance::LabelledVelocity;
use crate::io::model::ModelFile;
use crate::nn::init::EMA_PREFIX;
use crate::nn::Learned;
use crate::rng::{self, Purpose};
use crate::solvers;
use crate::Result;

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

/// The ODE a bank is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TeacherSolver {
    /// 1 evaluation per step
    Euler,
    /// 2 evaluations per step, second order
    Heun,
}

/// A velocity field to distil: u_t(x | y), guided or not.
pub trait Teacher {
    /// u_t(x | y): x (N, ...data_shape), one time t for every row, y (N,) u32 labels or `None`
    /// (unconditional) -> (N, ...data_shape).
    fn velocity(&self, x: &Tensor, t: f64, y: Option<&Tensor>) -> Result<Tensor>;
    /// Classes the teacher is conditional on (0: unconditional).
    fn num_classes(&self) -> usize;
}

/// The exact field to N(m, s^2 I) (a closed-form teacher for tests); unconditional.
impl Teacher for GaussianTarget {
    fn velocity(&self, x: &Tensor, t: f64, _y: Option<&Tensor>) -> Result<Tensor> {
        Ok(GaussianTarget::velocity(self, x, t)?)
    }
    fn num_classes(&self) -> usize {
        0
    }
}

/// A trained velocity model; a conditional one guided at scale w (notes eq. 65, computed by
/// [`crate::guidance::guided_velocity`]), both branches in one call on [x; x].
pub struct LearnedTeacher {
    pub model: Learned,
    pub guidance: f64,
}

impl Teacher for LearnedTeacher {
    fn velocity(&self, x: &Tensor, t: f64, y: Option<&Tensor>) -> Result<Tensor> {
        let field = LabelledVelocity {
            model: &self.model,
            labels: y,
            scale: self.guidance,
        };
        field.velocity(x, t)
    }
    fn num_classes(&self) -> usize {
        self.model.num_classes()
    }
}

/// A teacher with its labels fixed, as the [`Field`] the solvers' steps integrate.
pub struct TeacherField<'a> {
    pub teacher: &'a dyn Teacher,
    /// (N,) u32 labels of the rows, for a conditional teacher.
    pub labels: Option<&'a Tensor>,
}

impl Field for TeacherField<'_> {
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        self.teacher
            .velocity(x, t, self.labels)
            .map_err(|e| candle_core::Error::msg(format!("{e:#}")))
    }
    fn diffusion(&self, _t: f64) -> f64 {
        0.0
    }
    fn describe(&self) -> String {
        "distillation teacher".into()
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
}

/// Teacher trajectories: `states` (M, N + 1, ...data_shape) at t_k = k / N, with one label per
/// trajectory for a conditional teacher.
pub struct Bank {
    pub states: Tensor,
    /// (M,) u32 labels, or `None` for an unconditional teacher.
    pub labels: Option<Tensor>,
    /// N, the teacher's steps.
    pub steps: usize,
    pub data_shape: Vec<usize>,
    /// The teacher's network evaluations spent on the bank.
    pub nfe: u64,
}

impl Bank {
    /// Runs `teacher` from M = `n` noise samples (row i from stream (seed, Noise, i)) over
    /// `steps` steps of `solver`, `chunk` trajectories at a time; `labels` (n,) when the teacher
    /// is conditional.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        teacher: &dyn Teacher,
        data_shape: &[usize],
        n: usize,
        steps: usize,
        solver: TeacherSolver,
        labels: Option<&[u32]>,
        seed: u64,
        chunk: usize,
        device: &Device,
    ) -> Result<Bank> {
        if n == 0 || steps == 0 {
            bail!("a bank needs at least one trajectory and one step");
        }
        let dim: usize = data_shape.iter().product();
        let h = 1.0 / steps as f64;
        let mut parts = Vec::new();
        let mut nfe = 0u64;
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.max(1).min(n - start);
            let noise = rng::normal_rows(seed, Purpose::Noise, start as u64, len, dim);
            let mut shape = vec![len];
            shape.extend_from_slice(data_shape);
            let mut x = Tensor::from_vec(noise, shape, device)?;
            let y = match labels {
                Some(l) => Some(Tensor::from_slice(&l[start..start + len], len, device)?),
                None => None,
            };
            let field = TeacherField {
                teacher,
                labels: y.as_ref(),
            };
            let mut states = vec![x.clone()];
            for k in 0..steps {
                let t = k as f64 * h;
                x = match solver {
                    TeacherSolver::Euler => solvers::euler_step(&field, &x, t, h),
                    TeacherSolver::Heun => solvers::heun_step(&field, &x, t, h),
                }?
                .detach();
                states.push(x.clone());
            }
            nfe += (len * steps * if solver == TeacherSolver::Heun { 2 } else { 1 }) as u64;
            parts.push(Tensor::stack(&states, 1)?);
        }
        let states = Tensor::cat(&parts, 0)?;
        let finite = states.abs()?.max_all()?.to_scalar::<f32>()?.is_finite();
        if !finite {
            bail!("the teacher's trajectories blew up (not finite)");
        }
        let labels = match labels {
            Some(l) => Some(Tensor::from_slice(&l[..n], n, device)?),
            None => None,
        };
        Ok(Bank {
            states,
            labels,
            steps,
            data_shape: data_shape.to_vec(),
            nfe,
        })
    }

    /// The number of trajectories M.
    pub fn len(&self) -> usize {
        self.states.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The states of trajectories `rows` at grid indices `ks` (one per row): (B, ...data_shape).
    pub fn at(&self, rows: &[usize], ks: &[usize]) -> Result<Tensor> {
        let t = self.steps + 1;
        let idx: Vec<u32> = rows
            .iter()
            .zip(ks)
            .map(|(&i, &k)| (i * t + k) as u32)
            .collect();
        let flat = self.states.flatten_to(1)?;
        let m = self.len();
        let flat = flat.reshape((m * t, ()))?;
        let picked = flat.index_select(&Tensor::new(idx, self.states.device())?, 0)?;
        let mut shape = vec![rows.len()];
        shape.extend_from_slice(&self.data_shape);
        Ok(picked.reshape(shape)?)
    }

    /// The labels of trajectories `rows` (B,) u32, when the teacher is conditional.
    pub fn labels_of(&self, rows: &[usize]) -> Result<Option<Tensor>> {
        match &self.labels {
            None => Ok(None),
            Some(l) => {
                let idx: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
                Ok(Some(l.index_select(&Tensor::new(idx, l.device())?, 0)?))
            }
        }
    }
}

/// `b` trajectory indices in 0..m for training step `step` (stream (seed, Shuffle, step)).
pub fn draw_rows(seed: u64, step: u64, b: usize, m: usize) -> Vec<usize> {
    use rand::Rng;
    let mut r = rng::stream(seed, Purpose::Shuffle, step);
    (0..b).map(|_| r.random_range(0..m)).collect()
}

/// One value per row, shaped (B, 1, ..., 1) to broadcast against x (B, ...).
pub fn per_row(values: &[f32], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Ok(Tensor::from_slice(values, shape, like.device())?.to_dtype(like.dtype())?)
}

/// A teacher's weights for a student to start from: the EMA weights when the file has them,
/// else the raw ones, by parameter name.
pub fn teacher_weights(model: &ModelFile) -> HashMap<String, Tensor> {
    let has_ema = model.tensors.keys().any(|k| k.starts_with(EMA_PREFIX));
    model
        .tensors
        .iter()
        .filter_map(|(k, v)| match (has_ema, k.strip_prefix(EMA_PREFIX)) {
            (true, Some(name)) => Some((name.to_string(), v.clone())),
            (false, None) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .filter(|(k, _)| !k.starts_with("adam."))
        .collect()
}

/// The teacher's weights reshaped for a student whose parameters have `shapes` (from a fresh
/// build): equal shapes are copied; an axis one longer than the teacher's (the flow map's extra
/// input channel, appended after the `channels` data channels) gets a zero slice inserted at
/// index `channels`, so the extra input starts with no effect. A parameter that fits neither
/// way keeps its fresh initialisation and is listed in the second value.
pub fn init_from_teacher(
    teacher: &HashMap<String, Tensor>,
    shapes: &[(String, Vec<usize>)],
    fresh: &HashMap<String, Tensor>,
    channels: usize,
) -> Result<(HashMap<String, Tensor>, Vec<String>)> {
    let mut out = HashMap::new();
    let mut fresh_names = Vec::new();
    for (name, shape) in shapes {
        let fresh_t = fresh
            .get(name)
            .ok_or_else(|| anyhow!("no fresh value for {name}"))?;
        let Some(t) = teacher.get(name) else {
            fresh_names.push(name.clone());
            out.insert(name.clone(), fresh_t.clone());
            continue;
        };
        match pad_to(t, shape, channels)? {
            Some(p) => {
                out.insert(name.clone(), p);
            }
            None => {
                fresh_names.push(name.clone());
                out.insert(name.clone(), fresh_t.clone());
            }
        }
    }
    Ok((out, fresh_names))
}

/// `t` grown to `shape` by inserting a zero slice at index `at` of every axis that is one
/// longer; `None` when the shapes differ otherwise.
fn pad_to(t: &Tensor, shape: &[usize], at: usize) -> Result<Option<Tensor>> {
    if t.dims() == shape {
        return Ok(Some(t.clone()));
    }
    if t.rank() != shape.len() {
        return Ok(None);
    }
    let mut t = t.clone();
    for (axis, &want) in shape.iter().enumerate() {
        let have = t.dim(axis)?;
        if have == want {
            continue;
        }
        if want != have + 1 || at > have {
            return Ok(None);
        }
        let mut zshape = t.dims().to_vec();
        zshape[axis] = 1;
        let zeros = Tensor::zeros(zshape, t.dtype(), t.device())?;
        let head = t.narrow(axis, 0, at)?;
        let tail = t.narrow(axis, at, have - at)?;
        t = Tensor::cat(&[&head, &zeros, &tail], axis)?;
    }
    Ok(Some(t))
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
mod tests {
    use super::*;
    use crate::paths::GaussianPath;

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

    #[test]
    fn padding_inserts_a_zero_slice_at_the_data_channels() {
        let t = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
        let p = pad_to(&t, &[3, 4], 2).unwrap().unwrap();
        assert_eq!(
            p.to_vec2::<f32>().unwrap(),
            vec![
                vec![1.0, 2.0, 0.0, 3.0],
                vec![4.0, 5.0, 0.0, 6.0],
                vec![0.0, 0.0, 0.0, 0.0]
            ]
        );
        assert!(pad_to(&t, &[2, 5], 2).unwrap().is_none());
    }
}
