//! The flags every trainer shares (fit-velocity, fit-score, fit-vae, fit-denoiser): one
//! declaration, one range check and one comparison with a resumed checkpoint, so the three
//! tools cannot drift apart. The flags that shape a run are optional, so that a resumed run can
//! tell a contradiction from a default; the flags whose defaults differ between the tools
//! (batch, steps, warm-up, decay) stay with each tool.

use super::checkpoint;
use super::trainer::LoopOptions;
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

impl OptimFlags {
    /// Usage errors for values out of range.
    pub fn check(&self) -> Result<()> {
        if let Some(lr) = self.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                usage_bail!("--lr must be positive, got {lr}");
            }
        }
        if let Some(wd) = self.weight_decay {
            if !(wd >= 0.0 && wd.is_finite()) {
                usage_bail!("--weight-decay must be zero or positive, got {wd}");
            }
        }
        if let Some(d) = self.ema {
            if !(d > 0.0 && d < 1.0) {
                usage_bail!("--ema must be between 0 and 1 (e.g. 0.999), got {d}");
            }
        }
        Ok(())
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

/// Where a run reports and saves, and the checkpoint it continues.
#[derive(clap::Args, Clone, Debug)]
pub struct RunFlags {
    /// Write the loss curve as JSON lines {step, loss, lr, time_s} (`-`: stderr); written as
    /// training goes and kept when the run fails, like the checkpoints (it shows how it failed)
    #[arg(long, value_name = "PATH")]
    pub log: Option<String>,
    /// Steps between log lines
    #[arg(long, default_value_t = 100, value_name = "K")]
    pub log_every: u64,
    /// Write a checkpoint here every --checkpoint-every steps and at the end; `{step}` in the
    /// name is replaced by the step count
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<String>,
    /// Steps between checkpoints (and progress pictures, where the tool draws them)
    #[arg(long, default_value_t = 1000, value_name = "K")]
    pub checkpoint_every: u64,
    /// Continue the run a checkpoint belongs to (weights, optimiser moments, EMA, step)
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<String>,
}

impl RunFlags {
    /// Usage errors for values out of range, then (exit 1) a `--log` or `--checkpoint`
    /// location that cannot be written: found before the first step, not after the last.
    pub fn check(&self) -> Result<()> {
        if self.log_every == 0 || self.checkpoint_every == 0 {
            usage_bail!("--log-every and --checkpoint-every must be at least 1");
        }
        crate::io::check_output_opt(&self.log, false)?;
        if let Some(p) = &self.checkpoint {
            crate::io::check_output(&checkpoint::path_for(p, 0), true)?;
        }
        Ok(())
    }

    /// The training loop's options for a run of `total_steps` (the log is appended to when
    /// the run resumes a checkpoint).
    pub fn loop_options(&self, total_steps: u64, quiet: bool) -> LoopOptions {
        LoopOptions {
            total_steps,
            log: self.log.clone(),
            log_every: self.log_every,
            append_log: self.resume.is_some(),
            checkpoint: self.checkpoint.clone(),
            checkpoint_every: self.checkpoint_every,
            quiet,
        }
    }
}
