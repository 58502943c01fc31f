//! fit-score: denoising score matching (notes Theorem 22) of an MLP score s_theta(x, t), or of
//! a noise predictor eps_theta(x, t) (the DDPM form), on (N, D) points.

use clap::{Parser, ValueEnum};
use flowpipe::cli::{self, Common};
use flowpipe::paths::{GaussianPath, Param, Path};
use flowpipe::train::driver::{self, FitFlags, FitSpec, PathArg};
use flowpipe::Result;
use std::process::ExitCode;

/// Train a score network by denoising score matching on a Gaussian path; write a model file.
///
/// --param score regresses s_theta(x_t, t) on the conditional score -eps / beta_t;
/// --param noise regresses eps_theta(x_t, t) on eps (the same loss weighted by beta_t^2, steadier
/// near t = 1); loaders turn it into the score -eps_theta / beta_t. x_t = alpha_t z + beta_t eps,
/// z from --data, eps ~ N(0, I), t ~ U[0, 1). Resuming from a checkpoint is bit-identical.
/// There is no --coupling (fit-velocity's minibatch OT): the conditional score -eps / beta_t
/// is the score of p_t(x | z) only when eps is drawn independently of z.
#[derive(Parser, Debug)]
#[command(
    name = "fit-score",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 5000 --std 0.5 --seed 1 -o data.npy\n  fit-score --data data.npy --param noise --steps 2000 -o score.safetensors"
)]
struct Args {
    #[command(flatten)]
    fit: FitFlags,
    /// What the network predicts [default: score]
    #[arg(long, value_enum)]
    param: Option<ParamArg>,
    /// Gaussian probability path [default: sqrt]
    #[arg(long, value_enum)]
    path: Option<PathArg>,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ParamArg {
    /// the score grad log p_t(x)
    Score,
    /// the noise eps (DDPM)
    Noise,
}

fn run(args: Args) -> Result<()> {
    let spec = FitSpec {
        kind: "score",
        param: args.param.map(|p| match p {
            ParamArg::Score => Param::Score,
            ParamArg::Noise => Param::Noise,
        }),
        default_param: Param::Score,
        path: args.path,
        default_path: Path::Gaussian(GaussianPath::SQRT),
        source: None,
        coupling: None,
        interpolant_noise: None,
        objective: None,
    };
    driver::run(spec, &args.fit, &args.common)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("fit-score", run)
}
