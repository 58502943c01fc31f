//! sample-data: N samples from a 2D toy p_data (moons, circles, checkerboard, ...), the data
//! end (t = 1) of Lab 2's flows.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::data::{self, toy};
use flowpipe::io::npy;
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Draw N samples of a toy data set as an (N, 2) f32 .npy, and its labels as (N,) int64.
///
/// Sample i depends only on (--seed, i): the first 10 of `-n 1000` equal `-n 10`.
#[derive(Parser, Debug)]
#[command(
    name = "sample-data",
    version,
    allow_negative_numbers = true,
    after_help = format!(
        "{}\n\nExample:\n  sample-data moons:noise=0.1 -n 2000 --seed 1 --labels y.npy \
         | evaluate --reference ref.npy",
        toy::HELP
    )
)]
struct Args {
    /// Data set: NAME or NAME:key=value,... (the sets and their defaults are listed below)
    #[arg(value_name = "DATASET", allow_hyphen_values = true)]
    dataset: String,
    /// Number of samples
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// Also write each sample's class label, an (N,) int64 .npy [default: not written]
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// Index of the first sample (to draw a large set in parts)
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    flowpipe::io::check_output_opt(&args.labels, true)?;
    let dataset = data::parse(&args.dataset)?;
    if let Some(path) = &args.labels {
        if !dataset.has_labels() {
            usage_bail!("--labels: data set '{}' has no labels", args.dataset);
        }
        if path == "-" && args.common.output == "-" {
            usage_bail!("--labels and -o cannot both be stdout");
        }
    }
    args.common.explain(format!(
        "drawing samples {}..{} of {}",
        args.first,
        args.first + args.n as u64,
        dataset.describe()
    ));
    let samples = data::sample(dataset.as_ref(), args.n, args.common.seed, args.first);
    let mut outputs = flowpipe::io::Outputs::new();
    if let (Some(path), Some(labels)) = (&args.labels, samples.labels) {
        outputs.add(path, &npy::encode(&labels.into_dyn())?, true)?;
    }
    outputs.add(
        &args.common.output,
        &npy::encode(&samples.points.into_dyn())?,
        true,
    )?;
    outputs.commit()
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("sample-data", run)
}
