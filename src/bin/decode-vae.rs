//! decode-vae: latents -> images through a trained VAE's decoder mean (notes section 6).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::npy;
use flowpipe::nn::vae;
use flowpipe::Result;
use std::process::ExitCode;

/// Decode scaled latents (N, k, h, w) into images (N, C, H, W): the decoder mean D(z / scale).
///
/// The latents are those encode-vae writes (or a flow model samples): multiplied by the model's
/// scale factor, which is divided out here. Decoded --batch at a time.
#[derive(Parser, Debug)]
#[command(
    name = "decode-vae",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  decode-vae latents.npy --model vae.safetensors | render-grid --range -1,1 -o grid.png"
)]
struct Args {
    /// Latents (N, k, h, w) .npy, shaped as the VAE's latents; `-` reads stdin
    #[arg(default_value = "-", value_name = "LATENTS")]
    input: String,
    /// The VAE model file (from fit-vae)
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Latents per forward pass
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    batch: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    let (model, latents, _) =
        vae::open_with_batch(&args.model, &args.input, vae::Side::Latents, &device)?;
    let x = vae::decode_all(&model, &latents, args.batch, &device)?;
    npy::write(&args.common.output, &x)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("decode-vae", run)
}
