//! The driver shared by `fit-velocity` (conditional flow matching, notes eq. 26/31, Algorithm 3)
//! and `fit-score` (denoising score matching, Theorem 22): the MLP of Lab 2 on (N, D) points, or
//! Lab 3's conditional networks ([`super::arch`]) on labelled points or images (N, C, H, W),
//! trained with label dropout for classifier-free guidance (notes Algorithm 5, see
//! [`super::losses`]).
//!
//! Order of work, as every tool: check the flags (usage errors, exit 2), read the data, the
//! source and the checkpoint and check them against each other (exit 1, naming the file),
//! then train (checkpoints and the log are written only from here) and write the model.
//! This file holds that order ([`run`]) and the readers of the inputs; the flags and their
//! checks are in `flags.rs`, and the run's plan (fresh, or resumed from a checkpoint) with the
//! model config it writes in `plan.rs`.
//!
//! `--sample-grid` draws samples of the model at each checkpoint step ([`super::preview`]).

mod flags;
mod plan;

use anyhow::{bail, Context};

use super::checkpoint::{self, TrainState};
use super::losses::{ConditionalLoss, Dataset, Labels, Source};
use super::meanflow;
use super::preview::Preview;
use super::trainer;
use super::{consistency, shortcut};
use crate::cli::Common;
use crate::distill::flowmap::TwoTime;
use crate::io::npy::{self, shape_str};
use crate::nn;
use crate::Result;

use flags::check_flags;
pub use flags::{
    FitFlags, FitSpec, Objective, PathArg, DEFAULT_BATCH, DEFAULT_HIDDEN, DEFAULT_LABEL_DROPOUT,
    DEFAULT_LR, DEFAULT_STEPS,
};
use plan::{fresh_plan, model_config, resumed_plan};

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
    // Each few-step objective writes a model kind of its own; a resumed run keeps its
    // checkpoint's kind, and the plan reads the objective back (train.objective for a flowmap).
    let kind = match (spec.objective, &ckpt) {
        (Some(o), _) => o.kind(),
        (None, Some(c)) if spec.kind == "velocity" => {
            let m = checkpoint::model_config(c).ok();
            match m.as_ref().and_then(|m| m["kind"].as_str()) {
                Some("flowmap") => "flowmap",
                Some("consistency") => "consistency",
                _ => "velocity",
            }
        }
        (None, _) => spec.kind,
    };
    let spec = FitSpec { kind, ..spec };
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
    let building = || format!("building {}", config["arch"]);
    let net = match plan.objective {
        Objective::Shortcut => {
            Net::Shortcut(TwoTime::new(&config, &params).with_context(building)?)
        }
        Objective::Meanflow => {
            Net::MeanFlow(TwoTime::new(&config, &params).with_context(building)?)
        }
        Objective::FlowMatching | Objective::Consistency => {
            Net::Field(nn::build(&config, &params).with_context(building)?)
        }
    };
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
        coupling: plan.coupling,
        interpolant_noise: plan.interpolant_noise,
    };
    loss.validate()?;
    let fd_step = meanflow::fd_step(&config);
    let opts = flags
        .run
        .loop_options(plan.opt.schedule.total, common.quiet);
    let total = plan.opt.schedule.total;
    let summary = trainer::run_with(
        &mut state,
        &config,
        &opts,
        &mut |step| match &net {
            Net::Field(net) if plan.objective == Objective::Consistency => {
                consistency::loss(net.as_ref(), &loss, step, total)
            }
            Net::Field(net) => loss.loss(net.as_ref(), step),
            Net::Shortcut(net) => shortcut::loss(net, &loss, step),
            Net::MeanFlow(net) => meanflow::loss(net, &loss, step, fd_step),
        },
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

/// The network a run trains: a field u(x, t), or a shortcut or MeanFlow model's u(x, t, d).
enum Net {
    Field(Box<dyn nn::FieldNet>),
    Shortcut(TwoTime),
    MeanFlow(TwoTime),
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
