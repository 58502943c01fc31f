//! The training loop every trainer shares (Algorithm 3 of the notes, for any loss):
//! for each step, compute the minibatch loss, backpropagate, take an AdamW step, update the EMA.
//!
//! Around it: a progress bar on stderr with the running loss (an exponential average over about
//! 50 steps; hidden unless stderr is a terminal), `--log` JSON lines
//! `{"step", "loss", "lr", "time_s"}` every `log_every` steps (`loss` is the mean over the steps
//! since the previous line, `step` the number of steps done), and a checkpoint every
//! `checkpoint_every` steps and after the last one, each written atomically. A loss that is not
//! finite stops training with an error.

use anyhow::bail;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::time::Instant;

use super::checkpoint::{self, TrainState};
use crate::progress::{JsonLog, Progress};
use crate::Result;

/// Where and how often the loop reports and saves.
#[derive(Clone, Debug, Default)]
pub struct LoopOptions {
    /// Train until this many steps are done.
    pub total_steps: u64,
    /// `--log` destination (`-`: stderr).
    pub log: Option<String>,
    pub log_every: u64,
    /// Append to the log instead of truncating it (a resumed run).
    pub append_log: bool,
    /// Checkpoint path; `{step}` is replaced by the step.
    pub checkpoint: Option<String>,
    pub checkpoint_every: u64,
    /// No progress bar.
    pub quiet: bool,
}

/// What a finished loop reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Steps taken by this call.
    pub steps: u64,
    /// Mean loss over the last up-to-`log_every` steps.
    pub last_loss: f64,
    pub seconds: f64,
}

/// Runs `loss_of(step)` -> backward -> AdamW -> EMA from `state.step()` to `opts.total_steps`.
///
/// `model_config` goes into each checkpoint; `loss_of` must draw its minibatch from streams
/// keyed by the step it is given, so that resuming repeats the uninterrupted run.
pub fn run(
    state: &mut TrainState,
    model_config: &Value,
    opts: &LoopOptions,
    loss_of: &mut dyn FnMut(u64) -> candle_core::Result<Tensor>,
) -> Result<Summary> {
    run_with_hook(state, model_config, opts, loss_of, &mut |_, _| Ok(()))
}

/// [`run`], calling `at_checkpoint(steps_done, state)` every `checkpoint_every` steps and after
/// the last one (after the checkpoint, if any, is written): for figures such as a VAE's
/// reconstruction grid.
pub fn run_with_hook(
    state: &mut TrainState,
    model_config: &Value,
    opts: &LoopOptions,
    loss_of: &mut dyn FnMut(u64) -> candle_core::Result<Tensor>,
    at_checkpoint: &mut dyn FnMut(u64, &TrainState) -> Result<()>,
) -> Result<Summary> {
    let start = state.step();
    let mut log = if opts.append_log {
        JsonLog::append(opts.log.as_deref())?
    } else {
        JsonLog::open(opts.log.as_deref())?
    };
    let bar = Progress::new(opts.total_steps, "steps", opts.quiet);
    bar.set_position(start);
    let clock = Instant::now();
    let (mut running, mut weight) = (0.0f64, 0.0f64);
    let (mut window_sum, mut window_n) = (0.0f64, 0u64);
    let mut last_loss = f64::NAN;
    let log_every = opts.log_every.max(1);
    let ckpt_every = opts.checkpoint_every.max(1);
    for step in start..opts.total_steps {
        let loss = loss_of(step)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("the loss became {value} at step {step}: training diverged (try a smaller --lr)");
        }
        let grads = loss.backward()?;
        let lr = state.opt.step(&grads)?;
        if let Some(ema) = &mut state.ema {
            ema.update(&state.params)?;
        }
        let done = step + 1;
        running = 0.98 * running + 0.02 * value;
        weight = 0.98 * weight + 0.02;
        window_sum += value;
        window_n += 1;
        bar.inc(1);
        if done % 10 == 0 || done == opts.total_steps {
            bar.message(format!("loss {:.4}", running / weight));
        }
        if done % log_every == 0 || done == opts.total_steps {
            last_loss = window_sum / window_n as f64;
            let t = (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            log.line(&json!({"step": done, "loss": last_loss, "lr": lr, "time_s": t}))?;
            (window_sum, window_n) = (0.0, 0);
        }
        if done % ckpt_every == 0 || done == opts.total_steps {
            if let Some(pattern) = &opts.checkpoint {
                checkpoint::save(&checkpoint::path_for(pattern, done), model_config, state)?;
            }
            at_checkpoint(done, state)?;
        }
    }
    bar.finish();
    Ok(Summary {
        steps: opts.total_steps.saturating_sub(start),
        last_loss,
        seconds: clock.elapsed().as_secs_f64(),
    })
}
