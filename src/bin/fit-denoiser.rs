//! fit-denoiser: discrete diffusion / discrete flow matching (notes section 8): a token
//! transformer p_theta(x_1 | x_t) trained by cross-entropy along the mixture path.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::discrete::fit::{self, FitOptions, TokenData};
use flowpipe::discrete::{tokens, DenoiserConfig, Kappa, Noise};
use flowpipe::io::{self, npy};
use flowpipe::nn::FfActivation;
use flowpipe::train::optim::{AdamWConfig, Decay, Schedule};
use flowpipe::train::{checkpoint, keep_freed_memory, trainer::LoopOptions};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Train a denoiser over token sequences (masked or uniform discrete diffusion); write a model.
///
/// Each step draws sequences z from --data, times t ~ U[0, 1), and x_t keeping each token with
/// probability kappa_t, else [MASK] (--noise mask) or a uniform token (--noise uniform). The
/// loss is the cross-entropy of the clean tokens: on masked tokens weighted by
/// kappa'/(1 - kappa) (the ELBO, in nats per token) or on every token (uniform). With --labels
/// the model also sees each sequence's class, dropped to null with --label-dropout, for
/// guidance in simulate-ctmc. --resume continues a checkpoint's run (only --steps may change).
#[derive(Parser, Debug)]
#[command(
    name = "fit-denoiser",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  import-text words.txt --max-len 12 --vocab-out vocab.json -o words.npy\n  \
fit-denoiser --data words.npy --vocab vocab.json --steps 2000 --ema 0.999 --log loss.jsonl -o words.safetensors"
)]
struct Args {
    /// Training tokens (N, L) int64 .npy
    #[arg(long, value_name = "PATH")]
    data: String,
    /// The vocabulary JSON (import-text --vocab-out) [default: the checkpoint's with --resume]
    #[arg(long, value_name = "PATH", required_unless_present = "resume")]
    vocab: Option<String>,
    /// Class labels (N,) int64: a conditional model for classifier-free guidance
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// Probability of dropping a label to null
    #[arg(long, default_value_t = 0.1, value_name = "ETA")]
    label_dropout: f64,
    /// The noise p_init at t = 0
    #[arg(long, value_enum, default_value_t = Noise::Mask)]
    noise: Noise,
    /// The scheduler kappa_t
    #[arg(long, value_enum, default_value_t = Kappa::Linear)]
    kappa: Kappa,
    /// Token width D
    #[arg(long, default_value_t = 128)]
    width: usize,
    /// Transformer blocks
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Attention heads (must divide the width)
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Hidden width of the MLPs in multiples of D
    #[arg(long, default_value_t = 4)]
    mlp_ratio: usize,
    /// Optimiser steps (the new total with --resume)
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Minibatch size
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Steps of linear warm-up
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Learning rate after warm-up
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    decay: Decay,
    /// Decoupled weight decay (AdamW)
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// EMA of the weights with this decay (e.g. 0.999), used for sampling [default: off]
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// Write the loss curve as JSON lines {step, loss, lr, time_s} (`-`: stderr)
    #[arg(long, value_name = "PATH")]
    log: Option<String>,
    /// Steps between log lines
    #[arg(long, default_value_t = 100, value_name = "K")]
    log_every: u64,
    /// Checkpoint path ({step} is replaced by the step), written every --checkpoint-every steps
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<String>,
    /// Steps between checkpoints
    #[arg(long, default_value_t = 1000, value_name = "K")]
    checkpoint_every: u64,
    /// Continue the run of this checkpoint
    #[arg(long, value_name = "CKPT")]
    resume: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        usage_bail!("--lr must be positive, got {}", args.lr);
    }
    if args.steps == 0
        || args.batch == 0
        || args.width == 0
        || args.log_every == 0
        || args.checkpoint_every == 0
    {
        usage_bail!(
            "--steps, --batch, --width, --log-every and --checkpoint-every must be at least 1"
        );
    }
    if args.heads == 0 || args.width % args.heads != 0 {
        usage_bail!("--heads {} must divide --width {}", args.heads, args.width);
    }
    if !(0.0..1.0).contains(&args.label_dropout) || args.ema.is_some_and(|d| !(d > 0.0 && d < 1.0))
    {
        usage_bail!("--label-dropout must be in [0, 1) and --ema in (0, 1)");
    }
    keep_freed_memory();
    let loop_opts = LoopOptions {
        total_steps: args.steps,
        log: args.log.clone(),
        log_every: args.log_every,
        checkpoint: args.checkpoint.clone(),
        checkpoint_every: args.checkpoint_every,
        quiet: args.common.quiet,
        append_log: false,
    };
    let ckpt = match &args.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let vocab = match (&args.vocab, &ckpt) {
        (Some(v), _) => tokens::read_vocab(v)?,
        (None, Some(c)) => tokens::read_vocab(args.resume.as_deref().unwrap_or(&c.name))?,
        (None, None) => unreachable!("clap requires --vocab without --resume"),
    };
    let arr = tokens::read_tokens(&args.data, &vocab, None, false)?;
    let (n, len) = (arr.shape()[0], arr.shape()[1]);
    if n == 0 {
        anyhow::bail!("{} holds no sequences", io::display_name(&args.data));
    }
    let labels = match &args.labels {
        Some(p) => {
            let y = npy::read_i64(p)?;
            let name = io::display_name(p);
            npy::expect_shape(y.shape(), &format!("{n}"), "one label per sequence", &name)?;
            if let Some(v) = y.iter().find(|&&v| !(0..=i32::MAX as i64).contains(&v)) {
                anyhow::bail!("{name} holds the label {v}: labels must be 0 or more");
            }
            Some(y.iter().map(|&v| v as u32).collect::<Vec<u32>>())
        }
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
        name: io::display_name(&args.data),
    };
    let opts = match &ckpt {
        Some(c) => fit::resumed_options(c, Some(args.steps), loop_opts)?,
        None => FitOptions {
            config: DenoiserConfig {
                vocab,
                seq_len: len,
                width: args.width,
                depth: args.depth,
                heads: args.heads,
                mlp_ratio: args.mlp_ratio,
                time_features: 64,
                num_classes,
                activation: FfActivation::Silu,
                kappa: args.kappa,
                noise: args.noise,
            },
            optimizer: AdamWConfig::new(
                Schedule {
                    lr: args.lr,
                    warmup: args.warmup,
                    decay: args.decay,
                    total: args.steps,
                },
                args.weight_decay,
            ),
            batch: args.batch,
            seed: args.common.seed,
            ema: args.ema,
            label_dropout: if num_classes > 0 {
                args.label_dropout
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
    checkpoint::save_model(&args.common.output, &fitted.config, &fitted.state)?;
    let s = &fitted.summary;
    if s.steps > 0 {
        args.common.say(format!(
            "{} steps in {:.1} s ({:.1} ms/step), final loss {:.4} nats/token",
            s.steps,
            s.seconds,
            1000.0 * s.seconds / s.steps as f64,
            s.last_loss
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    cli::main("fit-denoiser", run)
}
