//! The `fit-denoiser` driver: its flags, their checks, and the order of work of every tool
//! (check flags, read and check every input, train, write the model). The training itself is
//! [`super::train`].

use super::train::{self, FitOptions, TokenData};
use super::{tokens, DenoiserConfig, Kappa, Noise};
use crate::cli::at_least_1;
use crate::cli::Common;
use crate::io;
use crate::nn::FfActivation;
use crate::paths::TimeDensity;
use crate::train::flags::{OptimFlags, RunFlags, DEFAULT_LR};
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
    #[arg(long, value_parser = at_least_1::<usize>)]
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
    /// Total optimiser steps [default: 2000, or the checkpoint's when resuming]
    #[arg(long, value_parser = at_least_1::<u64>)]
    pub steps: Option<u64>,
    /// Minibatch size [default: 128]
    #[arg(long, value_parser = at_least_1::<usize>)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub optim: OptimFlags,
    /// Steps of linear warm-up [default: 100]
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up [default: cosine]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Density of the training times t (stratified through its quantile): `uniform`,
    /// `logit-normal[:M,S]` or `mode:S`, as for fit-velocity [default: uniform]
    #[arg(long, value_name = "DENSITY")]
    pub time_density: Option<TimeDensity>,
    #[command(flatten)]
    pub run: RunFlags,
}

/// Trains the denoiser `flags` describe and writes it to `common.output`.
pub fn run(flags: &DenoiserFlags, common: &Common) -> Result<()> {
    let device = common.setup()?;
    check_flags(flags)?;
    let loop_opts = flags
        .run
        .loop_options(flags.steps.unwrap_or(STEPS), common.quiet);
    let ckpt = match &flags.run.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let vocab = match (&flags.vocab, &ckpt) {
        (Some(v), _) => tokens::read_vocab(v)?,
        (None, Some(c)) => tokens::read_vocab(flags.run.resume.as_deref().unwrap_or(&c.name))?,
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
            let opts = train::resumed_options(c, flags.steps, loop_opts)?;
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
    let fitted = train::fit(&opts, &data, ckpt.as_ref(), &device)?;
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
const WARMUP: u64 = 100;
const LABEL_DROPOUT: f64 = 0.1;
const STEPS: u64 = 2000;

/// Usage errors for flags out of range.
fn check_flags(flags: &DenoiserFlags) -> Result<()> {
    flags.optim.check()?;
    flags.run.check()?;
    let width = flags.width.unwrap_or(WIDTH);
    let heads = flags.heads.unwrap_or(HEADS);
    if flags.run.resume.is_none() && (heads == 0 || !width.is_multiple_of(heads)) {
        usage_bail!("--heads {heads} must divide --width {width}");
    }
    if !(0.0..1.0).contains(&flags.label_dropout.unwrap_or(LABEL_DROPOUT)) {
        usage_bail!("--label-dropout must be in [0, 1)");
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
                lr: flags.optim.lr.unwrap_or(DEFAULT_LR),
                warmup: flags.warmup.unwrap_or(WARMUP),
                decay: flags.decay.unwrap_or(Decay::Cosine),
                total: flags.steps.unwrap_or(STEPS),
            },
            flags.optim.weight_decay.unwrap_or(0.0),
        ),
        batch: flags.batch.unwrap_or(BATCH),
        seed: common.seed,
        ema: flags.optim.ema,
        label_dropout: if num_classes > 0 {
            flags.label_dropout.unwrap_or(LABEL_DROPOUT)
        } else {
            0.0
        },
        time: flags.time_density.unwrap_or(TimeDensity::Uniform),
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
    flags
        .optim
        .check_resumed(s.lr, o.optimizer.weight_decay, o.ema, name)?;
    checkpoint::same("--warmup", &flags.warmup, &s.warmup, name)?;
    checkpoint::same("--decay", &flags.decay, &s.decay, name)?;
    checkpoint::same(
        "--time-density",
        &flags.time_density.map(|t| t.name()),
        &o.time.name(),
        name,
    )?;
    if c.num_classes > 0 {
        checkpoint::same(
            "--label-dropout",
            &flags.label_dropout,
            &o.label_dropout,
            name,
        )?;
    }
    // --seed 0 is the default: only another seed contradicts the checkpoint.
    let seed = (common.seed != 0).then_some(common.seed);
    checkpoint::same("--seed", &seed, &o.seed, name)?;
    Ok(())
}
