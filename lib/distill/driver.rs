//! The `distill` tool's work, from a teacher model file to a trained student: check the
//! teacher, make the bank of its (guided) trajectories, start the student from the teacher's
//! weights, train, and describe it all in the student's config.

use anyhow::{anyhow, bail};
use candle_core::Device;
use serde_json::{json, Value};

use super::train::{student_config, StudentNet, TrainOptions};
use super::{init_from_teacher, teacher_weights, Bank, LearnedTeacher, Method};
use super::{Teacher, TeacherSolver};
use crate::io::model::ModelFile;
use crate::nn::{Learned, Params, Weights};
use crate::paths::Path;
use crate::train::checkpoint::TrainState;
use crate::Result;

/// How the bank of teacher trajectories is made.
#[derive(Clone, Debug)]
pub struct BankOptions {
    /// M, the number of trajectories.
    pub trajectories: usize,
    /// N, the teacher's steps from t = 0 to 1.
    pub steps: usize,
    pub solver: TeacherSolver,
    /// Classifier-free guidance scale w of a conditional teacher (`None`: 1, the conditional
    /// field).
    pub guidance: Option<f64>,
    /// Trajectories integrated at once.
    pub chunk: usize,
}

/// A trained student: its config (for the model file) and weights.
pub struct Distilled {
    pub config: Value,
    pub state: TrainState,
    /// Student parameters that could not start from the teacher's (fresh initialisation).
    pub fresh: Vec<String>,
    pub bank_nfe: u64,
}

/// The teacher's model config (a checkpoint's `"model"`), after checking it is a velocity model.
pub fn teacher_config(m: &ModelFile) -> Result<Value> {
    let kind = match m.kind() {
        "checkpoint" => m.field("model")?["kind"].as_str().unwrap_or("unknown"),
        k => k,
    };
    if kind != "velocity" {
        bail!(
            "{}: expected a velocity model as the teacher (from fit-velocity), found a {kind} model",
            m.name
        );
    }
    Ok(match m.kind() {
        "checkpoint" => m.field("model")?.clone(),
        _ => m.config.clone(),
    })
}

/// Distils `teacher` (a loaded model file) into a `method` student.
pub fn distill(
    teacher: &ModelFile,
    method: Method,
    bank_opts: &BankOptions,
    opts: &TrainOptions,
    device: &Device,
    say: &dyn Fn(String),
) -> Result<Distilled> {
    let tconfig = teacher_config(teacher)?;
    let model = Learned::load(teacher, Weights::Auto, device)?;
    let name = teacher.name.clone();
    let classes = model.num_classes();
    if classes == 0 && bank_opts.guidance.is_some() {
        bail!("{name}: the teacher is unconditional (no labels): --guidance does not apply");
    }
    if method == Method::Consistency && model.path.as_gaussian(model.gaussian_source).is_none() {
        bail!(
            "{name}: consistency sampling re-noises along a Gaussian path; the teacher's is {}",
            model.path.name()
        );
    }
    let data_shape = model.data_shape.clone();
    let path: Path = model.path;
    let guidance = bank_opts.guidance.unwrap_or(1.0);
    let labels: Option<Vec<u32>> = (classes > 0).then(|| {
        (0..bank_opts.trajectories)
            .map(|i| (i % classes) as u32)
            .collect()
    });
    let t = LearnedTeacher { model, guidance };
    say(format!(
        "teacher {name}: {} trajectories of {} {:?} steps{}",
        bank_opts.trajectories,
        bank_opts.steps,
        bank_opts.solver,
        if classes > 0 {
            format!(", guided at w = {guidance}, labels 0..{classes} in turn")
        } else {
            String::new()
        }
    ));
    let bank = Bank::generate(
        &t as &dyn Teacher,
        &data_shape,
        bank_opts.trajectories,
        bank_opts.steps,
        bank_opts.solver,
        labels.as_deref(),
        opts.seed,
        bank_opts.chunk,
        device,
    )?;
    let about = json!({
        "teacher": name,
        "guidance": if classes > 0 { json!(guidance) } else { Value::Null },
        "teacher_steps": bank_opts.steps,
        "teacher_solver": format!("{:?}", bank_opts.solver).to_lowercase(),
        "trajectories": bank_opts.trajectories,
        "bank_nfe": bank.nfe,
        "straightness_teacher": super::reflow::straightness(&bank)?,
        "train": {
            "steps": opts.steps, "batch": opts.batch, "lr": opts.lr, "warmup": opts.warmup,
            "decay": format!("{:?}", opts.decay).to_lowercase(), "ema": opts.ema, "seed": opts.seed,
            "time_density": opts.time.name(),
        },
    });
    let config = student_config(method, &tconfig, &path, about);
    let (params, fresh) = student_params(method, &config, teacher, &data_shape, opts.seed, device)?;
    let state = super::train::train(method, &config, params, &bank, opts)?;
    let mut config = config;
    if method == Method::Reflow {
        // Reflow's promise: straighter paths. Measured on the student's own Euler trajectories
        // from the first M' noise samples (same labels), M' = min(M, 512).
        let m = bank_opts.trajectories.min(512);
        let student = super::Student::from_state(&config, &state, device)?;
        let own = Bank::generate(
            &student,
            &data_shape,
            m,
            bank_opts.steps,
            TeacherSolver::Euler,
            labels.as_deref().map(|l| &l[..m]),
            opts.seed,
            bank_opts.chunk,
            device,
        )?;
        let s = super::reflow::straightness(&own)?;
        say(format!(
            "straightness: teacher {}, student {s}",
            config["distill"]["straightness_teacher"]
        ));
        config["distill"]["straightness_student"] = json!(s);
    }
    Ok(Distilled {
        config,
        state,
        fresh,
        bank_nfe: bank.nfe,
    })
}

/// The student's starting weights: the teacher's, padded for the flow map's extra channel.
fn student_params(
    method: Method,
    config: &Value,
    teacher: &ModelFile,
    data_shape: &[usize],
    seed: u64,
    device: &Device,
) -> Result<(Params, Vec<String>)> {
    let fresh = Params::new(seed, device);
    StudentNet::build(method, config, &fresh)
        .map_err(|e| anyhow!("building the student of {}: {e:#}", teacher.name))?;
    let shapes: Vec<(String, Vec<usize>)> = fresh
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let fresh_values = fresh.tensors().into_iter().collect();
    let (init, fresh_names) = init_from_teacher(
        &teacher_weights(teacher),
        &shapes,
        &fresh_values,
        data_shape[0],
    )?;
    Ok((
        Params::from_tensors(init, "", &teacher.name, device),
        fresh_names,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::flowmap::TwoTime;
    use crate::io::model;
    use crate::nn::{build, time_column, DitConfig, FfActivation, MlpConfig};
    use crate::paths::GaussianPath;
    use candle_core::Tensor;

    /// A teacher file with fresh weights for the architecture `arch`.
    fn teacher_file(arch: Value) -> ModelFile {
        let mut config = arch;
        config["kind"] = json!("velocity");
        config["parametrisation"] = json!("velocity");
        config["path"] = Path::Gaussian(GaussianPath::CONDOT).to_json();
        let params = Params::new(7, &Device::Cpu);
        build(&config, &params).unwrap();
        let bytes = model::encode(&config, &params.tensors()).unwrap();
        model::decode(&bytes, "teacher.safetensors", &Device::Cpu).unwrap()
    }

    /// A flow-map student started from its teacher is the teacher's field for every jump d:
    /// the extra channel's weights start at zero, the rest are copied.
    fn starts_as_the_teacher(arch: Value, x: Tensor, y: Option<Tensor>) {
        let dev = Device::Cpu;
        let t = teacher_file(arch);
        let config = student_config(
            Method::Flowmap,
            &t.config,
            &Path::Gaussian(GaussianPath::CONDOT),
            json!({}),
        );
        let shape = crate::train::arch::data_shape(&config).unwrap();
        let (params, fresh) =
            student_params(Method::Flowmap, &config, &t, &shape, 1, &dev).unwrap();
        assert!(fresh.is_empty(), "fresh parameters: {fresh:?}");
        let student = TwoTime::new(&config, &params).unwrap();
        let teacher = build(
            &t.config,
            &Params::from_model(&t, Weights::Raw, &dev).unwrap(),
        )
        .unwrap();
        let n = x.dim(0).unwrap();
        let s = Tensor::new(0.3f32, &dev).unwrap();
        let want = teacher
            .forward(&x, &time_column(&s, n).unwrap(), y.as_ref())
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 1e-3, "the teacher's output is trivially zero");
        for d in [0.0f32, 0.25, 1.0] {
            let got = student
                .forward(
                    &x,
                    &time_column(&s, n).unwrap(),
                    &Tensor::full(d, n, &dev).unwrap(),
                    y.as_ref(),
                )
                .unwrap();
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5 * scale.max(1.0), "d = {d}: off by {diff}");
        }
    }

    #[test]
    fn a_flow_map_student_starts_as_its_mlp_teacher() {
        let arch = MlpConfig {
            dim: 2,
            hidden: vec![16, 16],
            activation: crate::nn::Activation::Silu,
            time_features: 2,
        }
        .to_json();
        let x = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.3], [0.0, 1.5]], &Device::Cpu).unwrap();
        starts_as_the_teacher(arch, x, None);
    }

    #[test]
    fn a_flow_map_student_starts_as_its_dit_teacher() {
        let arch = DitConfig {
            data_shape: [4, 4, 4],
            patch_size: 1,
            width: 16,
            depth: 1,
            heads: 2,
            num_classes: 3,
            mlp_ratio: 2,
            time_features: 16,
            time_scale: 1000.0,
            activation: FfActivation::Silu,
            text: None,
        }
        .to_json();
        let v = crate::rng::normal_rows(1, crate::rng::Purpose::Misc, 0, 2, 64);
        let x = Tensor::from_vec(v, (2, 4, 4, 4), &Device::Cpu).unwrap();
        let y = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        starts_as_the_teacher(arch, x, Some(y));
    }
}
