//! Training a student: the shared loop ([`crate::train::trainer`]: AdamW, optional EMA of the
//! weights, `--log` JSON lines) around each method's loss on a [`Bank`] of teacher
//! trajectories. Every minibatch is drawn from streams keyed by (seed, purpose, step), so the
//! same seed gives the same student.

use serde_json::{json, Value};

use super::flowmap::{self, TwoTime};
use super::{consistency, reflow, Bank, Method};
use crate::nn::{build, FieldNet, Params};
use crate::paths::{Path, TimeDensity};
use crate::train::checkpoint::TrainState;
use crate::train::optim::{AdamWConfig, Decay, Schedule};
use crate::train::trainer::{self, LoopOptions};
use crate::Result;

/// How long and how fast a student trains.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Steps of linear learning-rate warm-up.
    pub warmup: u64,
    pub decay: Decay,
    /// EMA decay of the weights used for sampling (`None`: no average).
    pub ema: Option<f64>,
    pub seed: u64,
    /// `--log` destination (`-`: stderr).
    pub log: Option<String>,
    pub log_every: u64,
    pub quiet: bool,
    /// The density of the training times (grid indices for flowmap and consistency).
    pub time: TimeDensity,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 1000,
            batch: 256,
            lr: 1e-3,
            warmup: 0,
            decay: Decay::Constant,
            ema: None,
            seed: 0,
            log: None,
            log_every: 100,
            quiet: true,
            time: TimeDensity::Uniform,
        }
    }
}

/// A student network: one time (reflow, consistency) or two (the flow map).
pub enum StudentNet {
    Plain(Box<dyn FieldNet>),
    TwoTime(TwoTime),
}

impl StudentNet {
    /// Builds the network of `method` for the student `config` on `params`.
    pub fn build(method: Method, config: &Value, params: &Params) -> Result<StudentNet> {
        Ok(match method {
            Method::Flowmap => StudentNet::TwoTime(TwoTime::new(config, params)?),
            _ => StudentNet::Plain(build(config, params)?),
        })
    }

    /// The method's loss at training step `step`.
    pub fn loss(
        &self,
        method: Method,
        bank: &Bank,
        batch: usize,
        seed: u64,
        step: u64,
        time: &TimeDensity,
    ) -> Result<candle_core::Tensor> {
        match (method, self) {
            (Method::Flowmap, StudentNet::TwoTime(n)) => {
                flowmap::loss(n, bank, batch, seed, step, time)
            }
            (Method::Reflow, StudentNet::Plain(n)) => {
                reflow::loss(n.as_ref(), bank, batch, seed, step, time)
            }
            (Method::Consistency, StudentNet::Plain(n)) => {
                consistency::loss(n.as_ref(), bank, batch, seed, step, time)
            }
            _ => anyhow::bail!("the {} student has the wrong network", method.name()),
        }
    }
}

/// Trains a `method` student whose config (architecture, `kind`) is `config` on `params`
/// (fresh, or the teacher's weights) from `bank`; returns the trained state.
pub fn train(
    method: Method,
    config: &Value,
    params: Params,
    bank: &Bank,
    opts: &TrainOptions,
) -> Result<TrainState> {
    if method == Method::Flowmap {
        flowmap::levels(bank.steps)?;
    }
    let net = StudentNet::build(method, config, &params)?;
    let schedule = Schedule {
        lr: opts.lr,
        warmup: opts.warmup,
        decay: opts.decay,
        total: opts.steps,
    };
    let mut state =
        TrainState::fresh_or_resumed(params, AdamWConfig::new(schedule, 0.0), opts.ema, None)?;
    let lopts = LoopOptions {
        total_steps: opts.steps,
        log: opts.log.clone(),
        log_every: opts.log_every.max(1),
        append_log: false,
        checkpoint: None,
        checkpoint_every: opts.steps.max(1),
        quiet: opts.quiet,
    };
    trainer::run(&mut state, config, &lopts, &mut |step| {
        net.loss(method, bank, opts.batch, opts.seed, step, &opts.time)
            .map_err(|e| candle_core::Error::msg(format!("{e:#}")))
    })?;
    Ok(state)
}

/// The student's model config: the teacher's architecture `arch` (with `num_classes` and
/// `data_shape`), the kind of `method`, what the network predicts, the path, and `distill`
/// (method, teacher, guidance, schedule and training arguments, given in `about`).
pub fn student_config(method: Method, arch: &Value, teacher_path: &Path, about: Value) -> Value {
    let mut c = arch.clone();
    if let Some(o) = c.as_object_mut() {
        for key in [
            "train",
            "ema",
            "format",
            "flowpipe_version",
            "time_convention",
        ] {
            o.remove(key);
        }
    }
    c["kind"] = json!(method.kind());
    match method {
        Method::Reflow => {
            // A velocity on the straight couplings (x_0, x_1): the linear interpolant whose x_0
            // is the teacher's coupling, not independent noise, so no score can be derived.
            c["parametrisation"] = json!("velocity");
            c["path"] = Path::LinearInterpolant.to_json();
            c["source"] = json!("reflow-coupling");
            // Its x_0 is the teacher's: N(0, 50^2 I) from a VE teacher (kept if the teacher,
            // itself reflowed, records it).
            if c.get("init_std").is_none() && teacher_path.init_std() != 1.0 {
                c["init_std"] = json!(teacher_path.init_std());
            }
        }
        Method::Flowmap => {
            c["parametrisation"] = json!("average-velocity");
            c["second_time"] = json!("jump d = t - s, an extra input channel");
            c["path"] = teacher_path.to_json();
        }
        Method::Consistency => {
            c["parametrisation"] = json!(consistency::PARAMETRISATION);
            c["path"] = teacher_path.to_json();
        }
    }
    let mut about = about;
    about["method"] = json!(method.name());
    about["schedule"] = json!(method.schedule());
    c["distill"] = about;
    c
}
