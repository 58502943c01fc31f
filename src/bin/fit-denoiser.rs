//! fit-denoiser: discrete diffusion / discrete flow matching (notes section 8): a token
//! transformer p_theta(x_1 | x_t) trained by cross-entropy along the mixture path.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::discrete::driver::{self, DenoiserFlags};
use flowpipe::Result;
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
    #[command(flatten)]
    flags: DenoiserFlags,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    driver::run(&args.flags, &args.common)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("fit-denoiser", run)
}
