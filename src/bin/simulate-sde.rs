//! simulate-sde: integrate an ODE or SDE (notes section 2) from X_0 at --t0 to X_1 at --t1.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::fields::{self, FieldOptions};
use flowpipe::io::npy;
use flowpipe::progress::{JsonLog, Progress};
use flowpipe::solvers::{self, Method, SolveOptions};
use flowpipe::{usage_bail, Result};
use serde_json::json;
use std::process::ExitCode;

/// Simulate dX = u_t(X) dt + sigma_t dW from initial states X_0 (N, ...) and write X_1.
///
/// Prints one JSON line of statistics (field evaluations, accepted and rejected steps, and for
/// an ODE on fixed steps the paths' straightness S = int E|(X_1 - X_0) - u_t(X_t)|^2 dt of Liu
/// et al. 2022, per element; null otherwise) on stderr (not with -q), or into --log. The same
/// --seed gives the same paths however --batch splits N.
#[derive(Parser, Debug)]
#[command(
    name = "simulate-sde",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 500 --shape 1 | simulate-sde --field ou:theta=0.25,sigma=0.5 \
--t1 20 --steps 1000 --trajectory paths.npy -o x1.npy && render-grid paths.npy --t1 20 -o ou.png"
)]
struct Args {
    /// Initial states X_0, an (N, ...) .npy; `-` reads stdin
    #[arg(default_value = "-")]
    input: String,
    /// Make X_0 instead of reading it: `zeros:n=N,dim=D`, `const:n=N,dim=D,value=V`, or
    /// `linspace:n=N,from=A,to=B` (N, 1)
    #[arg(long, value_name = "SPEC", conflicts_with = "input")]
    x0: Option<String>,
    /// The vector field or SDE, e.g. `ou:theta=0.25,sigma=0.5` (--help lists the forms)
    #[arg(long, value_name = "SPEC", long_help = fields::SPEC_HELP)]
    field: String,
    /// The density of a `langevin` field, instead of its `density=` key (see `density --help`)
    #[arg(long, value_name = "SPEC")]
    density: Option<String>,
    /// Integration rule; auto is euler-maruyama for an SDE and euler for an ODE
    #[arg(long, value_enum, default_value_t = Method::Auto)]
    solver: Method,
    /// Start time
    #[arg(long, default_value_t = 0.0)]
    t0: f64,
    /// End time
    #[arg(long, default_value_t = 1.0)]
    t1: f64,
    /// Steps from t0 to t1 [default: 100; 1 for dopri5, which picks its own steps and lands
    /// exactly on each of these times, where --trajectory records]
    #[arg(long, value_parser = at_least_1::<usize>)]
    steps: Option<usize>,
    /// Time grid as a (T,) .npy of strictly monotone times, instead of --t0/--t1/--steps
    #[arg(long, value_name = "PATH", conflicts_with_all = ["t0", "t1", "steps"])]
    times: Option<String>,
    /// DDIM's eta with --solver ddim: 0 deterministic, 1 the DDPM ancestral sampler
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Relative tolerance of dopri5
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance of dopri5
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// dopri5 fails after this many (accepted + rejected) steps
    #[arg(long, default_value_t = 100_000)]
    max_steps: u64,
    /// Also write the states along the way, (N, T', ...), to PATH
    #[arg(long, value_name = "PATH")]
    trajectory: Option<String>,
    /// Keep every K-th state in --trajectory (the first and the last are always kept)
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = at_least_1::<usize>)]
    save_every: usize,
    /// Samples integrated at once [default: all]
    #[arg(long, value_name = "B", value_parser = at_least_1::<usize>)]
    batch: Option<usize>,
    /// Index of the first sample, whose Brownian stream it uses (to run a large set in parts)
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Write the statistics line to PATH instead of stderr
    #[arg(long, value_name = "PATH")]
    log: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    check_flags(&args)?;
    flowpipe::io::check_output_opt(&args.trajectory, true)?;
    flowpipe::io::check_output_opt(&args.log, false)?;
    let opts = FieldOptions {
        density: args.density.clone(),
    };
    let field = fields::from_spec_with(&args.field, &opts, &device)?;
    let (x0, name) = match &args.x0 {
        Some(spec) => (solvers::initial_states(spec)?, "--x0".to_string()),
        None => (
            npy::read_f32(&args.input)?,
            flowpipe::io::display_name(&args.input),
        ),
    };
    fields::check_states(field.as_ref(), &x0, &name)?;
    if let Some(steps) = args.steps {
        let what = format!("--steps {steps}");
        flowpipe::memory::check_fits(&what, &[steps as u128 + 1, 8])?;
        if args.trajectory.is_some() {
            let saved = (steps / args.save_every) as u128 + 2;
            let what = format!("--trajectory of {} samples with {what}", x0.shape()[0]);
            flowpipe::memory::check_fits(what, &[saved, x0.len() as u128, 4])?;
        }
    }
    let default_steps = if args.solver == Method::Dopri5 {
        1
    } else {
        100
    };
    let steps = args.steps.unwrap_or(default_steps);
    let grid = solvers::grid_from_flags(args.times.as_deref(), args.t0, args.t1, steps)?;
    let stochastic = solvers::is_stochastic(field.as_ref(), &grid);
    let method = args.solver.resolve(stochastic, &field.describe())?;
    let sopts = SolveOptions {
        method,
        rtol: args.rtol,
        atol: args.atol,
        max_steps: args.max_steps,
        seed: args.common.seed,
        first: args.first,
        save_every: args.trajectory.as_ref().map(|_| args.save_every),
        eta: args.eta,
    };
    let n = x0.shape()[0];
    let batch = args.batch.unwrap_or(n);
    let batches = n.div_ceil(batch);
    args.common.explain(format!(
        "simulating {} with {} from t = {} to {} ({} grid intervals), {n} samples in \
         {batches} batches",
        field.describe(),
        method.name(),
        grid[0],
        grid[grid.len() - 1],
        grid.len() - 1
    ));
    let progress = Progress::new(
        (batches * (grid.len() - 1)) as u64,
        "steps",
        args.common.quiet,
    );
    let (x1, traj, stats) = solvers::solve_batched(
        field.as_ref(),
        &x0,
        &grid,
        &sopts,
        batch,
        &device,
        Some(&progress),
    )?;
    progress.finish();
    let mut outputs = flowpipe::io::Outputs::new();
    if let (Some(path), Some(traj)) = (&args.trajectory, &traj) {
        outputs.add(path, &npy::encode(traj)?, true)?;
    }
    outputs.add(&args.common.output, &npy::encode(&x1)?, true)?;
    outputs.commit()?;
    let line = json!({
        "tool": "simulate-sde", "field": field.describe(), "solver": method.name(), "n": n,
        "t0": grid[0], "t1": grid[grid.len() - 1], "grid_intervals": grid.len() - 1,
        "batches": batches, "nfe": stats.nfe, "accepted": stats.accepted,
        "rejected": stats.rejected, "straightness": stats.straightness(),
    });
    match &args.log {
        Some(p) => JsonLog::open(Some(p))?.line(&line),
        None if !args.common.quiet => JsonLog::open(Some("-"))?.line(&line),
        None => Ok(()),
    }
}

/// Flag values that are wrong whatever the inputs (exit 2).
fn check_flags(a: &Args) -> Result<()> {
    if a.times.is_none() {
        solvers::grid_from_flags(None, a.t0, a.t1, 1)?;
    }
    if !(a.rtol > 0.0 && a.atol > 0.0) {
        usage_bail!(
            "--rtol and --atol must be positive, got {} and {}",
            a.rtol,
            a.atol
        );
    }
    if a.eta != 0.0 && a.solver != Method::Ddim {
        usage_bail!("--eta is DDIM's: give it with --solver ddim");
    }
    Ok(())
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("simulate-sde", run)
}
