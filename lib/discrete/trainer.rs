//! The `fit-denoiser` driver: its flags, their checks, and the order of work of every tool
//! (check flags, read and check every input, train, write the model). The training itself is
//! [`super::fit`].

use super::fit::{self, FitOptions, TokenData};
use super::{tokens, DenoiserConfig, Kappa, Noise};
use crate::cli::Common;
use crate::io;
use crate::nn::FfActivation;
use crate::train::optim::{AdamWConfig, Decay, Schedule};
use crate::train::{checkpoint, trainer::LoopOptions};
use crate::{usage_bail, Result};

/// The flags of `fit-denoiser`.
#[derive(clap::Args, Clone, Debug)]
pub struct DenoiserFlags {
    /// Training tokens (N, L) int64 .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// The vocabulary JSON (import-text --vocab-out) [default: the checkpoint's with --resume]
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    pub vocab: Option<String>,
    /// Class labels (N,) int64: a conditional model for classifier-free guidance
    #[arg(long, value_name = "PATH")]
    pub labels: Option<String>,
    /// Probability of dropping a label to null
    #[arg(long, default_value_t = 0.1, value_name = "ETA")]
    pub label_dropout: f64,
    /// The noise p_init at t = 0
    #[arg(long, value_enum, default_value_t = Noise::Mask)]
    pub noise: Noise,
    /// The scheduler kappa_t
    #[arg(long, value_enum, default_value_t = Kappa::Linear)]
    pub kappa: Kappa,
    /// Token width D
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    /// Transformer blocks
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Attention heads (must divide the width)
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Hidden width of the MLPs in multiples of D
    #[arg(long, default_value_t = 4)]
    pub mlp_ratio: usize,
    /// Optimiser steps (the new total with --resume)
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Minibatch size
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Steps of linear warm-up
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Learning rate after warm-up
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    pub decay: Decay,
    /// Decoupled weight decay (AdamW)
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// EMA of the weights with this decay (e.g. 0.999), used for sampling [default: off]
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Write the loss curve as JSON lines {step, loss, lr, time_s} (`-`: stderr)
    #[arg(long, value_name = "PATH")]
    pub log: Option<String>,
    /// Steps between log lines
    #[arg(long, default_value_t = 100, value_name = "K")]
    pub log_every: u64,
    /// Checkpoint path ({step} is replaced by the step), written every --checkpoint-every steps
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<String>,
    /// Steps between checkpoints
    #[arg(long, default_value_t = 1000, value_name = "K")]
    pub checkpoint_every: u64,
    /// Continue the run of this checkpoint
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<String>,
}

/// Trains the denoiser `flags` describe and writes it to `common.output`.
pub fn run(flags: &DenoiserFlags, common: &Common) -> Result<()> {
    let device = common.setup()?;
    if !(flags.lr > 0.0 && flags.lr.is_finite()) {
        usage_bail!("--lr must be positive, got {}", flags.lr);
    }
    if flags.steps == 0
        || flags.batch == 0
        || flags.width == 0
        || flags.log_every == 0
        || flags.checkpoint_every == 0
    {
        usage_bail!(
            "--steps, --batch, --width, --log-every and --checkpoint-every must be at least 1"
        );
    }
    if flags.heads == 0 || flags.width % flags.heads != 0 {
        usage_bail!(
            "--heads {} must divide --width {}",
            flags.heads,
            flags.width
        );
    }
    if !(0.0..1.0).contains(&flags.label_dropout)
        || flags.ema.is_some_and(|d| !(d > 0.0 && d < 1.0))
    {
        usage_bail!("--label-dropout must be in [0, 1) and --ema in (0, 1)");
    }
    let loop_opts = LoopOptions {
        total_steps: flags.steps,
        log: flags.log.clone(),
        log_every: flags.log_every,
        checkpoint: flags.checkpoint.clone(),
        checkpoint_every: flags.checkpoint_every,
        quiet: common.quiet,
        append_log: false,
    };
    let ckpt = match &flags.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let vocab = match (&flags.vocab, &ckpt) {
        (Some(v), _) => tokens::read_vocab(v)?,
        (None, Some(c)) => tokens::read_vocab(flags.resume.as_deref().unwrap_or(&c.name))?,
        (None, None) => unreachable!("clap requires --vocab without --resume"),
    };
    let arr = tokens::read_tokens(&flags.data, &vocab, None, false)?;
    let (n, len) = (arr.shape()[0], arr.shape()[1]);
    if n == 0 {
        anyhow::bail!("{} holds no sequences", io::display_name(&flags.data));
    }
    let labels = match &flags.labels {
        Some(p) => Some(tokens::read_labels(p, Some(n), None)?),
        None => None,
    };
    let num_classes = labels
        .as_ref()
        .map_or(0, |y| *y.iter().max().unwrap_or(&0) as usize + 1);
    let data = TokenData {
        ids: tokens::ids(&arr),
        n,
        len,
        labels,
        name: io::display_name(&flags.data),
    };
    let opts = match &ckpt {
        Some(c) => fit::resumed_options(c, Some(flags.steps), loop_opts)?,
        None => FitOptions {
            config: DenoiserConfig {
                vocab,
                seq_len: len,
                width: flags.width,
                depth: flags.depth,
                heads: flags.heads,
                mlp_ratio: flags.mlp_ratio,
                time_features: 64,
                num_classes,
                activation: FfActivation::Silu,
                kappa: flags.kappa,
                noise: flags.noise,
            },
            optimizer: AdamWConfig::new(
                Schedule {
                    lr: flags.lr,
                    warmup: flags.warmup,
                    decay: flags.decay,
                    total: flags.steps,
                },
                flags.weight_decay,
            ),
            batch: flags.batch,
            seed: common.seed,
            ema: flags.ema,
            label_dropout: if num_classes > 0 {
                flags.label_dropout
            } else {
                0.0
            },
            loop_opts,
        },
    };
    if opts.config.num_classes != num_classes {
        usage_bail!(
            "the checkpoint was trained with {} classes, the data give {num_classes}",
            opts.config.num_classes
        );
    }
    let fitted = fit::fit(&opts, &data, ckpt.as_ref(), &device)?;
    checkpoint::save_model(&common.output, &fitted.config, &fitted.state)?;
    let s = &fitted.summary;
    if s.steps > 0 {
        common.say(format!(
            "{} steps in {:.1} s ({:.1} ms/step), final loss {:.4} nats/token",
            s.steps,
            s.seconds,
            1000.0 * s.seconds / s.steps as f64,
            s.last_loss
        ));
    }
    Ok(())
}
