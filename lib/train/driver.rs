//! The driver shared by `fit-velocity` (conditional flow matching, notes eq. 26/31, Algorithm 3)
//! and `fit-score` (denoising score matching, Theorem 22): the MLP of Lab 2 on (N, D) points, or
//! Lab 3's conditional networks ([`super::arch`]) on labelled points or images (N, C, H, W),
//! trained with label dropout for classifier-free guidance (notes Algorithm 5, see
//! [`super::losses`]).
//!
//! Order of work, as every tool: check the flags (usage errors, exit 2), read the data, the
//! source and the checkpoint and check them against each other (exit 1, naming the file),
//! then train (checkpoints and the log are written only from here) and write the model.
//!
//! **Resuming** (`--resume ckpt`) continues the run the checkpoint belongs to: the network,
//! path, parametrisation, optimiser settings, batch size, seed and EMA come from the
//! checkpoint's config, so a flag that contradicts them is a usage error; only `--steps` (the
//! new total), the outputs (`-o`, `--log`, which is appended to, `--checkpoint`) and the data
//! files are taken from the command line. Data of another dimension is refused; other data of
//! the same shape gets a warning (training goes on, but no longer repeats the original run).
//! A labelled run needs its labels again (`--labels`).
//!
//! `--sample-grid` draws samples of the model at each checkpoint step ([`super::preview`]).

use crate::cli::at_least_1;
use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::arch::{self, NetFlags};
use super::checkpoint::{self, TrainState};
use super::flags::{OptimFlags, RunFlags};
use super::losses::{ConditionalLoss, Dataset, Labels, Source};
use super::optim::{AdamWConfig, Decay, Schedule};
use super::preview::Preview;
use super::trainer;
use crate::cli::Common;
use crate::io::model::ModelFile;
use crate::io::npy::{self, shape_str};
use crate::nn;
use crate::paths::{GaussianPath, Param, Path, TimeDensity};
use crate::{usage_bail, Result};

pub use super::arch::DEFAULT_HIDDEN;
pub use super::flags::DEFAULT_LR;
pub const DEFAULT_BATCH: usize = 1000;
pub const DEFAULT_STEPS: u64 = 5000;

/// The `--path` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PathArg {
    /// alpha = t, beta = 1 - t
    Condot,
    /// alpha = t, beta = sqrt(1 - t) (the lab's)
    Sqrt,
    /// alpha = sin(pi t / 2), beta = cos(pi t / 2)
    Cosine,
    /// x_t = (1 - t) x_0 + t z, x_0 from --source or N(0, I)
    LinearInterp,
}

impl PathArg {
    pub fn path(self) -> Path {
        match self {
            PathArg::Condot => Path::Gaussian(GaussianPath::CONDOT),
            PathArg::Sqrt => Path::Gaussian(GaussianPath::SQRT),
            PathArg::Cosine => Path::Gaussian(GaussianPath::COSINE),
            PathArg::LinearInterp => Path::LinearInterpolant,
        }
    }
}

/// The flags both trainers share. Those that shape the run are optional so that a resumed run
/// can tell a contradiction from a default.
#[derive(clap::Args, Clone, Debug)]
pub struct FitFlags {
    /// Training data: (N, D) points or (N, C, H, W) images, .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// Class labels of the data, (N,) int64 in 0..K-1: trains a conditional model u(x | y)
    #[arg(long, value_name = "PATH")]
    pub labels: Option<String>,
    /// K, the number of classes [default: the largest label + 1]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    pub num_classes: Option<usize>,
    /// Probability eta of replacing a label by the null label, so that the model also learns
    /// u(x | null) for classifier-free guidance [default: 0.1 with --labels]
    #[arg(long, value_name = "ETA")]
    pub label_dropout: Option<f64>,
    #[command(flatten)]
    pub net: NetFlags,
    #[command(flatten)]
    pub optim: OptimFlags,
    /// Density of the training times t: `uniform`, `logit-normal[:M,S]` (sigmoid of N(M, S^2);
    /// M = 0, S = 1 without arguments) or `mode:S` (S in [-1, 1.75]; see flowpipe::paths::time)
    /// [default: uniform]
    #[arg(long, value_name = "DENSITY")]
    pub time_density: Option<TimeDensity>,
    /// Steps of linear learning-rate warm-up [default: 0]
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up: constant, or cosine decay to 0 at the last step
    /// [default: constant]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Minibatch size [default: 1000]
    #[arg(long, value_parser = at_least_1::<usize>)]
    pub batch: Option<usize>,
    /// Total optimiser steps [default: 5000, or the checkpoint's when resuming]
    #[arg(long, value_parser = at_least_1::<u64>)]
    pub steps: Option<u64>,
    #[command(flatten)]
    pub run: RunFlags,
    /// Draw samples of the model (EMA weights) as a PNG here at every --checkpoint-every steps
    /// and at the end: one row per class, from the same noise each time (images only)
    #[arg(long, value_name = "PATH")]
    pub sample_grid: Option<String>,
    /// Samples per row of --sample-grid
    #[arg(long, default_value_t = 8, value_name = "K", value_parser = at_least_1::<usize>)]
    pub grid_cols: usize,
    /// Euler steps of the --sample-grid samples
    #[arg(long, default_value_t = 20, value_name = "STEPS", value_parser = at_least_1::<usize>)]
    pub grid_steps: usize,
}

/// The default label dropout eta with --labels (the lab's).
pub const DEFAULT_LABEL_DROPOUT: f64 = 0.1;

/// What a tool trains: the model kind and its tool-specific choices (None: default/checkpoint).
pub struct FitSpec {
    /// `velocity` or `score`.
    pub kind: &'static str,
    pub param: Option<Param>,
    pub default_param: Param,
    pub path: Option<PathArg>,
    pub default_path: Path,
    /// `--source`: x_0 from a data set instead of N(0, I) (fit-velocity only).
    pub source: Option<String>,
}

/// Everything that defines a run, as stored in the model config.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    /// The architecture config (`arch`, `data_shape`, sizes, `num_classes`).
    net: Value,
    param: Param,
    path: Path,
    data_source: bool,
    opt: AdamWConfig,
    batch: usize,
    seed: u64,
    ema: Option<f64>,
    label_dropout: f64,
    time: TimeDensity,
}

/// Trains the model `spec` describes with `flags`; the shared body of both tools.
pub fn run(spec: FitSpec, flags: &FitFlags, common: &Common) -> Result<()> {
    let device = common.setup()?;
    check_flags(&spec, flags)?;
    let data = read_data(&flags.data, "data")?;
    let source = match &spec.source {
        Some(p) => Some(read_data(p, "source")?),
        None => None,
    };
    if let Some(s) = &source {
        if s.shape != data.shape {
            let mut want = vec![s.n];
            want.extend_from_slice(&data.shape);
            bail!(
                "expected source samples {} like the data, got {} in {}",
                shape_str(&want).replacen(&s.n.to_string(), "N", 1),
                shape_str(&[&[s.n][..], &s.shape].concat()),
                s.name
            );
        }
    }
    let labels = match &flags.labels {
        Some(p) => Some(read_labels(p, &data, flags.num_classes)?),
        None => None,
    };
    let ckpt = match &flags.run.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let plan = match &ckpt {
        Some(c) => resumed_plan(&spec, flags, common, c, &data, source.as_ref(), &labels)?,
        None => fresh_plan(&spec, flags, common, &data, source.is_some(), &labels)?,
    };
    let config = model_config(&spec, &plan, &data, source.as_ref(), labels.as_ref());
    let preview = match &flags.sample_grid {
        Some(path) => {
            let p = Preview {
                path: path.clone(),
                cols: flags.grid_cols,
                steps: flags.grid_steps,
                seed: plan.seed,
            };
            p.check_shape(&data.shape, &data.name)?;
            Some(p)
        }
        None => None,
    };

    let params = checkpoint::start_params(ckpt.as_ref(), plan.seed, &device);
    let net =
        nn::build(&config, &params).with_context(|| format!("building {}", config["arch"]))?;
    let mut state =
        TrainState::fresh_or_resumed(params, plan.opt.clone(), plan.ema, ckpt.as_ref())?;
    common.explain(format!(
        "{} parameters ({}); {} on the {} path, {} steps from step {}",
        state.params.count(),
        plan.net["arch"].as_str().unwrap_or("?"),
        plan.param.name(),
        plan.path.name(),
        plan.opt.schedule.total,
        state.step()
    ));

    let loss = ConditionalLoss {
        path: plan.path,
        target: plan.param,
        data,
        source: source.map_or(Source::Gaussian, Source::Data),
        batch: plan.batch,
        seed: plan.seed,
        device: device.clone(),
        labels,
        label_dropout: plan.label_dropout,
        time: plan.time,
    };
    loss.validate()?;
    let opts = flags
        .run
        .loop_options(plan.opt.schedule.total, common.quiet);
    let summary = trainer::run_with(
        &mut state,
        &config,
        &opts,
        &mut |step| loss.loss(net.as_ref(), step),
        &mut |state, _| match &preview {
            Some(p) => p.write(&config, state),
            None => Ok(()),
        },
    )?;
    checkpoint::save_model(&common.output, &config, &state)?;
    if summary.steps > 0 {
        common.say(format!(
            "{} steps in {:.1} s ({:.2} ms/step), final loss {:.4}",
            summary.steps,
            summary.seconds,
            1000.0 * summary.seconds / summary.steps as f64,
            summary.last_loss
        ));
    }
    Ok(())
}

/// Usage errors (exit 2): values no run can use, and choices that do not go together.
fn check_flags(spec: &FitSpec, f: &FitFlags) -> Result<()> {
    f.optim.check()?;
    f.run.check()?;
    if let Some(h) = &f.net.hidden {
        if h.is_empty() || h.contains(&0) {
            usage_bail!("--hidden must list positive widths, got {h:?}");
        }
    }
    if let Some(eta) = f.label_dropout {
        if !(0.0..1.0).contains(&eta) {
            usage_bail!("--label-dropout must be in [0, 1), got {eta}");
        }
    }
    if f.labels.is_none() && (f.label_dropout.is_some() || f.num_classes.is_some()) {
        usage_bail!("--label-dropout and --num-classes need --labels");
    }
    crate::io::check_output_opt(&f.sample_grid, true)?;
    if f.sample_grid.is_some() && spec.source.is_some() {
        usage_bail!("--sample-grid samples from N(0, I) noise; it does not go with --source");
    }
    arch::check_flags(&f.net)?;
    let path = spec_path(spec);
    match (path, &spec.source) {
        (Some(Path::Gaussian(_)), Some(_)) => usage_bail!(
            "--path {} starts from N(0, I); with --source use --path linear-interp",
            path.unwrap().name()
        ),
        (Some(Path::LinearInterpolant), _) if spec.kind == "score" => {
            usage_bail!("score matching needs a Gaussian path: --path condot, sqrt or cosine")
        }
        _ => {}
    }
    Ok(())
}

fn spec_path(spec: &FitSpec) -> Option<Path> {
    spec.path.map(PathArg::path)
}

/// Reads (N, ...) finite samples from `path` (the `--data` or `--source` file).
fn read_data(path: &str, what: &str) -> Result<Dataset> {
    let arr = npy::read_f32(path)?;
    let name = crate::io::display_name(path);
    if arr.ndim() < 2 {
        bail!(
            "expected {what} samples (N, D) or (N, C, H, W), got {} in {name}",
            shape_str(arr.shape())
        );
    }
    Dataset::new(arr, &name)
}

/// Reads the `--labels` file: one int64 label per data sample.
fn read_labels(path: &str, data: &Dataset, num_classes: Option<usize>) -> Result<Labels> {
    let arr = npy::read_i64(path)?;
    let name = crate::io::display_name(path);
    Labels::new(&arr, &name, data.n, &data.name, num_classes)
}

fn fresh_plan(
    spec: &FitSpec,
    f: &FitFlags,
    common: &Common,
    data: &Dataset,
    data_source: bool,
    labels: &Option<Labels>,
) -> Result<Plan> {
    let default_path = if data_source {
        Path::LinearInterpolant
    } else {
        spec.default_path
    };
    let schedule = Schedule {
        lr: f.optim.lr.unwrap_or(DEFAULT_LR),
        warmup: f.warmup.unwrap_or(0),
        decay: f.decay.unwrap_or(Decay::Constant),
        total: f.steps.unwrap_or(DEFAULT_STEPS),
    };
    let num_classes = labels.as_ref().map_or(0, |l| l.num_classes);
    Ok(Plan {
        net: arch::fresh_config(&f.net, data.n, &data.shape, num_classes, &data.name)?,
        param: spec.param.unwrap_or(spec.default_param),
        path: spec_path(spec).unwrap_or(default_path),
        data_source,
        opt: AdamWConfig::new(schedule, f.optim.weight_decay.unwrap_or(0.0)),
        batch: f.batch.unwrap_or(DEFAULT_BATCH),
        seed: common.seed,
        ema: f.optim.ema,
        label_dropout: match labels {
            Some(_) => f.label_dropout.unwrap_or(DEFAULT_LABEL_DROPOUT),
            None => 0.0,
        },
        time: f.time_density.unwrap_or(TimeDensity::Uniform),
    })
}

/// The model config: architecture, what it predicts, the path, and the training arguments.
fn model_config(
    spec: &FitSpec,
    plan: &Plan,
    data: &Dataset,
    source: Option<&Dataset>,
    labels: Option<&Labels>,
) -> Value {
    let about = |d: &Dataset| json!({"file": d.name, "n": d.n, "fingerprint": d.fingerprint()});
    let mut c = plan.net.clone();
    c["kind"] = json!(spec.kind);
    c["parametrisation"] = json!(plan.param.name());
    c["path"] = plan.path.to_json();
    c["source"] = json!(if plan.data_source { "data" } else { "gaussian" });
    c["ema"] = json!(plan.ema);
    c["train"] = json!({
        "loss": match plan.param {
            Param::Velocity => "conditional flow matching",
            Param::Score => "denoising score matching",
            _ => "denoising score matching, noise prediction",
        },
        "optimizer": serde_json::to_value(&plan.opt).unwrap_or(Value::Null),
        "batch": plan.batch,
        "seed": plan.seed,
        "data": about(data),
        "source": source.map(about),
        "labels": labels.map(|l| json!({"file": l.name, "fingerprint": l.fingerprint()})),
        "label_dropout": plan.label_dropout,
        "time_density": plan.time.name(),
    });
    c
}

/// The plan stored in a checkpoint, after checking the command line and data against it.
fn resumed_plan(
    spec: &FitSpec,
    f: &FitFlags,
    common: &Common,
    ckpt: &ModelFile,
    data: &Dataset,
    source: Option<&Dataset>,
    labels: &Option<Labels>,
) -> Result<Plan> {
    let r = checkpoint::Resumed::parse(ckpt, spec.kind, &format!("a {} model", spec.kind))?;
    let (name, m) = (r.name, r.model);
    let bad = |what: &str| r.bad(what);
    let mut net = m.clone();
    if let Some(o) = net.as_object_mut() {
        o.remove("train");
    }
    let mut plan = Plan {
        net,
        param: m["parametrisation"]
            .as_str()
            .and_then(Param::parse)
            .ok_or_else(|| bad("parametrisation"))?,
        path: Path::from_json(&m["path"]).map_err(|e| anyhow!("{name}: {e}"))?,
        data_source: m["source"].as_str() == Some("data"),
        opt: r.optimizer()?,
        batch: r.train_u64("batch")? as usize,
        seed: r.train_u64("seed")?,
        ema: m["ema"].as_f64(),
        label_dropout: m["train"]["label_dropout"].as_f64().unwrap_or(0.0),
        // Checkpoints from before the flag trained with uniform times.
        time: match m["train"]["time_density"].as_str() {
            None => TimeDensity::Uniform,
            Some(t) => t
                .parse()
                .map_err(|e| anyhow!("{name}: train.time_density: {e}"))?,
        },
    };
    let s = &plan.opt.schedule;
    for (flag, key, given, _) in arch::given(&f.net) {
        let saved = match (key, &plan.net[key]) {
            ("time_features", Value::Null) => json!(0),
            (_, v) => v.clone(),
        };
        checkpoint::same(flag, &Some(given), &saved, name)?;
    }
    let classes = arch::num_classes(&plan.net);
    match labels {
        None if classes > 0 => {
            usage_bail!("{name} was trained with labels ({classes} classes): give --labels")
        }
        Some(_) if classes == 0 => {
            usage_bail!("{name} was trained without labels: --labels does not apply")
        }
        Some(l) if l.num_classes != classes => bail!(
            "{} holds {} classes, but {name} was trained on {classes} (give --num-classes              {classes} if some are missing)",
            l.name,
            l.num_classes
        ),
        _ => {}
    }
    checkpoint::same("--num-classes", &f.num_classes, &classes, name)?;
    checkpoint::same(
        "--label-dropout",
        &f.label_dropout,
        &plan.label_dropout,
        name,
    )?;
    f.optim
        .check_resumed(s.lr, plan.opt.weight_decay, plan.ema, name)?;
    checkpoint::same("--warmup", &f.warmup, &s.warmup, name)?;
    checkpoint::same("--decay", &f.decay, &s.decay, name)?;
    checkpoint::same("--batch", &f.batch, &plan.batch, name)?;
    checkpoint::same(
        "--time-density",
        &f.time_density.map(|t| t.name()),
        &plan.time.name(),
        name,
    )?;
    checkpoint::same(
        "--param",
        &spec.param.map(Param::name),
        &plan.param.name(),
        name,
    )?;
    checkpoint::same(
        "--path",
        &spec_path(spec).map(|p| p.name()),
        &plan.path.name(),
        name,
    )?;
    // --seed 0 is the default: only another seed contradicts the checkpoint.
    let seed = (common.seed != 0).then_some(common.seed);
    checkpoint::same("--seed", &seed, &plan.seed, name)?;
    match (plan.data_source, source.is_some()) {
        (true, false) => usage_bail!("{name} was trained from a source data set: give --source"),
        (false, true) => usage_bail!("{name} was trained from N(0, I): --source does not apply"),
        _ => {}
    }
    r.continue_to(f.steps, &mut plan.opt)?;
    let want = arch::data_shape(&plan.net).unwrap_or_default();
    if data.shape != want {
        bail!(
            "expected data samples {} for the checkpoint {name}, got {} in {}",
            shape_str(&[&[data.n][..], &want].concat()).replacen(&data.n.to_string(), "N", 1),
            shape_str(&[&[data.n][..], &data.shape].concat()),
            data.name
        );
    }
    if let (Some(l), Some(saved)) = (labels, m["train"]["labels"]["fingerprint"].as_str()) {
        if l.fingerprint() != saved {
            common.say(format!(
                "warning: {} differs from the labels {name} was trained on; the run continues on the new labels",
                l.name
            ));
        }
    }
    let seen = [("data", Some(data)), ("source", source)];
    for (key, d) in seen {
        let saved = m["train"][key]["fingerprint"].as_str();
        if let (Some(d), Some(saved)) = (d, saved) {
            if d.fingerprint() != saved {
                common.say(format!(
                    "warning: {} differs from the {key} {name} was trained on; the run continues on the new {key}",
                    d.name
                ));
            }
        }
    }
    Ok(plan)
}
