//! sample-fewstep: draw samples from a distilled student (or a velocity model) in K steps,
//! each kind with its multistep schedule (notes section 7; see `flowpipe::distill::sample`).

use anyhow::bail;
use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::distill::sample::{sample_batched, Student};
use flowpipe::guidance::{check_labels, read_labels};
use flowpipe::io::{self, model, npy};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Sample a student from `distill` (flowmap, consistency, or a reflow velocity model) or any
/// velocity model in --steps steps from initial noise X_0 (N, ...); write X_1.
///
/// Velocity models take Euler steps (guided at --guidance w with --labels); a flow map jumps
/// t_k -> t_k+1; a consistency model predicts x_1, re-noises to t_k+1 and predicts again. A
/// conditional student needs --labels, one per sample. The same --seed gives the same bytes
/// however --batch splits N.
#[derive(Parser, Debug)]
#[command(
    name = "sample-fewstep",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 1000 --seed 1 | sample-fewstep --model consistency.safetensors --steps 2 -o x1.npy"
)]
struct Args {
    /// Initial noise X_0, an (N, ...) .npy; `-` reads stdin
    #[arg(default_value = "-")]
    input: String,
    /// The student (or velocity) model file
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Steps (network evaluations) from t = 0 to 1
    #[arg(long, default_value_t = 1, value_parser = at_least_1::<usize>)]
    steps: usize,
    /// Class labels, (N,) int64, for a conditional model
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// Classifier-free guidance scale w for a conditional velocity model, or for a flow map or
    /// consistency model trained from data with label dropout (fit-velocity --objective): the
    /// network's two branches mixed as eq. 65. A distilled student's w is fixed
    #[arg(long, default_value_t = 1.0, value_name = "W")]
    guidance: f64,
    /// Samples computed at once [default: all]
    #[arg(long, value_name = "B", value_parser = at_least_1::<usize>)]
    batch: Option<usize>,
    /// Index of the first sample (its re-noising stream), to run a large set in parts
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !args.guidance.is_finite() {
        usage_bail!("--guidance must be finite, got {}", args.guidance);
    }
    let m = model::load(&args.model, &device)?;
    let student = Student::load(&m, args.guidance, &device)?;
    let x0 = npy::read_f32(&args.input)?;
    let name = io::display_name(&args.input);
    let dims: Vec<String> = student.data_shape().iter().map(|d| d.to_string()).collect();
    let what = format!("noise for {}", m.name);
    npy::expect_shape(x0.shape(), &format!("N,{}", dims.join(",")), &what, &name)?;
    npy::expect_finite(&x0, &name)?;
    let n = x0.shape()[0];
    let labels = match &args.labels {
        Some(p) => {
            if student.num_classes() == 0 {
                bail!(
                    "{}: the model is unconditional; --labels does not apply",
                    m.name
                );
            }
            let l = read_labels(p)?;
            if l.len() != n {
                bail!(
                    "expected {n} labels (one per sample), got {} in {}",
                    l.len(),
                    io::display_name(p)
                );
            }
            Some(check_labels(
                &l,
                student.num_classes(),
                &io::display_name(p),
            )?)
        }
        None if student.num_classes() > 0 && !m.config["distill"].is_null() => {
            bail!(
                "{}: the student is conditional: give --labels, one per sample",
                m.name
            )
        }
        None => None,
    };
    let x1 = sample_batched(
        &student,
        &x0,
        args.steps,
        labels.as_deref(),
        args.common.seed,
        args.first,
        args.batch.unwrap_or(n),
        &device,
    )?;
    npy::write(&args.common.output, &x1)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("sample-fewstep", run)
}
