//! The flags of `fit-vae` ([`VaeFlags`]) with their defaults, and the usage errors (exit 2)
//! they can make before any input is read.

use crate::cli::at_least_1;
use crate::nn::vae::{self, DecoderVariance, LogvarMode};
use crate::train::checkpoint;
use crate::train::flags::{OptimFlags, RunFlags};
use crate::train::optim::Decay;
use crate::{usage_bail, Result};

pub use crate::train::flags::DEFAULT_LR;
pub const DEFAULT_BATCH: usize = 64;
pub const DEFAULT_STEPS: u64 = 2000;
pub const DEFAULT_BETA: f64 = 1.0;

/// The flags of `fit-vae`. Those that shape the run are optional so that a resumed run can tell
/// a contradiction from a default.
#[derive(clap::Args, Clone, Debug)]
pub struct VaeFlags {
    /// Training images (N, C, H, W), .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// Channels per level, comma separated; each level after the first halves the resolution
    /// (rounding up) [default: 32,64,64: 32x32 -> 8x8, 28x28 -> 7x7]
    #[arg(long, value_delimiter = ',', value_name = "C,C,...")]
    pub channels: Option<Vec<usize>>,
    /// Residual blocks per level [default: 1]
    #[arg(long, value_name = "B")]
    pub blocks: Option<usize>,
    /// Latent channels k: latents are (k, H / 2^(L-1), W / 2^(L-1)) [default: 4]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    pub latent_channels: Option<usize>,
    /// Self-attention blocks in the middle of encoder and decoder [default: off]
    #[arg(long)]
    pub attention: bool,
    /// GroupNorm groups [default: the largest of 8, 4, 2, 1 dividing every channel count]
    #[arg(long, value_name = "G", value_parser = at_least_1::<usize>)]
    pub groups: Option<usize>,
    /// Posterior log-variance: a conv head per element, or one learned scalar (the lab's)
    /// [default: per-element]
    #[arg(long, value_enum)]
    pub logvar: Option<LogvarMode>,
    /// Decoder variance sigma^2 of p(x | z) = N(D(z), sigma^2 I) [default: learned]
    #[arg(long, value_enum)]
    pub decoder_variance: Option<DecoderVariance>,
    /// Decoder sigma: its value when fixed, its start when learned [default: 0.1; Adam moves a
    /// log-variance by about --lr per step, so a start near the final error matters]
    #[arg(long, value_name = "SIGMA", allow_hyphen_values = true)]
    pub decoder_std: Option<f64>,
    /// Weight of the KL term (1: the ELBO) [default: 1]
    #[arg(long, allow_hyphen_values = true)]
    pub beta: Option<f64>,
    /// Steps of linear KL warm-up from 0 to beta [default: a tenth of --steps]
    #[arg(long, value_name = "STEPS")]
    pub kl_warmup: Option<u64>,
    #[command(flatten)]
    pub optim: OptimFlags,
    /// Steps of linear learning-rate warm-up [default: 0]
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up: constant, or cosine decay to 0 at the last step
    /// [default: constant]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Minibatch size [default: 64]
    #[arg(long, value_parser = at_least_1::<usize>)]
    pub batch: Option<usize>,
    /// Total optimiser steps [default: 2000, or the checkpoint's when resuming]
    #[arg(long, value_parser = at_least_1::<u64>)]
    pub steps: Option<u64>,
    /// Training images used to measure the latent scale factor (the first N; 0: all)
    #[arg(long, value_name = "N", default_value_t = 10000)]
    pub scale_samples: usize,
    #[command(flatten)]
    pub run: RunFlags,
    /// PNG of the first 8 training images (top row) over their reconstructions D(mu(x)),
    /// drawn every --checkpoint-every steps and at the end; `{step}` is replaced by the step.
    /// Written with the model when the run succeeds (the outputs of a run appear together)
    #[arg(long, value_name = "PATH")]
    pub recon_grid: Option<String>,
}

/// Usage errors (exit 2): values no run can use.
pub(super) fn check_flags(f: &VaeFlags) -> Result<()> {
    let positive = |flag: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                usage_bail!("{flag} must be positive, got {x}")
            }
            _ => Ok(()),
        }
    };
    f.optim.check()?;
    f.run.check()?;
    if let Some(p) = &f.recon_grid {
        crate::io::check_output(&checkpoint::path_for(p, 0), true)?;
    }
    positive("--decoder-std", f.decoder_std)?;
    if let Some(b) = f.beta {
        if !(b >= 0.0 && b.is_finite()) {
            usage_bail!("--beta must be zero or positive, got {b}");
        }
    }
    if let Some(c) = &f.channels {
        if c.is_empty() || c.contains(&0) {
            usage_bail!("--channels must list positive channel counts, got {c:?}");
        }
        let g = f.groups.unwrap_or(vae::default_groups(c));
        if let Some(bad) = c.iter().find(|&&x| x % g != 0) {
            usage_bail!("--groups {g} does not divide {bad} channels");
        }
    }
    Ok(())
}
