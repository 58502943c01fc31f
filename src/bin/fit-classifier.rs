//! fit-classifier: a small CNN classifier p_phi(y | x) trained by cross-entropy on labelled
//! images, saved as a model file of kind `classifier` (the yardstick of `evaluate --classifier`).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::{self, npy};
use flowpipe::nn::classifier::ClassifierConfig;
use flowpipe::train::checkpoint;
use flowpipe::train::classify::{self, FitOptions, Labelled};
use flowpipe::train::flags::{self, CheckpointFlags, LogFlags};
use flowpipe::train::losses::Dataset;
use flowpipe::{usage_bail, Result};
use serde_json::json;
use std::process::ExitCode;

/// Train a CNN image classifier by cross-entropy; write a model file, report test accuracy.
///
/// Stride-2 convolutions (GroupNorm, SiLU), a linear layer of penultimate features, a linear
/// head. Minibatches are drawn with replacement from streams keyed by (--seed, step). With
/// --test-data, prints {"test_accuracy", ...} as JSON on stderr (and in --log) at the end.
#[derive(Parser, Debug)]
#[command(
    name = "fit-classifier",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  import-data --dataset fashion-mnist --split train -o x.npy --labels-out y.npy\n  \
                  import-data --dataset fashion-mnist --split test -o tx.npy --labels-out ty.npy\n  \
                  fit-classifier --data x.npy --labels y.npy --test-data tx.npy --test-labels ty.npy -o classifier.safetensors"
)]
struct Args {
    /// Training images (N, C, H, W), .npy
    #[arg(long, value_name = "PATH")]
    data: String,
    /// Training labels (N,) i64, .npy
    #[arg(long, value_name = "PATH")]
    labels: String,
    /// Held-out images to measure accuracy on
    #[arg(long, value_name = "PATH", requires = "test_labels")]
    test_data: Option<String>,
    /// Held-out labels
    #[arg(long, value_name = "PATH", requires = "test_data")]
    test_labels: Option<String>,
    /// Classes [default: 1 + the largest training label]
    #[arg(long)]
    classes: Option<usize>,
    /// Channels of the stride-2 convolutions
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "32,64",
        value_name = "C,C,..."
    )]
    channels: Vec<usize>,
    /// Width of the penultimate features
    #[arg(long, default_value_t = 128, value_parser = at_least_1::<usize>)]
    features: usize,
    /// Optimiser steps (1500 x 128 = 3.2 epochs of Fashion-MNIST: 90.7% test accuracy)
    #[arg(long, default_value_t = 1500, value_parser = at_least_1::<u64>)]
    steps: u64,
    /// Minibatch size
    #[arg(long, default_value_t = 128, value_parser = at_least_1::<usize>)]
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

/// Reads images (N, C, H, W) and their labels (N,).
fn read_labelled(images: &str, labels: &str, what: &str) -> Result<Labelled> {
    let name = io::display_name(images);
    let arr = npy::read_f32(images)?;
    npy::expect_shape(arr.shape(), "N,C,H,W", &format!("{what} images"), &name)?;
    let y = npy::read_i64(labels)?;
    Labelled::new(Dataset::new(arr, &name)?, &y, &io::display_name(labels))
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    flowpipe::train::check_num_classes("--classes", args.classes)?;
    args.logging.check()?;
    args.checkpoints.check()?;
    flags::check_lr(args.lr)?;
    if args.channels.is_empty() || args.channels.iter().any(|&c| c == 0 || c % 8 != 0) {
        usage_bail!("--channels must be multiples of 8, got {:?}", args.channels);
    }
    flags::check_weight_decay(args.weight_decay)?;
    cli::one_stdin([Some(&args.data), Some(&args.labels)])?;
    let train = read_labelled(&args.data, &args.labels, "training")?;
    let test = match (&args.test_data, &args.test_labels) {
        (Some(x), Some(y)) => Some(read_labelled(x, y, "test")?),
        _ => None,
    };
    let classes = classify::class_count(&train, test.as_ref(), args.classes)?;
    let s = &train.images.shape;
    let opts = FitOptions {
        config: ClassifierConfig {
            channels: args.channels.clone(),
            features: args.features,
            ..ClassifierConfig::small([s[0], s[1], s[2]], classes)
        },
        optimizer: classify::cosine_adamw(args.lr, args.steps, args.weight_decay),
        batch: args.batch,
        seed: args.common.seed,
        loop_opts: classify::loop_options(
            args.steps,
            &args.logging,
            &args.checkpoints,
            args.common.quiet,
        ),
    };
    let fitted = classify::fit(&opts, &train, test.as_ref(), &device)?;
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
    cli::main("fit-classifier", run)
}
