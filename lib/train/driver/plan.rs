//! The plan of a `fit-velocity` or `fit-score` run: everything that defines it, as stored in the
//! model config, from the flags of a fresh run or from the checkpoint of a resumed one.
//!
//! **Resuming** (`--resume ckpt`) continues the run the checkpoint belongs to: the network,
//! path, parametrisation, optimiser settings, batch size, seed and EMA come from the
//! checkpoint's config, so a flag that contradicts them is a usage error; only `--steps` (the
//! new total), the outputs (`-o`, `--log`, which is appended to, `--checkpoint`) and the data
//! files are taken from the command line. Data of another dimension is refused; other data of
//! the same shape gets a warning (training goes on, but no longer repeats the original run).
//! A labelled run needs its labels again (`--labels`).

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use super::flags::{
    spec_path, FitFlags, FitSpec, Objective, DEFAULT_BATCH, DEFAULT_LABEL_DROPOUT, DEFAULT_LR,
    DEFAULT_STEPS,
};
use crate::cli::Common;
use crate::distill::consistency::PARAMETRISATION;
use crate::io::model::ModelFile;
use crate::io::npy::shape_str;
use crate::paths::{Param, Path, TimeDensity};
use crate::train::arch;
use crate::train::checkpoint;
use crate::train::coupling::Coupling;
use crate::train::losses::{Dataset, Labels};
use crate::train::optim::{AdamWConfig, Decay, Schedule};
use crate::{usage_bail, Result};

/// Everything that defines a run, as stored in the model config.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
    /// The architecture config (`arch`, `data_shape`, sizes, `num_classes`).
    pub(super) net: Value,
    pub(super) param: Param,
    pub(super) path: Path,
    pub(super) data_source: bool,
    pub(super) opt: AdamWConfig,
    pub(super) batch: usize,
    pub(super) seed: u64,
    pub(super) ema: Option<f64>,
    pub(super) label_dropout: f64,
    pub(super) time: TimeDensity,
    pub(super) coupling: Coupling,
    pub(super) interpolant_noise: f64,
    /// What the run regresses on: flow matching (also fit-score's, which has no choice), or a
    /// two-time model's objective (kind `flowmap`).
    pub(super) objective: Objective,
}

pub(super) fn fresh_plan(
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
    let objective = spec.objective.unwrap_or(Objective::FlowMatching);
    let mut net = arch::fresh_config(&f.net, data.n, &data.shape, num_classes, &data.name)?;
    // MeanFlow's target holds the network's derivative in t, which the DiT's default time
    // features (frequencies up to 1000) make unstable: slow features unless asked otherwise.
    if objective == Objective::Meanflow && net["arch"] == "dit" && f.net.time_scale.is_none() {
        net["time_scale"] = json!(crate::train::meanflow::DIT_TIME_SCALE);
    }
    Ok(Plan {
        net,
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
        coupling: spec.coupling.unwrap_or_default(),
        interpolant_noise: spec.interpolant_noise.unwrap_or(0.0),
        objective,
    })
}

/// The model config: architecture, what it predicts, the path, and the training arguments.
pub(super) fn model_config(
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
    if spec.kind == "flowmap" {
        // A shortcut or MeanFlow model (train::shortcut, train::meanflow), read as the distilled
        // flow maps are.
        c["parametrisation"] = json!("average-velocity");
        c["second_time"] = json!("jump d = t - s, an extra input channel");
    }
    if spec.kind == "consistency" {
        // Consistency training (train::consistency), read as the distilled ones are.
        c["parametrisation"] = json!(PARAMETRISATION);
    }
    c["path"] = plan.path.to_json();
    c["source"] = json!(if plan.data_source { "data" } else { "gaussian" });
    c["ema"] = json!(plan.ema);
    c["train"] = json!({
        "loss": match plan.param {
            Param::Velocity if plan.objective == Objective::Meanflow => {
                "meanflow: u(x, s, d) on sg(v + d du/ds), the total derivative along (v, 1, -1) by \
                 a central difference; flow matching at d = 0"
            }
            Param::Velocity if spec.kind == "flowmap" => {
                "shortcut: flow matching at d = 0 and self-consistency across step sizes"
            }
            Param::Velocity if spec.kind == "consistency" => {
                "consistency training: pseudo-Huber between adjacent times of one path draw, \
                 grid from 10 to 1280 intervals"
            }
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
    // Written only when not independent, so that a default run's file is byte-identical to
    // one from before the option; a file without it trained independently.
    if plan.coupling != Coupling::Independent {
        c["train"]["coupling"] = json!(plan.coupling.name());
    }
    // A flowmap file without it is a shortcut model (files from before MeanFlow).
    if plan.objective == Objective::Meanflow {
        c["train"]["objective"] = json!(plan.objective.name());
    }
    // The same for the stochastic interpolant: absent means no noise term.
    if plan.interpolant_noise > 0.0 {
        c["train"]["interpolant_noise"] = json!(plan.interpolant_noise);
    }
    c
}

/// The plan stored in a checkpoint, after checking the command line and data against it.
pub(super) fn resumed_plan(
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
        // A shortcut model's average velocity is trained as a velocity.
        param: match m["parametrisation"].as_str() {
            Some("average-velocity") if spec.kind == "flowmap" => Param::Velocity,
            Some(PARAMETRISATION) if spec.kind == "consistency" => Param::Velocity,
            p => p
                .and_then(Param::parse)
                .ok_or_else(|| bad("parametrisation"))?,
        },
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
        coupling: match m["train"]["coupling"].as_str() {
            None => Coupling::Independent,
            Some(c) => Coupling::parse(c).ok_or_else(|| bad("train.coupling"))?,
        },
        interpolant_noise: match &m["train"]["interpolant_noise"] {
            Value::Null => 0.0,
            v => v
                .as_f64()
                .filter(|a| *a >= 0.0 && a.is_finite())
                .ok_or_else(|| bad("train.interpolant_noise"))?,
        },
        // A flowmap file without train.objective is a shortcut model.
        objective: match (spec.kind, m["train"]["objective"].as_str()) {
            ("flowmap", None) => Objective::Shortcut,
            ("flowmap", Some(o)) => Objective::parse(o)
                .filter(|o| o.jumps())
                .ok_or_else(|| bad("train.objective"))?,
            ("consistency", _) => Objective::Consistency,
            _ => Objective::FlowMatching,
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
            "{} holds {} classes, but {name} was trained on {classes} (give --num-classes \
             {classes} if some are missing)",
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
    checkpoint::same("--objective", &spec.objective, &plan.objective, name)?;
    checkpoint::same("--coupling", &spec.coupling, &plan.coupling, name)?;
    checkpoint::same(
        "--interpolant-noise",
        &spec.interpolant_noise,
        &plan.interpolant_noise,
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
