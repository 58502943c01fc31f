//! distill: train a few-step generator (the student) from a trained velocity model (the
//! teacher) by reflow, flow-map (shortcut) or consistency distillation (notes section 7; see
//! `flowpipe::distill` for the equations and papers).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::distill::driver::{self, BankOptions};
use flowpipe::distill::{Method, TeacherSolver, TrainOptions};
use flowpipe::io::model;
use flowpipe::paths::TimeDensity;
use flowpipe::train::checkpoint;
use flowpipe::train::flags::{self, LogFlags};
use flowpipe::train::optim::Decay;
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Distil a velocity model into a student that samples in 1 to 4 steps; write its model file.
///
/// Runs the teacher's ODE from --trajectories noise samples over --teacher-steps steps (guided
/// at --guidance w for a conditional teacher, labels 0..K-1 in turn), then trains the student
/// (the teacher's architecture, starting from its weights) on those trajectories: reflow
/// refits a velocity on the straight (noise, output) couplings (a `velocity` model); flowmap
/// learns jumps u(x, s, d) by shortcut self-consistency (a `flowmap` model); consistency
/// learns f(x_t, t) = x_1 (a `consistency` model). Sample any of them with `sample-fewstep`.
#[derive(Parser, Debug)]
#[command(
    name = "distill",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  distill --teacher flow.safetensors --method flowmap --teacher-steps 64 --steps 2000 -o fm.safetensors\n  \
sample-noise -n 1000 --seed 1 | sample-fewstep --model fm.safetensors --steps 2 | evaluate --reference ref.npy"
)]
struct Args {
    /// The teacher: a velocity model file (fit-velocity), or a checkpoint of one
    #[arg(long, value_name = "PATH")]
    teacher: String,
    /// Distillation method
    #[arg(long, value_enum)]
    method: Method,
    /// Classifier-free guidance scale w baked into the student (conditional teachers only)
    /// [default: 1, the conditional field]
    #[arg(long, value_name = "W")]
    guidance: Option<f64>,
    /// Teacher steps from t = 0 to 1 (a power of two for flowmap)
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = at_least_1::<usize>)]
    teacher_steps: usize,
    /// The teacher's ODE solver
    #[arg(long, value_enum, default_value_t = TeacherSolver::Heun)]
    teacher_solver: TeacherSolver,
    /// Teacher trajectories to learn from
    #[arg(long, default_value_t = 4096, value_name = "M", value_parser = at_least_1::<usize>)]
    trajectories: usize,
    /// Trajectories integrated at once
    #[arg(long, default_value_t = 1024, value_name = "B", value_parser = at_least_1::<usize>)]
    chunk: usize,
    /// Optimiser steps
    #[arg(long, default_value_t = 2000, value_parser = at_least_1::<u64>)]
    steps: u64,
    /// Minibatch size
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Steps of linear learning-rate warm-up
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Learning rate after warm-up
    #[arg(long, value_enum, default_value_t = Decay::Cosine)]
    decay: Decay,
    /// Keep an EMA of the weights with this decay and sample with it [default: off]
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// Density of the training times (for flowmap and consistency, of the grid index at
    /// floor(t N)): `uniform`, `logit-normal[:M,S]` or `mode:S`, as for fit-velocity
    #[arg(long, value_name = "DENSITY", default_value = "uniform")]
    time_density: TimeDensity,
    #[command(flatten)]
    logging: LogFlags,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    check_flags(&args)?;
    args.logging.check()?;
    let teacher = model::load(&args.teacher, &device)?;
    let bank = BankOptions {
        trajectories: args.trajectories,
        steps: args.teacher_steps,
        solver: args.teacher_solver,
        guidance: args.guidance,
        chunk: args.chunk,
    };
    let opts = TrainOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        decay: args.decay,
        ema: args.ema,
        seed: args.common.seed,
        log: args.logging.log.clone(),
        log_every: args.logging.log_every,
        quiet: args.common.quiet,
        time: args.time_density,
    };
    let say = |m: String| args.common.explain(m);
    let d = driver::distill(&teacher, args.method, &bank, &opts, &device, &say)?;
    if !d.fresh.is_empty() {
        args.common.say(format!(
            "warning: {} student parameters do not fit the teacher's and start fresh: {}",
            d.fresh.len(),
            d.fresh.join(", ")
        ));
    }
    checkpoint::save_model(&args.common.output, &d.config, &d.state)
}

/// Flag values no run can use (exit 2).
fn check_flags(a: &Args) -> Result<()> {
    if a.method == Method::Flowmap && !(a.teacher_steps >= 2 && a.teacher_steps.is_power_of_two()) {
        usage_bail!(
            "--method flowmap needs --teacher-steps a power of two (2, 4, ..., 64), got {}",
            a.teacher_steps
        );
    }
    flags::check_lr(a.lr)?;
    if let Some(w) = a.guidance {
        if !w.is_finite() {
            usage_bail!("--guidance must be finite, got {w}");
        }
    }
    a.ema.map_or(Ok(()), flags::check_ema)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("distill", run)
}
