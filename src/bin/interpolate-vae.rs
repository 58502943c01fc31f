//! interpolate-vae: decoded straight lines in a VAE's latent space between pairs of images.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::io::npy;
use flowpipe::nn::vae;
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Encode pairs of images, interpolate their latent means linearly, decode every point.
///
/// For each pair A:B writes D((1 - s) mu(x_A) + s mu(x_B)) at --steps evenly spaced s from 0 to
/// 1, pair after pair: (pairs x steps, C, H, W), one grid row per pair with --cols STEPS.
#[derive(Parser, Debug)]
#[command(
    name = "interpolate-vae",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  interpolate-vae test.npy --model vae.safetensors --pairs 0:1,2:3 --steps 8 \\\n    | render-grid --cols 8 --range -1,1 --upscale 2 -o interp.png"
)]
struct Args {
    /// Images (N, C, H, W) .npy holding the pairs; `-` reads stdin
    #[arg(default_value = "-", value_name = "IMAGES")]
    input: String,
    /// The VAE model file (from fit-vae)
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Image index pairs A:B, comma separated
    #[arg(long, default_value = "0:1", value_delimiter = ',', value_parser = parse_pair)]
    pairs: Vec<(usize, usize)>,
    /// Points on each line, ends included (at least 2)
    #[arg(long, default_value_t = 8)]
    steps: usize,
    #[command(flatten)]
    common: Common,
}

fn parse_pair(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}' is not a pair A:B"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{v}' is not an index"))
    };
    Ok((n(a)?, n(b)?))
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if args.steps < 2 {
        usage_bail!("--steps must be at least 2, got {}", args.steps);
    }
    let (model, images, name) =
        vae::open_with_batch(&args.model, &args.input, vae::Side::Images, &device)?;
    let n = images.shape()[0];
    if let Some((a, b)) = args.pairs.iter().find(|(a, b)| *a >= n || *b >= n) {
        usage_bail!("--pairs {a}:{b} names an image past the {n} in {name}");
    }
    // Only the images the pairs name go through the encoder.
    let mut used: Vec<usize> = args.pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    used.sort_unstable();
    used.dedup();
    let pick = images.select(ndarray::Axis(0), &used);
    let at = |i: usize| used.binary_search(&i).expect("index in used");
    let pairs: Vec<(usize, usize)> = args.pairs.iter().map(|&(a, b)| (at(a), at(b))).collect();
    let out = vae::interpolate_pairs(&model, &pick, &pairs, args.steps, &device)?;
    npy::write(&args.common.output, &out)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("interpolate-vae", run)
}
