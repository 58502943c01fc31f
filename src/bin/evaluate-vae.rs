//! evaluate-vae: how well a VAE reconstructs images, as one JSON object.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io;
use flowpipe::nn::vae;
use flowpipe::Result;
use serde_json::json;
use std::process::ExitCode;

/// Reconstruction error of a VAE on (N, C, H, W) images, with the mean-image baseline.
///
/// Writes JSON {recon_mse, mean_image_mse, kl, n, latent_std, scale_factor}: recon_mse is the
/// mean over pixels of (x - D(mu(x)))^2, mean_image_mse the same for predicting every image by
/// the set's mean image, kl the mean KL(q(z | x) || N(0, I)) per image in nats.
#[derive(Parser, Debug)]
#[command(
    name = "evaluate-vae",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  evaluate-vae test.npy --model vae.safetensors -o vae-metrics.json"
)]
struct Args {
    /// Images (N, C, H, W) .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "IMAGES")]
    input: String,
    /// The VAE model file (from fit-vae)
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Images per forward pass
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    batch: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup_text()?;
    let (model, images, name) =
        vae::open_with_batch(&args.model, &args.input, vae::Side::Images, &device)?;
    if images.shape()[0] == 0 {
        anyhow::bail!("{name} holds no images");
    }
    let s = vae::recon_stats(&model, &images, args.batch, &device)?;
    let std = vae::latent_std(&model, &images, args.batch, &device)?;
    let out = json!({
        "recon_mse": s.recon_mse,
        "mean_image_mse": s.mean_image_mse,
        "kl": s.kl,
        "n": s.n,
        "latent_std": std,
        "scale_factor": model.config.scale_factor,
        "images": name,
    });
    io::write_json(&args.common.output, &out)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("evaluate-vae", run)
}
