//! likelihood: log p(x) of data under a flow model's ODE, by the instantaneous change of
//! variables (flowpipe::likelihood).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::fields::{self, FieldOptions};
use flowpipe::io::npy;
use flowpipe::likelihood::{self, Divergence, Options, Probe};
use flowpipe::progress::Progress;
use flowpipe::solvers::{Method, SolveOptions};
use flowpipe::{usage_bail, Result};
use serde_json::json;
use std::process::ExitCode;

/// Above this dimension `--divergence auto` estimates instead of computing exactly.
const EXACT_UP_TO: usize = 16;

/// Compute log p(x) of data (N, ...) under the ODE of a velocity model and report the negative
/// log-likelihood in nats per sample and in bits per dimension, as one JSON object.
///
/// The ODE runs backwards from the data at t = 1 to p_init at t = 0 while it integrates the
/// divergence of the field: exactly (one backward pass per dimension) or by Hutchinson's
/// estimator (one per probe, each probe kept along the whole path). The report's se_probes is
/// the standard error of the mean NLL due to the probes, se_data the one due to the finite data
/// set. With --dequantize 256, 8-bit data on [-1, 1] get uniform noise of one level and the NLL
/// is the discrete data's (bits per dimension as for image models).
#[derive(Parser, Debug)]
#[command(
    name = "likelihood",
    version,
    after_help = "Example:\n  sample-data checkerboard -n 1000 --seed 9 | likelihood --model cb.safetensors\n  \
likelihood latents.npy --model dit.safetensors --divergence hutchinson --probes 2 --solver heun \
--steps 16 --per-sample logp.npy"
)]
struct Args {
    /// Data to evaluate, an (N, ...) .npy; `-` reads stdin
    #[arg(default_value = "-")]
    input: String,
    /// A velocity model file, or any field spec along a Gaussian path, with sigma 0 (a guided
    /// spec gives the likelihood conditional on its labels)
    #[arg(long, alias = "field", value_name = "SPEC")]
    model: String,
    /// How to compute the divergence [default: exact up to 16 dimensions, else hutchinson]
    #[arg(long, value_enum)]
    divergence: Option<DivergenceArg>,
    /// Hutchinson's probes per sample
    #[arg(long, default_value_t = 4, value_parser = at_least_1::<usize>)]
    probes: usize,
    /// The distribution of Hutchinson's probes
    #[arg(long, value_enum, default_value_t = Probe::Rademacher)]
    probe: Probe,
    /// Integration rule from t = 1 back to t = 0: euler, heun, rk4 or dopri5
    #[arg(long, value_enum, default_value_t = Method::Dopri5)]
    solver: Method,
    /// Grid intervals from 1 to 0 [default: 1 for dopri5, which picks its own steps; else 32]
    #[arg(long, value_parser = at_least_1::<usize>)]
    steps: Option<usize>,
    /// Relative tolerance of dopri5
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance of dopri5
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Dequantise data with this many levels on [-1, 1] (256 for 8-bit images)
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u32).range(2..))]
    dequantize: Option<u32>,
    /// Also report the NLL of the same points under this known density (`density --help`), e.g.
    /// the data's own: the Monte Carlo estimate of its entropy, which the model's NLL exceeds by
    /// KL(p_data || p_model)
    #[arg(long, value_name = "SPEC", conflicts_with = "dequantize")]
    density: Option<String>,
    /// Also write log p of every sample by every probe, (N, P) f32 (P = 1 for exact), to PATH
    #[arg(long, value_name = "PATH")]
    per_sample: Option<String>,
    /// Samples integrated at once [default: all]
    #[arg(long, value_name = "B", value_parser = at_least_1::<usize>)]
    batch: Option<usize>,
    /// Index of the first sample, whose probe and dequantisation streams it uses
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DivergenceArg {
    Exact,
    Hutchinson,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !(args.rtol > 0.0 && args.atol > 0.0) {
        usage_bail!(
            "--rtol and --atol must be positive, got {} and {}",
            args.rtol,
            args.atol
        );
    }
    if matches!(
        args.solver,
        Method::Auto | Method::EulerMaruyama | Method::Ddim
    ) {
        usage_bail!(
            "--solver {} does not integrate the likelihood's ODE: use euler, heun, rk4 or dopri5",
            args.solver.name()
        );
    }
    flowpipe::io::check_output(&args.common.output, false)?;
    flowpipe::io::check_output_opt(&args.per_sample, true)?;
    let field = fields::from_spec_with(&args.model, &FieldOptions::default(), &device)?;
    let x = npy::read_f32(&args.input)?;
    let name = flowpipe::io::display_name(&args.input);
    fields::check_states(field.as_ref(), &x, &name)?;
    let density_nll = match &args.density {
        Some(spec) => Some(density_nll(spec, &x, &name)?),
        None => None,
    };
    let dim: usize = x.shape()[1..].iter().product();
    let divergence = match args.divergence {
        Some(DivergenceArg::Exact) => Divergence::Exact,
        None if dim <= EXACT_UP_TO => Divergence::Exact,
        _ => Divergence::Hutchinson {
            probes: args.probes,
            probe: args.probe,
        },
    };
    let n = x.shape()[0];
    let steps = args
        .steps
        .unwrap_or(if args.solver == Method::Dopri5 { 1 } else { 32 });
    let opts = Options {
        divergence,
        solve: SolveOptions {
            method: args.solver,
            rtol: args.rtol,
            atol: args.atol,
            seed: args.common.seed,
            first: args.first,
            ..Default::default()
        },
        steps,
        batch: args.batch.unwrap_or(n),
        dequantize: args.dequantize,
    };
    let batches = n.div_ceil(opts.batch);
    let progress = Progress::new((batches * steps) as u64, "steps", args.common.quiet);
    let est = likelihood::log_likelihood(field.as_ref(), &x, &opts, &device, Some(&progress))?;
    progress.finish();
    let s = est.summary();
    let report = json!({
        "tool": "likelihood", "model": field.describe(), "n": n, "dim": dim,
        "nll": s.nll, "bpd": s.bpd, "se_probes": s.se_probes, "se_data": s.se_data,
        "units": "nll and its standard errors in nats per sample; bpd in bits per dimension",
        "divergence": divergence.name(), "probes": divergence.channels(),
        "dequantize": args.dequantize, "solver": args.solver.name(), "steps": steps,
        "nfe": est.stats.nfe, "seed": args.common.seed,
    });
    let mut report = report;
    if let Some((nll, se)) = density_nll {
        report["density"] = json!({"spec": args.density, "nll": nll, "se_data": se});
    }
    let mut outputs = flowpipe::io::Outputs::new();
    if let Some(path) = &args.per_sample {
        outputs.add(path, &npy::encode(&est.log_p)?, true)?;
    }
    outputs.add(&args.common.output, format!("{report}\n").as_bytes(), false)?;
    outputs.commit()
}

/// The mean -log p(x) of the points `x` (N, D) under a density spec, with its standard error.
fn density_nll(spec: &str, x: &ndarray::ArrayD<f32>, name: &str) -> Result<(f64, f64)> {
    let density = flowpipe::densities::from_spec(spec)?;
    let n = x.shape()[0];
    let points = x
        .mapv(|v| v as f64)
        .into_shape_with_order((n, x.len() / n.max(1)))?;
    let log_p = density
        .log_density(points.view())
        .map_err(|e| anyhow::anyhow!("{name} under --density {spec}: {e}"))?;
    let mean = -log_p.mean().unwrap_or(0.0);
    let se = if n > 1 {
        log_p.std(1.0) / (n as f64).sqrt()
    } else {
        0.0
    };
    Ok((mean, se))
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("likelihood", run)
}
