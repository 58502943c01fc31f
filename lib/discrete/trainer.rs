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
    /// Probability of dropping a label to null [default: 0.1]
    #[arg(long, value_name = "ETA")]
    pub label_dropout: Option<f64>,
    /// The noise p_init at t = 0 [default: mask]
    #[arg(long, value_enum)]
    pub noise: Option<Noise>,
    /// The scheduler kappa_t [default: linear]
    #[arg(long, value_enum)]
    pub kappa: Option<Kappa>,
    /// Token width D [default: 128]
    #[arg(long)]
    pub width: Option<usize>,
    /// Transformer blocks [default: 4]
    #[arg(long)]
    pub depth: Option<usize>,
    /// Attention heads (must divide the width) [default: 4]
    #[arg(long)]
    pub heads: Option<usize>,
    /// Hidden width of the MLPs in multiples of D [default: 4]
    #[arg(long)]
    pub mlp_ratio: Option<usize>,
    /// Optimiser steps (the new total with --resume)
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Minibatch size [default: 128]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 1e-3]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps of linear warm-up [default: 100]
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up [default: cosine]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Decoupled weight decay (AdamW) [default: 0]
    #[arg(long)]
    pub weight_decay: Option<f64>,
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
    check_flags(flags)?;
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
        Some(c) => {
            let opts = fit::resumed_options(c, Some(flags.steps), loop_opts)?;
            check_resumed(flags, common, &opts, &c.name)?;
            opts
        }
        None => fresh_options(flags, common, vocab, len, num_classes, loop_opts),
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

/// The defaults of the optional flags (a resumed run takes the checkpoint's instead).
const WIDTH: usize = 128;
const DEPTH: usize = 4;
const HEADS: usize = 4;
const MLP_RATIO: usize = 4;
const BATCH: usize = 128;
const LR: f64 = 1e-3;
const WARMUP: u64 = 100;
const LABEL_DROPOUT: f64 = 0.1;

/// Usage errors for flags out of range.
fn check_flags(flags: &DenoiserFlags) -> Result<()> {
    let lr = flags.lr.unwrap_or(LR);
    if !(lr > 0.0 && lr.is_finite()) {
        usage_bail!("--lr must be positive, got {lr}");
    }
    let width = flags.width.unwrap_or(WIDTH);
    if flags.steps == 0
        || flags.batch == Some(0)
        || width == 0
        || flags.log_every == 0
        || flags.checkpoint_every == 0
    {
        usage_bail!(
            "--steps, --batch, --width, --log-every and --checkpoint-every must be at least 1"
        );
    }
    let heads = flags.heads.unwrap_or(HEADS);
    if flags.resume.is_none() && (heads == 0 || width % heads != 0) {
        usage_bail!("--heads {heads} must divide --width {width}");
    }
    if !(0.0..1.0).contains(&flags.label_dropout.unwrap_or(LABEL_DROPOUT))
        || flags.ema.is_some_and(|d| !(d > 0.0 && d < 1.0))
        || flags.weight_decay.is_some_and(|w| !(w >= 0.0))
    {
        usage_bail!(
            "--label-dropout must be in [0, 1), --ema in (0, 1) and --weight-decay at least 0"
        );
    }
    Ok(())
}

/// The options of a new run: the flags, their defaults where not given.
fn fresh_options(
    flags: &DenoiserFlags,
    common: &Common,
    vocab: tokens::Vocab,
    seq_len: usize,
    num_classes: usize,
    loop_opts: LoopOptions,
) -> FitOptions {
    FitOptions {
        config: DenoiserConfig {
            vocab,
            seq_len,
            width: flags.width.unwrap_or(WIDTH),
            depth: flags.depth.unwrap_or(DEPTH),
            heads: flags.heads.unwrap_or(HEADS),
            mlp_ratio: flags.mlp_ratio.unwrap_or(MLP_RATIO),
            time_features: 64,
            num_classes,
            activation: FfActivation::Silu,
            kappa: flags.kappa.unwrap_or(Kappa::Linear),
            noise: flags.noise.unwrap_or(Noise::Mask),
        },
        optimizer: AdamWConfig::new(
            Schedule {
                lr: flags.lr.unwrap_or(LR),
                warmup: flags.warmup.unwrap_or(WARMUP),
                decay: flags.decay.unwrap_or(Decay::Cosine),
                total: flags.steps,
            },
            flags.weight_decay.unwrap_or(0.0),
        ),
        batch: flags.batch.unwrap_or(BATCH),
        seed: common.seed,
        ema: flags.ema,
        label_dropout: if num_classes > 0 {
            flags.label_dropout.unwrap_or(LABEL_DROPOUT)
        } else {
            0.0
        },
        loop_opts,
    }
}

/// Usage errors for flags that contradict the checkpoint a run resumes (only --steps may
/// change), as fit-velocity and fit-vae do.
fn check_resumed(flags: &DenoiserFlags, common: &Common, o: &FitOptions, name: &str) -> Result<()> {
    let c = &o.config;
    let s = &o.optimizer.schedule;
    checkpoint::same("--width", &flags.width, &c.width, name)?;
    checkpoint::same("--depth", &flags.depth, &c.depth, name)?;
    checkpoint::same("--heads", &flags.heads, &c.heads, name)?;
    checkpoint::same("--mlp-ratio", &flags.mlp_ratio, &c.mlp_ratio, name)?;
    checkpoint::same("--noise", &flags.noise, &c.noise, name)?;
    checkpoint::same("--kappa", &flags.kappa, &c.kappa, name)?;
    checkpoint::same("--batch", &flags.batch, &o.batch, name)?;
    checkpoint::same("--lr", &flags.lr, &s.lr, name)?;
    checkpoint::same("--warmup", &flags.warmup, &s.warmup, name)?;
    checkpoint::same("--decay", &flags.decay, &s.decay, name)?;
    checkpoint::same(
        "--weight-decay",
        &flags.weight_decay,
        &o.optimizer.weight_decay,
        name,
    )?;
    checkpoint::same("--ema", &flags.ema.map(Some), &o.ema, name)?;
    if c.num_classes > 0 {
        checkpoint::same(
            "--label-dropout",
            &flags.label_dropout,
            &o.label_dropout,
            name,
        )?;
    }
    if common.seed != 0 && common.seed != o.seed {
        usage_bail!(
            "--seed {} differs from the checkpoint's {} in {name}: a resumed run keeps its settings (only --steps may change)",
            common.seed,
            o.seed
        );
    }
    Ok(())
}
