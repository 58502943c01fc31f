//! The flags the trainers share: one declaration, one range check and one comparison with a
//! resumed checkpoint, so the tools cannot drift apart. [`OptimFlags`] and [`RunFlags`] are
//! every resumable trainer's (the fit-* tools built on [`crate::train::driver`],
//! [`crate::train::vae`] and [`crate::discrete::driver`]); fit-classifier and distill use
//! [`LogFlags`] (and fit-classifier [`CheckpointFlags`]) and the checks [`check_lr`],
//! [`check_weight_decay`] and [`check_ema`] for their own optimiser flags. The flags that shape a run are optional, so that a resumed run can
//! tell a contradiction from a default; the flags whose defaults differ between the tools
//! (batch, steps, warm-up, decay) stay with each tool.

use super::checkpoint;
use super::trainer::LoopOptions;
use crate::cli::at_least_1;
use crate::{usage_bail, Result};

/// The optimiser flags with the same meaning and default in every trainer.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OptimFlags {
    /// Peak learning rate [default: 1e-3]
    #[arg(long, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Decoupled weight decay (AdamW); 0 is Adam [default: 0]
    #[arg(long, allow_hyphen_values = true)]
    pub weight_decay: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999); saved
    /// as ema.<name> and used by the tools that read the model [default: off]
    #[arg(long, value_name = "DECAY", allow_hyphen_values = true)]
    pub ema: Option<f64>,
}

/// The default peak learning rate of every trainer.
pub const DEFAULT_LR: f64 = 1e-3;

/// A usage error unless the learning rate `lr` is positive and finite.
pub fn check_lr(lr: f64) -> Result<()> {
    if !(lr > 0.0 && lr.is_finite()) {
        usage_bail!("--lr must be positive, got {lr}");
    }
    Ok(())
}

/// A usage error unless the weight decay `wd` is zero or positive (and finite).
pub fn check_weight_decay(wd: f64) -> Result<()> {
    if !(wd >= 0.0 && wd.is_finite()) {
        usage_bail!("--weight-decay must be zero or positive, got {wd}");
    }
    Ok(())
}

/// A usage error unless the EMA decay `d` is strictly between 0 and 1.
pub fn check_ema(d: f64) -> Result<()> {
    if !(d > 0.0 && d < 1.0) {
        usage_bail!("--ema must be between 0 and 1 (e.g. 0.999), got {d}");
    }
    Ok(())
}

impl OptimFlags {
    /// Usage errors for values out of range.
    pub fn check(&self) -> Result<()> {
        self.lr.map_or(Ok(()), check_lr)?;
        self.weight_decay.map_or(Ok(()), check_weight_decay)?;
        self.ema.map_or(Ok(()), check_ema)
    }

    /// Usage errors for flags that differ from what the checkpoint `name` was trained with.
    pub fn check_resumed(
        &self,
        lr: f64,
        weight_decay: f64,
        ema: Option<f64>,
        name: &str,
    ) -> Result<()> {
        checkpoint::same("--lr", &self.lr, &lr, name)?;
        checkpoint::same("--weight-decay", &self.weight_decay, &weight_decay, name)?;
        checkpoint::same("--ema", &self.ema.map(Some), &ema, name)
    }
}

/// The loss log: where and how often.
#[derive(clap::Args, Clone, Debug)]
pub struct LogFlags {
    /// Write the loss curve as JSON lines {step, loss, lr, time_s} (`-`: stderr); written as
    /// training goes and kept when the run fails (it shows how it failed)
    #[arg(long, value_name = "PATH")]
    pub log: Option<String>,
    /// Steps between log lines
    #[arg(long, default_value_t = 100, value_name = "K", value_parser = at_least_1::<u64>)]
    pub log_every: u64,
}

impl LogFlags {
    /// A `--log` location that cannot be written (exit 1), found before the first step.
    pub fn check(&self) -> Result<()> {
        crate::io::check_output_opt(&self.log, false)
    }
}

/// Checkpoints written as a run goes.
#[derive(clap::Args, Clone, Debug)]
pub struct CheckpointFlags {
    /// Write a checkpoint here every --checkpoint-every steps and at the end; `{step}` in the
    /// name is replaced by the step count
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<String>,
    /// Steps between checkpoints (and progress pictures, where the tool draws them)
    #[arg(long, default_value_t = 1000, value_name = "K", value_parser = at_least_1::<u64>)]
    pub checkpoint_every: u64,
}

impl CheckpointFlags {
    /// A `--checkpoint` location that cannot be written (exit 1), found before the first step.
    pub fn check(&self) -> Result<()> {
        if let Some(p) = &self.checkpoint {
            crate::io::check_output(&checkpoint::path_for(p, 0), true)?;
        }
        Ok(())
    }
}

/// Where a run reports and saves, and the checkpoint it continues.
#[derive(clap::Args, Clone, Debug)]
pub struct RunFlags {
    #[command(flatten)]
    pub logging: LogFlags,
    #[command(flatten)]
    pub checkpoints: CheckpointFlags,
    /// Continue the run a checkpoint belongs to (weights, optimiser moments, EMA, step)
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<String>,
}

impl RunFlags {
    /// A `--log` or `--checkpoint` location that cannot be written (exit 1): found before the
    /// first step, not after the last.
    pub fn check(&self) -> Result<()> {
        self.logging.check()?;
        self.checkpoints.check()
    }

    /// The training loop's options for a run of `total_steps` (the log is appended to when
    /// the run resumes a checkpoint).
    pub fn loop_options(&self, total_steps: u64, quiet: bool) -> LoopOptions {
        LoopOptions {
            total_steps,
            log: self.logging.log.clone(),
            log_every: self.logging.log_every,
            append_log: self.resume.is_some(),
            checkpoint: self.checkpoints.checkpoint.clone(),
            checkpoint_every: self.checkpoints.checkpoint_every,
            quiet,
        }
    }
}
