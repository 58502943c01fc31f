//! Few-step sampling of a student, each method with its multistep schedule on t_k = k/K:
//! - a velocity model (a reflow student, or a teacher): Euler, x <- x + (1/K) u(x, t_k), with
//!   classifier-free guidance at scale w for a conditional model given labels (1 call per step;
//!   w != 1 stacks the conditional and null branches in that call);
//! - a flow map: x <- X(x, t_k, t_{k+1}) = x + (1/K) u(x, t_k, 1/K);
//! - a consistency model: x_1^ = f(x, t_k), then x <- alpha_{t_{k+1}} x_1^ + beta_{t_{k+1}} eps
//!   (see [`super::consistency`]); the last x_1^ is the sample.
//!
//! Sample i's re-noising draws come from stream (seed, Brownian, first + i), so a sample never
//! depends on how the set is split into batches.

use anyhow::{anyhow, bail};
use candle_core::{DType, Device, Tensor};
use ndarray::ArrayD;
use serde_json::Value;

use super::consistency::consistency_fn;
use super::flowmap::TwoTime;
use super::{Bank, Teacher, TeacherField, TeacherSolver};
use crate::device::{from_tensor, to_tensor};
use crate::fields::LabelledVelocity;
use crate::io::model::{self, ModelFile};
use crate::nn::{build, Learned, Params, Weights};
use crate::paths::{GaussianPath, Path};
use crate::rng::{self, Purpose};
use crate::solvers;
use crate::train::checkpoint::TrainState;
use crate::Result;

/// The model kinds [`Student::load`] accepts.
pub const KINDS: [&str; 5] = ["velocity", "score", "checkpoint", "flowmap", "consistency"];

/// A loaded few-step sampler.
pub enum Student {
    /// A velocity model sampled with Euler, guided at `guidance` when given labels.
    Velocity { model: Learned, guidance: f64 },
    FlowMap {
        net: TwoTime,
        data_shape: Vec<usize>,
        num_classes: usize,
    },
    Consistency {
        net: Box<dyn crate::nn::FieldNet>,
        path: GaussianPath,
        data_shape: Vec<usize>,
        num_classes: usize,
    },
}

impl Student {
    /// From a model file (EMA weights when it has them): a velocity, score or checkpoint file
    /// (Euler, with CFG scale `guidance` for labelled samples), a flow map or a consistency
    /// model (`guidance` must then be 1: the student's w is fixed when distilled).
    pub fn load(m: &ModelFile, guidance: f64, device: &Device) -> Result<Student> {
        m.expect_kind(&KINDS)?;
        let config = &m.config;
        let data_shape = || -> Result<Vec<usize>> {
            crate::train::arch::data_shape(config)
                .ok_or_else(|| anyhow!("{}: bad data_shape {}", m.name, config["data_shape"]))
        };
        let num_classes = crate::train::arch::num_classes(config);
        let not_guided = || -> Result<()> {
            if guidance != 1.0 {
                bail!(
                    "{}: a {} student samples the field it was distilled from (guidance {}); \
                     --guidance does not apply",
                    m.name,
                    m.kind(),
                    config["distill"]["guidance"]
                );
            }
            Ok(())
        };
        match m.kind() {
            "flowmap" => {
                not_guided()?;
                let params = Params::from_model(m, Weights::Auto, device)?;
                let net = TwoTime::new(config, &params)
                    .map_err(|e| anyhow!("loading {}: {e:#}", m.name))?;
                params.ensure_all_used()?;
                Ok(Student::FlowMap {
                    net,
                    data_shape: data_shape()?,
                    num_classes,
                })
            }
            "consistency" => {
                not_guided()?;
                let path = Path::from_json(&config["path"])
                    .ok()
                    .and_then(|p| p.as_gaussian(true))
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: consistency sampling re-noises along a Gaussian path, found {}",
                            m.name,
                            config["path"]
                        )
                    })?;
                let params = Params::from_model(m, Weights::Auto, device)?;
                let net =
                    build(config, &params).map_err(|e| anyhow!("loading {}: {e:#}", m.name))?;
                params.ensure_all_used()?;
                Ok(Student::Consistency {
                    net,
                    path,
                    data_shape: data_shape()?,
                    num_classes,
                })
            }
            _ => Ok(Student::Velocity {
                model: Learned::load(m, Weights::Auto, device)?,
                guidance,
            }),
        }
    }

    /// The trained `state` of a student with `config` (as [`Student::load`] of the
    /// file it would be saved to).
    pub fn from_state(config: &Value, state: &TrainState, device: &Device) -> Result<Student> {
        let bytes = model::encode(config, &state.model_tensors())?;
        Student::load(&model::decode(&bytes, "student", device)?, 1.0, device)
    }

    /// The shape of one sample.
    pub fn data_shape(&self) -> Vec<usize> {
        match self {
            Student::Velocity { model, .. } => model.data_shape.clone(),
            Student::FlowMap { data_shape, .. } | Student::Consistency { data_shape, .. } => {
                data_shape.clone()
            }
        }
    }

    /// Classes of a conditional model (0: unconditional).
    pub fn num_classes(&self) -> usize {
        match self {
            Student::Velocity { model, .. } => model.num_classes(),
            Student::FlowMap { num_classes, .. } | Student::Consistency { num_classes, .. } => {
                *num_classes
            }
        }
    }

    /// A bank of this (velocity) student's own Euler trajectories, e.g. to measure its
    /// straightness ([`super::reflow::straightness`]).
    pub fn bank(&self, n: usize, steps: usize, seed: u64, device: &Device) -> Result<Bank> {
        Bank::generate(
            self,
            &self.data_shape(),
            n,
            steps,
            TeacherSolver::Euler,
            None,
            seed,
            n,
            device,
        )
    }
}

impl Teacher for Student {
    fn velocity(&self, x: &Tensor, t: f64, y: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Student::Velocity { model, guidance } => LabelledVelocity {
                model,
                labels: y,
                scale: *guidance,
            }
            .velocity(x, t),
            _ => bail!("only a velocity model is a field to integrate"),
        }
    }
    fn num_classes(&self) -> usize {
        Student::num_classes(self)
    }
    fn init_std(&self) -> f64 {
        match self {
            Student::Velocity { model, .. } => model.init_std(),
            _ => 1.0,
        }
    }
}

/// K = `steps` steps of `student` from x0 (N, ...data_shape) with labels y (N,) u32 (for a
/// conditional student); `first` is the index of x0's first sample (re-noising streams).
pub fn sample(
    student: &Student,
    x0: &Tensor,
    steps: usize,
    y: Option<&Tensor>,
    seed: u64,
    first: u64,
) -> Result<Tensor> {
    if steps == 0 {
        bail!("sampling needs at least one step");
    }
    let n = x0.dim(0)?;
    let h = 1.0 / steps as f64;
    let mut x = x0.clone();
    match student {
        Student::Velocity { .. } => {
            let field = TeacherField {
                teacher: student,
                labels: y,
            };
            for k in 0..steps {
                x = solvers::euler_step(&field, &x, k as f64 * h, h)?.detach();
            }
        }
        Student::FlowMap { net, .. } => {
            for k in 0..steps {
                let s = vec![(k as f64 * h) as f32; n];
                x = net.jump(&x, &s, &vec![h as f32; n], y)?.detach();
            }
        }
        Student::Consistency { net, path, .. } => {
            let dim: usize = x0.dims()[1..].iter().product();
            let noise = renoising(seed, first, n, dim, steps.saturating_sub(1));
            for k in 0..steps {
                let t = (k as f64 * h) as f32;
                if k > 0 {
                    let c = path.coefs(t as f64);
                    let eps = Tensor::from_slice(&noise[k - 1], x0.dims(), x0.device())?
                        .to_dtype(x0.dtype())?;
                    x = ((&x * c.alpha)? + (eps * c.beta)?)?;
                }
                x = consistency_fn(net.as_ref(), &x, &vec![t; n], y)?.detach();
            }
        }
    }
    Ok(x)
}

/// The re-noising draws of samples first..first + n: `steps` blocks of (n, dim) normals, sample
/// i's values from its own stream (seed, Brownian, first + i), block k after block k - 1.
fn renoising(seed: u64, first: u64, n: usize, dim: usize, steps: usize) -> Vec<Vec<f32>> {
    let mut blocks = vec![vec![0f32; n * dim]; steps];
    let mut row = vec![0f32; dim];
    for i in 0..n {
        let mut r = rng::stream(seed, Purpose::Brownian, first + i as u64);
        for block in blocks.iter_mut() {
            rng::fill_normal(&mut r, &mut row);
            block[i * dim..(i + 1) * dim].copy_from_slice(&row);
        }
    }
    blocks
}

/// [`sample`] on an f32 array x0 (N, ...) in batches of at most `batch` samples, with labels
/// (N,) for a conditional student; the result does not depend on `batch`.
#[allow(clippy::too_many_arguments)]
pub fn sample_batched(
    student: &Student,
    x0: &ArrayD<f32>,
    steps: usize,
    labels: Option<&[u32]>,
    seed: u64,
    first: u64,
    batch: usize,
    device: &Device,
) -> Result<ArrayD<f32>> {
    let n = x0.shape()[0];
    let batch = batch.clamp(1, n.max(1));
    let mut parts = Vec::new();
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let part = x0.slice_axis(ndarray::Axis(0), ndarray::Slice::from(start..start + len));
        let x = to_tensor(&part.to_owned(), device)?;
        let y = match labels {
            Some(l) => Some(Tensor::from_slice(&l[start..start + len], len, device)?),
            None => None,
        };
        let out = sample(student, &x, steps, y.as_ref(), seed, first + start as u64)?;
        parts.push(from_tensor(&out.to_dtype(DType::F32)?)?);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    Ok(ndarray::concatenate(ndarray::Axis(0), &views)?)
}
