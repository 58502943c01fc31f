//! Few-step sampling of a student, each method with its multistep schedule on t_k = k/K:
//! - a velocity model (a reflow student, or a teacher): Euler, x <- x + (1/K) u(x, t_k), with
//!   classifier-free guidance at scale w for a conditional model given labels (1 call per step;
//!   w != 1 stacks the conditional and null branches in that call);
//! - a flow map: x <- X(x, t_k, t_{k+1}) = x + (1/K) u(x, t_k, 1/K);
//! - a consistency model: x_1^ = f(x, t_k), then x <- alpha_{t_{k+1}} x_1^ + beta_{t_{k+1}} eps
//!   (see [`super::consistency`]); the last x_1^ is the sample.
//!
//! A flow map or consistency model trained from data with label dropout (`fit-velocity
//! --objective`) has a null-label branch, and guidance w mixes its network's two outputs by
//! notes eq. 65 (the average velocity u(x, t_k, 1/K), or F of f = x + (1 - t) F), as Frans et
//! al. guide their shortcut models; a distilled student's w was fixed when it was distilled.
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
use crate::guidance::{guided_velocity, ConditionalVelocity};
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
    /// A flow map; `guidance` w != 1 (a model trained from data with label dropout only) mixes
    /// its average velocity's branches as eq. 65 mixes velocities.
    FlowMap {
        net: TwoTime,
        data_shape: Vec<usize>,
        num_classes: usize,
        guidance: f64,
    },
    /// A consistency model; `guidance` as for the flow map, on F of f = x + (1 - t) F.
    Consistency {
        net: Box<dyn crate::nn::FieldNet>,
        path: GaussianPath,
        data_shape: Vec<usize>,
        num_classes: usize,
        guidance: f64,
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
        // A distilled student samples the field it was distilled from, at the teacher's w; a
        // few-step model trained from data with label dropout has both branches of CFG.
        let check_guidance = || -> Result<()> {
            if guidance == 1.0 {
                return Ok(());
            }
            if !config["distill"].is_null() {
                bail!(
                    "{}: a {} student samples the field it was distilled from (guidance {}); \
                     --guidance does not apply",
                    m.name,
                    m.kind(),
                    config["distill"]["guidance"]
                );
            }
            if num_classes == 0 || config["train"]["label_dropout"].as_f64().unwrap_or(0.0) <= 0.0 {
                bail!(
                    "{}: --guidance needs a model trained with labels and label dropout (the \
                     null label's branch); this one has none",
                    m.name
                );
            }
            Ok(())
        };
        match m.kind() {
            "flowmap" => {
                check_guidance()?;
                let params = Params::from_model(m, Weights::Auto, device)?;
                let net = TwoTime::new(config, &params)
                    .map_err(|e| anyhow!("loading {}: {e:#}", m.name))?;
                params.ensure_all_used()?;
                Ok(Student::FlowMap {
                    net,
                    data_shape: data_shape()?,
                    num_classes,
                    guidance,
                })
            }
            "consistency" => {
                check_guidance()?;
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
                    guidance,
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
        Student::FlowMap {
            net,
            num_classes,
            guidance,
            ..
        } => {
            for k in 0..steps {
                let s = k as f64 * h;
                x = match y {
                    Some(y) if *guidance != 1.0 => {
                        let branches = Branches::Jump {
                            net,
                            d: h,
                            num_classes: *num_classes,
                        };
                        let u = guided_velocity(&branches, &x, s, y, *guidance)?;
                        (&x + (u * h)?)?.detach()
                    }
                    _ => net
                        .jump(&x, &vec![s as f32; n], &vec![h as f32; n], y)?
                        .detach(),
                };
            }
        }
        Student::Consistency {
            net,
            path,
            num_classes,
            guidance,
            ..
        } => {
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
                x = match y {
                    Some(y) if *guidance != 1.0 => {
                        let branches = Branches::Field {
                            net: net.as_ref(),
                            num_classes: *num_classes,
                        };
                        let f = guided_velocity(&branches, &x, t as f64, y, *guidance)?;
                        (&x + (f * (1.0 - t as f64))?)?.detach()
                    }
                    _ => consistency_fn(net.as_ref(), &x, &vec![t; n], y)?.detach(),
                };
            }
        }
    }
    Ok(x)
}

/// A few-step model's network seen as a conditional velocity, so that classifier-free guidance
/// mixes its branches by the one formula ([`guided_velocity`], notes eq. 65): a flow map's
/// average velocity u(x, s, d) at a fixed jump d, or a consistency model's F(x, t).
enum Branches<'a> {
    Jump {
        net: &'a TwoTime,
        d: f64,
        num_classes: usize,
    },
    Field {
        net: &'a dyn crate::nn::FieldNet,
        num_classes: usize,
    },
}

impl ConditionalVelocity for Branches<'_> {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Branches::Jump { net, d, .. } => {
                let dd = Tensor::full(*d as f32, t.dims(), t.device())?.to_dtype(t.dtype())?;
                net.forward(x, t, &dd, Some(y))?
            }
            Branches::Field { net, .. } => net.forward(x, t, Some(y))?,
        })
    }
    fn num_classes(&self) -> usize {
        match self {
            Branches::Jump { num_classes, .. } | Branches::Field { num_classes, .. } => {
                *num_classes
            }
        }
    }
    fn gaussian_path(&self) -> Option<GaussianPath> {
        None
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
    fn describe(&self) -> String {
        "a few-step model".into()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A random conditional few-step model of `kind` with label dropout 0.1 (as from data).
    fn from_data(kind: &str) -> ModelFile {
        let mut c = json!({"arch": "cmlp", "data_shape": [2], "hidden": [16], "activation": "silu",
            "time_features": 4, "num_classes": 3, "label_embed_dim": 4});
        let params = Params::new(5, &Device::Cpu);
        if kind == "flowmap" {
            TwoTime::new(&c, &params).unwrap();
        } else {
            build(&c, &params).unwrap();
        }
        c["kind"] = json!(kind);
        c["path"] = Path::Gaussian(GaussianPath::CONDOT).to_json();
        c["train"] = json!({"label_dropout": 0.1});
        let bytes = model::encode(&c, &params.tensors()).unwrap();
        model::decode(&bytes, "m.safetensors", &Device::Cpu).unwrap()
    }

    #[test]
    fn guidance_mixes_a_few_step_models_branches_by_eq_65() {
        // One step of each kind at w = 2.5 against the same step written out from the two
        // branches: the flow map's x + h ((1 - w) u(x, 0, h | ∅) + w u(x, 0, h | y)), and the
        // consistency model's x + (1 - 0) ((1 - w) F(x, 0 | ∅) + w F(x, 0 | y)).
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.3f32, -1.2], [2.0, 0.5], [-0.7, 0.1]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 2, 1], &dev).unwrap();
        let null = Tensor::new(&[3u32, 3, 3], &dev).unwrap();
        let w = 2.5;
        let rows = |t: &Tensor| -> Vec<Vec<f32>> { t.to_vec2().unwrap() };
        for kind in ["flowmap", "consistency"] {
            let m = from_data(kind);
            let guided = Student::load(&m, w, &dev).unwrap();
            let got = rows(&sample(&guided, &x, 1, Some(&y), 0, 0).unwrap());
            let branch = |labels: &Tensor| -> Tensor {
                match &guided {
                    Student::FlowMap { net, .. } => {
                        net.jump(&x, &[0.0; 3], &[1.0; 3], Some(labels)).unwrap()
                    }
                    Student::Consistency { net, .. } => {
                        consistency_fn(net.as_ref(), &x, &[0.0; 3], Some(labels)).unwrap()
                    }
                    Student::Velocity { .. } => unreachable!(),
                }
            };
            // Both kinds' one step is x + (network output): mix the steps' increments.
            let (cond, uncond, x0) = (rows(&branch(&y)), rows(&branch(&null)), rows(&x));
            for i in 0..3 {
                for j in 0..2 {
                    let (dc, du) = (cond[i][j] - x0[i][j], uncond[i][j] - x0[i][j]);
                    let want = x0[i][j] as f64 + (1.0 - w) * du as f64 + w * dc as f64;
                    assert!(
                        (got[i][j] as f64 - want).abs() < 1e-5,
                        "{kind} [{i}][{j}]: {} against {want}",
                        got[i][j]
                    );
                }
            }
            // Unguided (w = 1) is the conditional branch itself.
            let plain = Student::load(&m, 1.0, &dev).unwrap();
            assert_eq!(
                rows(&sample(&plain, &x, 1, Some(&y), 0, 0).unwrap()),
                cond,
                "{kind}"
            );
        }
        // Without label dropout there is no unconditional branch to mix.
        let mut m = from_data("flowmap");
        m.config["train"]["label_dropout"] = json!(0.0);
        let e = Student::load(&m, w, &dev).err().unwrap().to_string();
        assert!(e.contains("label dropout"), "{e}");
    }
}
