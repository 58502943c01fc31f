//! fit-noisy-classifier: the time-conditioned classifier p_phi(y | x_t, t) of classifier guidance
//! (notes section 5), trained on x_t along a Gaussian path; a model file of kind
//! `noisy-classifier` for `guide --classifier`.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::{self, npy};
use flowpipe::nn::noisy::{NoisyArch, NoisyConfig};
use flowpipe::paths::{Path, TimeDensity};
use flowpipe::train::checkpoint;
use flowpipe::train::classify::{self, Labelled};
use flowpipe::train::driver::PathArg;
use flowpipe::train::flags::{self, CheckpointFlags, LogFlags};
use flowpipe::train::losses::Dataset;
use flowpipe::train::noisy::{self as noisy, NoisyFit};
use flowpipe::{usage_bail, Result};
use serde_json::json;
use std::process::ExitCode;

/// Train a noisy, time-conditioned classifier p(y | x_t, t) for classifier guidance.
///
/// Each step draws a minibatch (z, y), times t from --time-density and x_t = alpha_t z + beta_t eps
/// along --path (use the flow model's path: guidance refuses another), and minimises the
/// cross-entropy. Points (N, D) get an MLP (`tmlp`), images or latents (N, C, H, W) a small CNN
/// (`tcnn`); t enters as t and --time-features Fourier pairs. With --test-data, prints
/// {"test_accuracy": {t: accuracy at t = .25, .5, .75, 1}, ...} as JSON on stderr.
#[derive(Parser, Debug)]
#[command(
    name = "fit-noisy-classifier",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  fit-noisy-classifier --data x.npy --labels y.npy --path condot -o noisy.safetensors\n  \
guide --model unconditional.safetensors --classifier noisy.safetensors --classifier-scale 2 --each 100 -o g.json"
)]
struct Args {
    /// Training data, (N, D) points or (N, C, H, W) images or latents, .npy
    #[arg(long, value_name = "PATH")]
    data: String,
    /// Training labels (N,) i64, .npy
    #[arg(long, value_name = "PATH")]
    labels: String,
    /// Held-out data to measure accuracy on
    #[arg(long, value_name = "PATH", requires = "test_labels")]
    test_data: Option<String>,
    /// Held-out labels
    #[arg(long, value_name = "PATH", requires = "test_data")]
    test_labels: Option<String>,
    /// Classes [default: 1 + the largest training label, at least 2]
    #[arg(long)]
    classes: Option<usize>,
    /// The Gaussian path of x_t (the flow model's)
    #[arg(long, value_enum, default_value = "condot")]
    path: PathArg,
    /// Density of the training times: uniform, logit-normal[:M,S] or mode:S
    #[arg(long, value_name = "DENSITY", default_value = "uniform")]
    time_density: TimeDensity,
    /// Fourier frequencies of t
    #[arg(long, default_value_t = 4, value_name = "K")]
    time_features: usize,
    /// Points: hidden widths of the MLP
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "128,128,128",
        value_name = "H,H,..."
    )]
    hidden: Vec<usize>,
    /// Images: channels of the stride-2 convolutions (multiples of 8)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "32,64",
        value_name = "C,C,..."
    )]
    channels: Vec<usize>,
    /// Images: width of the penultimate features
    #[arg(long, default_value_t = 128, value_parser = at_least_1::<usize>)]
    features: usize,
    /// Optimiser steps
    #[arg(long, default_value_t = 2000, value_parser = at_least_1::<u64>)]
    steps: u64,
    /// Minibatch size
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    batch: usize,
    /// Peak learning rate (cosine decay to 0 at the last step)
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Decoupled weight decay (AdamW)
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[command(flatten)]
    logging: LogFlags,
    #[command(flatten)]
    checkpoints: CheckpointFlags,
    #[command(flatten)]
    common: Common,
}

/// Reads samples (N, ...) and their labels (N,).
fn read_labelled(data: &str, labels: &str) -> Result<Labelled> {
    let name = io::display_name(data);
    let arr = npy::read_f32(data)?;
    if !matches!(arr.ndim(), 2 | 4) {
        anyhow::bail!(
            "expected points (N, D) or images (N, C, H, W), got {} in {name}",
            npy::shape_str(arr.shape())
        );
    }
    let y = npy::read_i64(labels)?;
    Labelled::new(Dataset::new(arr, &name)?, &y, &io::display_name(labels))
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    flowpipe::train::check_num_classes("--classes", args.classes)?;
    args.logging.check()?;
    args.checkpoints.check()?;
    flags::check_lr(args.lr)?;
    flags::check_weight_decay(args.weight_decay)?;
    if args.hidden.contains(&0) || args.channels.iter().any(|&c| c == 0 || c % 8 != 0) {
        usage_bail!("--hidden must be positive and --channels multiples of 8");
    }
    let Path::Gaussian(path) = args.path.path() else {
        usage_bail!("--path must be Gaussian (condot, sqrt, cosine or vp)");
    };
    cli::one_stdin([Some(&args.data), Some(&args.labels)])?;
    let train = read_labelled(&args.data, &args.labels)?;
    let test = match (&args.test_data, &args.test_labels) {
        (Some(x), Some(y)) => Some(read_labelled(x, y)?),
        _ => None,
    };
    let classes = classify::class_count(&train, test.as_ref(), args.classes)?;
    let arch = match train.images.shape.len() {
        1 => NoisyArch::Mlp {
            hidden: args.hidden.clone(),
        },
        _ => NoisyArch::Cnn {
            channels: args.channels.clone(),
            features: args.features,
            groups: 8,
        },
    };
    let opts = NoisyFit {
        config: NoisyConfig {
            data_shape: train.images.shape.clone(),
            arch,
            time_features: args.time_features,
            num_classes: classes,
            path,
        },
        optimizer: classify::cosine_adamw(args.lr, args.steps, args.weight_decay),
        time: args.time_density,
        batch: args.batch,
        seed: args.common.seed,
        loop_opts: classify::loop_options(
            args.steps,
            &args.logging,
            &args.checkpoints,
            args.common.quiet,
        ),
    };
    let fitted = noisy::fit(&opts, &train, test.as_ref(), &device)?;
    checkpoint::save_model(&args.common.output, &fitted.config, &fitted.state)?;
    let report = classify::report(
        &fitted.summary,
        json!(fitted.test_accuracy),
        test.as_ref().map(|t| t.images.n),
    );
    args.common.say(report.to_string());
    Ok(())
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("fit-noisy-classifier", run)
}
