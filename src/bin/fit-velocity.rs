//! fit-velocity: conditional flow matching (notes eq. 26/31, Algorithm 3) of a velocity field
//! u_theta(x, t) on (N, D) points, or u_theta(x, t | y) on labelled points or images with label
//! dropout for classifier-free guidance (notes Algorithm 5).

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::paths::{GaussianPath, Param, Path};
use flowpipe::train::coupling::Coupling;
use flowpipe::train::driver::{self, FitFlags, FitSpec, Objective, PathArg};
use flowpipe::Result;
use std::process::ExitCode;

/// Train a velocity field u_theta(x, t) by conditional flow matching; write a model file.
///
/// Regresses the network (--arch: an MLP on points, a U-Net or DiT on images (N, C, H, W)) on
/// the conditional vector field of the chosen probability path,
/// || u_theta(x_t, t) - (d_alpha z + d_beta eps) ||^2, with z from --data, eps ~ N(0, I) (or
/// x_0 from --source and the linear interpolant, target z - x_0) and t ~ U[0, 1). With
/// --labels the network also sees each sample's class, replaced by the null label with
/// probability --label-dropout, so that `guide` can steer it (classifier-free guidance).
/// Each step's minibatch, times and noise come from streams keyed by (--seed, step), so a run
/// resumed from a checkpoint ends bit-identical to an uninterrupted one.
#[derive(Parser, Debug)]
#[command(
    name = "fit-velocity",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 5000 --std 0.5 --seed 1 -o data.npy\n  fit-velocity --data data.npy --steps 2000 --ema 0.999 --log loss.jsonl -o flow.safetensors\n\
Images with labels (classifier-free guidance):\n  fit-velocity --data images.npy --labels labels.npy --arch unet --channels 32,64,128 \
--label-dropout 0.1 --ema 0.999 --sample-grid progress.png -o unet.safetensors"
)]
struct Args {
    #[command(flatten)]
    fit: FitFlags,
    /// Probability path [default: condot, or linear-interp with --source]
    #[arg(long, value_enum)]
    path: Option<PathArg>,
    /// Source points x_0 (M, D) for the linear interpolant, instead of N(0, I) noise
    #[arg(long, value_name = "PATH")]
    source: Option<String>,
    /// Pairing of x_0 with the data rows z of each minibatch. `ot`: minibatch optimal transport,
    /// x_0 reordered to minimise sum ||z - x_0||^2 (Tong et al. 2023): straighter paths, better
    /// samples in few ODE steps. It costs O(B^2 D) distances and, for B <= 256, an exact O(B^3)
    /// assignment per step; above, a Sinkhorn plan (O(B^2) per iteration) with each z's x_0
    /// drawn from it. For the 2D MLP (3 x 256) it about doubles a step at B = 256 and 512, and
    /// triples it at B = 1024. Labels stay with their data rows [default: independent]
    #[arg(long, value_enum)]
    coupling: Option<Coupling>,
    /// The stochastic interpolant (Albergo et al. 2023) between --source and the data: x_t =
    /// (1 - t) x_0 + t z + a t (1 - t) xi with xi ~ N(0, I), target z - x_0 + a (1 - 2t) xi
    /// [default: 0, the plain linear interpolant]
    #[arg(long, value_name = "A", requires = "source")]
    interpolant_noise: Option<f64>,
    /// What to learn. `shortcut`: a shortcut model from the data (Frans et al. 2024; see
    /// flowpipe::train::shortcut), u(x, t, d) for jumps of any size d, written as a `flowmap`
    /// model: sample it with `sample-fewstep --steps K` (1 to 128 jumps). `meanflow`: the same
    /// network and file, regressed on the MeanFlow identity u = v + d du/dt (Geng et al. 2025;
    /// see flowpipe::train::meanflow), a quarter of each batch with d > 0. `consistency`:
    /// consistency training (Song et al. 2023; flowpipe::train::consistency), f(x_t, t) -> the
    /// trajectory's end, a `consistency` model for `sample-fewstep`. All need a path from
    /// N(0, I) (not ve) and no --sample-grid; --resume keeps the objective
    /// [default: flow-matching]
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let spec = FitSpec {
        kind: "velocity",
        param: None,
        default_param: Param::Velocity,
        path: args.path,
        default_path: Path::Gaussian(GaussianPath::CONDOT),
        source: args.source,
        coupling: args.coupling,
        interpolant_noise: args.interpolant_noise,
        objective: args.objective,
    };
    driver::run(spec, &args.fit, &args.common)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("fit-velocity", run)
}
