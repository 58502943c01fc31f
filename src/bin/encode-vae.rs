//! encode-vae: images -> latents through a trained VAE's encoder q(z | x) (notes section 6).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::npy;
use flowpipe::nn::vae::{self, Encoding};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Encode (N, C, H, W) images into scaled latents (N, k, h, w) with a VAE's encoder.
///
/// `--mean` writes scale * mu(x) (deterministic); `--sample` writes scale * (mu + sigma eps),
/// eps of image i from the stream (--seed, i), so any --batch gives the same bytes. The scale
/// factor comes from the model file and makes the training latents unit-variance. Images are
/// encoded --batch at a time, so the network's memory stays bounded on the whole data set.
#[derive(Parser, Debug)]
#[command(
    name = "encode-vae",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  encode-vae train.npy --model vae.safetensors --mean -o latents.npy"
)]
struct Args {
    /// Images (N, C, H, W) .npy, shaped as the VAE was trained; `-` reads stdin
    #[arg(default_value = "-", value_name = "IMAGES")]
    input: String,
    /// The VAE model file (from fit-vae)
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Write the posterior means
    #[arg(long, conflicts_with = "sample")]
    mean: bool,
    /// Write posterior samples (seeded by --seed and the image index)
    #[arg(long)]
    sample: bool,
    /// Index of the first image, whose posterior stream --sample uses (to encode a large set
    /// in shards)
    #[arg(long, default_value_t = 0, requires = "sample")]
    first: u64,
    /// Images per forward pass
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    batch: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !args.mean && !args.sample {
        usage_bail!("say what to write: --mean (posterior means) or --sample (posterior draws)");
    }
    let (model, images, _) =
        vae::open_with_batch(&args.model, &args.input, vae::Side::Images, &device)?;
    let how = match args.mean {
        true => Encoding::Mean,
        false => Encoding::Sample {
            seed: args.common.seed,
            first: args.first,
        },
    };
    let z = vae::encode_all(&model, &images, args.batch, how, &device)?;
    npy::write(&args.common.output, &z)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("encode-vae", run)
}
