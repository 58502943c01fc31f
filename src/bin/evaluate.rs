//! evaluate: how far generated samples are from reference samples (energy distance, RBF MMD^2,
//! sliced Wasserstein-2), as one JSON object. See `flowpipe::eval` for the formulas.

use anyhow::Context;
use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::eval::{self, Options};
use flowpipe::io::{self, npy};
use flowpipe::{usage_bail, Result};
use ndarray::{Array2, ArrayD};
use std::process::ExitCode;

/// Compare generated samples with reference samples: energy distance, MMD^2 and sliced W2.
///
/// Both inputs are (N, D) .npy (further axes are flattened into D). Prints one JSON object
/// with each metric, its estimator and the sample counts used. Lower is closer; all are ~0
/// for samples of the same distribution.
#[derive(Parser, Debug)]
#[command(
    name = "evaluate",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-data moons --seed 2 -o ref.npy\n  \
                  sample-data moons --seed 1 | evaluate --reference ref.npy"
)]
struct Args {
    /// Generated samples, (N, D) .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "SAMPLES")]
    input: String,
    /// Reference samples, (M, D) .npy (e.g. fresh draws of p_data)
    #[arg(long, value_name = "PATH")]
    reference: String,
    /// Use at most this many samples of each set, a seeded random subset (the pairwise
    /// metrics cost O(N^2)); 0 uses all
    #[arg(long, default_value_t = 2000)]
    max_n: usize,
    /// Random directions of the sliced Wasserstein distance
    #[arg(long, default_value_t = 256)]
    projections: usize,
    #[command(flatten)]
    common: Common,
}

/// Reads an f32 .npy of samples and flattens it to (N, D), naming `name` in errors.
fn read_samples(path: &str, what: &str) -> Result<(Array2<f32>, Vec<usize>)> {
    let name = io::display_name(path);
    let arr: ArrayD<f32> = npy::read_f32(path).with_context(|| format!("reading {what}"))?;
    npy::expect_finite(&arr, &name)?;
    let shape = arr.shape().to_vec();
    let Some(&n) = shape.first() else {
        anyhow::bail!("{name} holds a scalar, expected {what} (N, D)");
    };
    let d = shape.iter().skip(1).product::<usize>();
    let flat = arr
        .into_shape_with_order((n, d))
        .with_context(|| format!("{name}: cannot view {what} as (N, D)"))?;
    Ok((flat, shape))
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    if args.max_n == 1 {
        usage_bail!("--max-n must be 0 (all) or at least 2, got 1");
    }
    if args.projections == 0 {
        usage_bail!("--projections must be at least 1");
    }
    if args.input == "-" && args.reference == "-" {
        usage_bail!("the samples and --reference cannot both be stdin");
    }
    let (x, x_shape) = read_samples(&args.input, "generated samples")?;
    let (y, y_shape) = read_samples(&args.reference, "reference samples")?;
    let (x_name, y_name) = (
        io::display_name(&args.input),
        format!("the reference {}", io::display_name(&args.reference)),
    );
    eval::check_pair(&x_shape, &y_shape, &x_name, &y_name)?;
    let opts = Options {
        max_n: args.max_n,
        projections: args.projections,
        seed: args.common.seed,
    };
    args.common.explain(format!(
        "comparing {} {} with {} {}",
        x_name,
        npy::shape_str(&x_shape),
        y_name,
        npy::shape_str(&y_shape)
    ));
    let mut report = eval::compare(x.view(), y.view(), &opts);
    report["samples"] = serde_json::json!(io::display_name(&args.input));
    report["reference"] = serde_json::json!(io::display_name(&args.reference));
    io::write_json(&args.common.output, &report)
}

fn main() -> ExitCode {
    cli::main("evaluate", run)
}
