//! The driver shared by `fit-velocity` (conditional flow matching, notes eq. 26/31, Algorithm 3)
//! and `fit-score` (denoising score matching, Theorem 22): the MLP of Lab 2 trained on (N, D)
//! points.
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

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use super::checkpoint::{self, TrainState};
use super::ema::Ema;
use super::losses::{ConditionalLoss, Dataset, Source};
use super::optim::{AdamW, AdamWConfig, Decay, Schedule};
use super::trainer::{self, LoopOptions};
use crate::cli::Common;
use crate::io::model::ModelFile;
use crate::io::npy::{self, shape_str};
use crate::nn::{self, Activation, MlpConfig, Params};
use crate::paths::{GaussianPath, Param, Path};
use crate::{usage_bail, Result};

/// Default hidden widths of the MLP.
pub const DEFAULT_HIDDEN: [usize; 4] = [64, 64, 64, 64];
pub const DEFAULT_LR: f64 = 1e-3;
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
    /// Training data: (N, D) points, .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// Hidden layer widths, comma separated [default: 64,64,64,64]
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    pub hidden: Option<Vec<usize>>,
    /// K Fourier features sin/cos(2 pi k t), k = 1..K, appended to [x, t] [default: 0]
    #[arg(long, value_name = "K")]
    pub time_features: Option<usize>,
    /// Peak learning rate [default: 1e-3]
    #[arg(long, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Steps of linear learning-rate warm-up [default: 0]
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up: constant, or cosine decay to 0 at the last step
    /// [default: constant]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Decoupled weight decay (AdamW); 0 is Adam [default: 0]
    #[arg(long, allow_hyphen_values = true)]
    pub weight_decay: Option<f64>,
    /// Minibatch size [default: 1000]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Total optimiser steps [default: 5000, or the checkpoint's when resuming]
    #[arg(long)]
    pub steps: Option<u64>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999); saved
    /// as ema.<name> and used for sampling [default: off]
    #[arg(long, value_name = "DECAY", allow_hyphen_values = true)]
    pub ema: Option<f64>,
    /// Write the loss curve as JSON lines {step, loss, lr, time_s} (`-`: stderr)
    #[arg(long, value_name = "PATH")]
    pub log: Option<String>,
    /// Steps between log lines
    #[arg(long, default_value_t = 100, value_name = "K")]
    pub log_every: u64,
    /// Write a checkpoint here every --checkpoint-every steps and at the end; `{step}` in the
    /// name is replaced by the step count
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<String>,
    /// Steps between checkpoints
    #[arg(long, default_value_t = 1000, value_name = "K")]
    pub checkpoint_every: u64,
    /// Continue the run a checkpoint belongs to (weights, optimiser moments, EMA, step)
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<String>,
}

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
    mlp: MlpConfig,
    param: Param,
    path: Path,
    data_source: bool,
    opt: AdamWConfig,
    batch: usize,
    seed: u64,
    ema: Option<f64>,
}

/// Trains the model `spec` describes with `flags`; the shared body of both tools.
pub fn run(spec: FitSpec, flags: &FitFlags, common: &Common) -> Result<()> {
    let device = common.setup()?;
    check_flags(&spec, flags)?;
    super::keep_freed_memory();
    let data = read_points(&flags.data, "data")?;
    let source = match &spec.source {
        Some(p) => Some(read_points(p, "source")?),
        None => None,
    };
    if let Some(s) = &source {
        if s.shape != data.shape {
            bail!(
                "expected source points (N, {}) like the data, got {} in {}",
                data.dim(),
                shape_str(&[s.n, s.dim()]),
                s.name
            );
        }
    }
    let ckpt = match &flags.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let plan = match &ckpt {
        Some(c) => resumed_plan(&spec, flags, common, c, &data, source.as_ref())?,
        None => fresh_plan(&spec, flags, common, &data, source.is_some()),
    };
    let config = model_config(&spec, &plan, &data, source.as_ref());

    let params = match &ckpt {
        Some(c) => Params::from_tensors(c.tensors.clone(), "", &c.name, &device),
        None => Params::new(plan.seed, &device),
    };
    let net = nn::build(&config, &params)?;
    let ema = match plan.ema {
        Some(d) => Some(Ema::new(&params, d)?),
        None => None,
    };
    let mut state = TrainState {
        opt: AdamW::new(&params, plan.opt.clone())?,
        params,
        ema,
    };
    if let Some(c) = &ckpt {
        state.restore(c)?;
    }
    common.explain(format!(
        "{} parameters; {} on the {} path, {} steps from step {}",
        state.params.count(),
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
    };
    loss.validate()?;
    let opts = LoopOptions {
        total_steps: plan.opt.schedule.total,
        log: flags.log.clone(),
        log_every: flags.log_every,
        append_log: ckpt.is_some(),
        checkpoint: flags.checkpoint.clone(),
        checkpoint_every: flags.checkpoint_every,
        quiet: common.quiet,
    };
    let summary = trainer::run(&mut state, &config, &opts, &mut |step| {
        loss.loss(net.as_ref(), step)
    })?;
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
    if let Some(lr) = f.lr {
        if !(lr > 0.0 && lr.is_finite()) {
            usage_bail!("--lr must be positive, got {lr}");
        }
    }
    if f.batch == Some(0) {
        usage_bail!("--batch must be at least 1");
    }
    if f.steps == Some(0) {
        usage_bail!("--steps must be at least 1");
    }
    if let Some(wd) = f.weight_decay {
        if !(wd >= 0.0 && wd.is_finite()) {
            usage_bail!("--weight-decay must be zero or positive, got {wd}");
        }
    }
    if let Some(d) = f.ema {
        if !(d > 0.0 && d < 1.0) {
            usage_bail!("--ema must be between 0 and 1 (e.g. 0.999), got {d}");
        }
    }
    if let Some(h) = &f.hidden {
        if h.is_empty() || h.contains(&0) {
            usage_bail!("--hidden must list positive widths, got {h:?}");
        }
    }
    if f.log_every == 0 || f.checkpoint_every == 0 {
        usage_bail!("--log-every and --checkpoint-every must be at least 1");
    }
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

/// Reads (N, D) finite points from `path` (the `--data` or `--source` file).
fn read_points(path: &str, what: &str) -> Result<Dataset> {
    let arr = npy::read_f32(path)?;
    let name = crate::io::display_name(path);
    npy::expect_shape(arr.shape(), "N,D", &format!("{what} points"), &name)?;
    Dataset::new(arr, &name)
}

fn fresh_plan(
    spec: &FitSpec,
    f: &FitFlags,
    common: &Common,
    data: &Dataset,
    data_source: bool,
) -> Plan {
    let default_path = if data_source {
        Path::LinearInterpolant
    } else {
        spec.default_path
    };
    let schedule = Schedule {
        lr: f.lr.unwrap_or(DEFAULT_LR),
        warmup: f.warmup.unwrap_or(0),
        decay: f.decay.unwrap_or(Decay::Constant),
        total: f.steps.unwrap_or(DEFAULT_STEPS),
    };
    Plan {
        mlp: MlpConfig {
            dim: data.dim(),
            hidden: f.hidden.clone().unwrap_or(DEFAULT_HIDDEN.to_vec()),
            activation: Activation::Silu,
            time_features: f.time_features.unwrap_or(0),
        },
        param: spec.param.unwrap_or(spec.default_param),
        path: spec_path(spec).unwrap_or(default_path),
        data_source,
        opt: AdamWConfig::new(schedule, f.weight_decay.unwrap_or(0.0)),
        batch: f.batch.unwrap_or(DEFAULT_BATCH),
        seed: common.seed,
        ema: f.ema,
    }
}

/// The model config: architecture, what it predicts, the path, and the training arguments.
fn model_config(spec: &FitSpec, plan: &Plan, data: &Dataset, source: Option<&Dataset>) -> Value {
    let about = |d: &Dataset| json!({"file": d.name, "n": d.n, "fingerprint": d.fingerprint()});
    let mut c = plan.mlp.to_json();
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
) -> Result<Plan> {
    let name = &ckpt.name;
    let m = checkpoint::model_config(ckpt)?;
    let bad = |what: &str| anyhow!("{name}: the checkpoint's config has a bad or missing {what}");
    if m["kind"].as_str() != Some(spec.kind) {
        bail!(
            "{name} is a checkpoint of a {} model, not of a {} model",
            m["kind"].as_str().unwrap_or("unknown"),
            spec.kind
        );
    }
    let mut plan = Plan {
        mlp: MlpConfig::from_json(m).map_err(|e| anyhow!("{name}: {e}"))?,
        param: m["parametrisation"]
            .as_str()
            .and_then(Param::parse)
            .ok_or_else(|| bad("parametrisation"))?,
        path: Path::from_json(&m["path"]).map_err(|e| anyhow!("{name}: {e}"))?,
        data_source: m["source"].as_str() == Some("data"),
        opt: serde_json::from_value(m["train"]["optimizer"].clone())
            .map_err(|_| bad("train.optimizer"))?,
        batch: m["train"]["batch"]
            .as_u64()
            .ok_or_else(|| bad("train.batch"))? as usize,
        seed: m["train"]["seed"]
            .as_u64()
            .ok_or_else(|| bad("train.seed"))?,
        ema: m["ema"].as_f64(),
    };
    let s = &plan.opt.schedule;
    same("--hidden", &f.hidden, &plan.mlp.hidden, name)?;
    same(
        "--time-features",
        &f.time_features,
        &plan.mlp.time_features,
        name,
    )?;
    same("--lr", &f.lr, &s.lr, name)?;
    same("--warmup", &f.warmup, &s.warmup, name)?;
    same("--decay", &f.decay, &s.decay, name)?;
    same(
        "--weight-decay",
        &f.weight_decay,
        &plan.opt.weight_decay,
        name,
    )?;
    same("--batch", &f.batch, &plan.batch, name)?;
    same("--ema", &f.ema.map(Some), &plan.ema, name)?;
    same(
        "--param",
        &spec.param.map(Param::name),
        &plan.param.name(),
        name,
    )?;
    same(
        "--path",
        &spec_path(spec).map(|p| p.name()),
        &plan.path.name(),
        name,
    )?;
    if common.seed != 0 && common.seed != plan.seed {
        usage_bail!(
            "--seed {} differs from the checkpoint's {} in {name}: a resumed run keeps its settings (only --steps may change)",
            common.seed,
            plan.seed
        );
    }
    match (plan.data_source, source.is_some()) {
        (true, false) => usage_bail!("{name} was trained from a source data set: give --source"),
        (false, true) => usage_bail!("{name} was trained from N(0, I): --source does not apply"),
        _ => {}
    }
    let step = checkpoint::step_of(ckpt)?;
    if let Some(total) = f.steps {
        if total < step {
            usage_bail!("--steps {total} is fewer than the {step} steps {name} has done");
        }
        plan.opt.schedule.total = total;
    }
    if data.dim() != plan.mlp.dim {
        bail!(
            "expected data points (N, {}) for the checkpoint {name}, got {} in {}",
            plan.mlp.dim,
            shape_str(&[data.n, data.dim()]),
            data.name
        );
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

/// A usage error when a flag was given with a value other than the checkpoint's.
fn same<T: PartialEq + std::fmt::Debug>(
    flag: &str,
    given: &Option<T>,
    saved: &T,
    name: &str,
) -> Result<()> {
    match given {
        Some(g) if g != saved => usage_bail!(
            "{flag} {g:?} differs from the checkpoint's {saved:?} in {name}: a resumed run keeps its settings (only --steps may change)"
        ),
        _ => Ok(()),
    }
}
