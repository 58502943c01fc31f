//! simulate-ctmc: sample a trained denoiser by simulating the CTMC of discrete diffusion from
//! noise to data (notes section 8; see `flowpipe::discrete::sample`).

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::discrete::sample::{self, DenoiserPosterior, SampleOptions};
use flowpipe::discrete::{tokens, Denoiser, Solver};
use flowpipe::io::npy;
use flowpipe::progress::Progress;
use flowpipe::{guidance, usage_bail, Result};
use std::process::ExitCode;

/// Draw token sequences from a denoiser model: from all-[MASK] (or uniform) tokens at t = 0,
/// --steps steps of the factorised CTMC with rate kappa'/(1 - kappa) (p_theta(y | x_t) - delta_x)
/// to t = 1.
///
/// --temperature divides the logits; --labels with --guidance w uses the guided logits
/// (1 - w) l(x | null) + w l(x | y). --prompt holds some tokens fixed and fills in the rest:
/// a tokens .npy ([MASK] marks the free positions) or text lines (`_` and everything past a
/// line's end are free); sample i uses prompt i mod P. Writes (N, L) int64 tokens.
#[derive(Parser, Debug)]
#[command(
    name = "simulate-ctmc",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  simulate-ctmc --model words.safetensors -n 1000 --steps 100 -o samples.npy\n  \
echo 'qu' | simulate-ctmc --model words.safetensors --prompt - -n 10 | render-text --vocab words.safetensors"
)]
struct Args {
    /// The denoiser (fit-denoiser); its EMA weights when present
    #[arg(long, value_name = "PATH")]
    model: String,
    /// Number of samples [default: 1000, or one per label / prompt]
    #[arg(short, long, value_parser = at_least_1::<usize>)]
    n: Option<usize>,
    /// CTMC steps from t = 0 to t = 1
    #[arg(long, default_value_t = 100, value_parser = at_least_1::<usize>)]
    steps: usize,
    /// How each step is taken
    #[arg(long, value_enum, default_value_t = Solver::Euler)]
    solver: Solver,
    /// Divide the logits by this before the softmax (< 1 sharper, > 1 more diverse)
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Fixed tokens to infill around: (P, L) int64 .npy with [MASK] as free, or text lines
    #[arg(long, value_name = "PATH")]
    prompt: Option<String>,
    /// One class label per sample, (N,) int64 .npy (the model's class count is the null label)
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// Labels 0, 0, ..., 1, 1, ...: each class K times (instead of --labels)
    #[arg(long, value_name = "K", conflicts_with = "labels")]
    each: Option<usize>,
    /// Guidance scale w on the logits (1: the conditional model)
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// Sequences per network call
    #[arg(long, default_value_t = 500, value_parser = at_least_1::<usize>)]
    batch: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !(args.temperature > 0.0 && args.temperature.is_finite() && args.guidance.is_finite()) {
        usage_bail!("--temperature must be positive and --guidance finite");
    }
    cli::one_stdin([
        Some(&args.model),
        args.prompt.as_ref(),
        args.labels.as_ref(),
    ])?;
    let (net, _) = Denoiser::open(&args.model, &device)?;
    let cfg = &net.config;
    let prompts = match &args.prompt {
        Some(p) => Some(tokens::read_prompts(p, &cfg.vocab, cfg.seq_len)?),
        None => None,
    };
    if cfg.num_classes == 0 && (args.labels.is_some() || args.each.is_some()) {
        anyhow::bail!(
            "{}: the model was trained without labels; --labels and --each do not apply",
            args.model
        );
    }
    let null = cfg.num_classes as u32;
    let labels: Option<Vec<u32>> = match (&args.labels, args.each) {
        (Some(p), _) => Some(tokens::read_labels(p, None, Some(null))?),
        (None, Some(0)) => usage_bail!("--each must be at least 1"),
        (None, Some(k)) => Some({
            let what = format!("--each {k} (for {} classes)", cfg.num_classes);
            flowpipe::memory::check_fits(what, &[cfg.num_classes as u128, k as u128, 8])?;
            guidance::each_class(cfg.num_classes, k, false)
                .into_iter()
                .map(|c| c as u32)
                .collect()
        }),
        (None, None) => None,
    };
    let n = args
        .n
        .or(labels.as_ref().map(Vec::len))
        .or(prompts.as_ref().map(Vec::len))
        .unwrap_or(1000);
    if let Some(y) = &labels {
        if y.len() != n {
            usage_bail!("-n {n} but {} labels", y.len());
        }
    }
    // The token rows (i64 in the output, u32 while sampling) and the logits of one batch.
    let what = format!("-n {n} (sequences of length {})", cfg.seq_len);
    flowpipe::memory::check_fits(what, &[n as u128, cfg.seq_len as u128, 8 + 4])?;
    let how = DenoiserPosterior {
        labels: labels.as_deref(),
        guidance: args.guidance,
        temperature: args.temperature,
        batch: args.batch,
    };
    let opts = SampleOptions {
        steps: args.steps,
        solver: args.solver,
        seed: args.common.seed,
    };
    let bar = Progress::new(args.steps as u64, "steps", args.common.quiet);
    let rows = sample::sample_denoiser(
        &net,
        n,
        prompts.as_deref(),
        &how,
        &opts,
        &device,
        Some(&bar),
    )?;
    bar.finish();
    npy::write(&args.common.output, &tokens::to_array(&rows, cfg.seq_len))
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("simulate-ctmc", run)
}
