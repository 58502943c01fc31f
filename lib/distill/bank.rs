//! The bank of teacher trajectories every distillation method learns from (see the module
//! docs of [`crate::distill`]): M noise samples carried by the teacher's ODE on the uniform grid
//! t_k = k / N, every state kept, with the solvers' Euler or Heun steps.

use anyhow::bail;
use candle_core::{Device, Tensor};

use crate::fields::LabelledVelocity;
use crate::fields::{Field, GaussianTarget};
use crate::nn::Learned;
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::solvers;
use crate::Result;

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
    /// The std of its p_init N(0, std^2 I), where trajectories start: 1, or sigma_max of a VE
    /// path.
    fn init_std(&self) -> f64 {
        1.0
    }
}

/// The exact field to N(m, s^2 I) (a closed-form teacher for tests); unconditional.
impl Teacher for GaussianTarget {
    fn velocity(&self, x: &Tensor, t: f64, _y: Option<&Tensor>) -> Result<Tensor> {
        Ok(GaussianTarget::velocity(self, x, t)?)
    }
    fn num_classes(&self) -> usize {
        0
    }
    fn init_std(&self) -> f64 {
        self.path.init_std()
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
    fn init_std(&self) -> f64 {
        self.model.init_std()
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
    /// Runs `teacher` from M = `n` noise samples of its p_init (row i from stream (seed, Noise,
    /// i), times [`Teacher::init_std`]) over
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
            let sd = teacher.init_std() as f32;
            let mut noise = rng::normal_rows(seed, Purpose::Noise, start as u64, len, dim);
            noise.iter_mut().for_each(|v| *v *= sd);
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

/// A grid index in 0..count at a time drawn from `time` (`--time-density`): uniform indices
/// as `random_range` draws them (the bytes of runs before the flag), else floor(F^{-1}(u)
/// count) from one uniform u of `r` ([`TimeDensity::quantile`]).
pub fn draw_index(r: &mut impl rand::Rng, time: &TimeDensity, count: usize) -> usize {
    match time {
        TimeDensity::Uniform => r.random_range(0..count),
        d => ((d.quantile(r.random::<f64>()) * count as f64) as usize).min(count - 1),
    }
}

/// `b` trajectory indices in 0..m for training step `step` (stream (seed, Shuffle, step)).
pub fn draw_rows(seed: u64, step: u64, b: usize, m: usize) -> Vec<usize> {
    use rand::Rng;
    let mut r = rng::stream(seed, Purpose::Shuffle, step);
    (0..b).map(|_| r.random_range(0..m)).collect()
}
