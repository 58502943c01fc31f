//! fit-vae: trains the variational autoencoder of latent diffusion (notes section 6,
//! Algorithm 6) on images; see `flowpipe::train::vae`.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::train::vae::{self, VaeFlags};
use flowpipe::Result;
use std::process::ExitCode;

/// Train a convolutional VAE on (N, C, H, W) images; write a model file with its latent scale.
///
/// Minimises the negative ELBO, Gaussian -log p(x | z) (learned or fixed decoder variance) plus
/// beta KL(q(z | x) || N(0, I)) with a linear KL warm-up. After training, the scale factor
/// 1 / std of the latent means over the training images goes into the model's config, so that
/// encode-vae writes latents of unit variance. Each step's minibatch and noise come from
/// streams keyed by (--seed, step): a resumed run ends bit-identical to an uninterrupted one.
#[derive(Parser, Debug)]
#[command(
    name = "fit-vae",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  import-data --dataset fashion-mnist --pad 32 -o train.npy\n  \
                  fit-vae --data train.npy --steps 2000 --log vae.jsonl --recon-grid recon.png -o vae.safetensors\n  \
                  encode-vae train.npy --model vae.safetensors --mean -o latents.npy"
)]
struct Args {
    #[command(flatten)]
    fit: VaeFlags,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    vae::run(&args.fit, &args.common)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("fit-vae", run)
}
