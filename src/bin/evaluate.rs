//! evaluate: how far generated samples are from reference samples (energy distance, RBF MMD^2,
//! sliced Wasserstein-2), as one JSON object; with `--classifier`, image metrics in the
//! classifier's feature space (classifier-FID, KID, guided accuracy, class histogram). See
//! `flowpipe::eval` and `flowpipe::eval::images` for the formulas.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::eval::images::ImageOptions;
use flowpipe::eval::report::{self, ImageFiles};
use flowpipe::eval::Options;
use flowpipe::io;
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Compare generated samples with reference samples: energy distance, MMD^2 and sliced W2.
///
/// Both inputs are (N, D) .npy (further axes are flattened into D). Prints one JSON object
/// with each metric, its estimator and the sample counts used. Lower is closer; all are ~0
/// for samples of the same distribution.
///
/// With --classifier (a model from fit-classifier), both inputs are images (N, C, H, W) and the
/// report holds classifier_fid {value, n_samples, n_reference}, kid {value, standard_error},
/// class_histogram, guided_accuracy (with --labels), and under "floor" the same figures for
/// real --heldout images against the same reference.
#[derive(Parser, Debug)]
#[command(
    name = "evaluate",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-data moons --seed 2 -o ref.npy\n  \
                  sample-data moons --seed 1 | evaluate --reference ref.npy\n  \
                  evaluate gen.npy --labels asked.npy --classifier classifier.safetensors \\\n    \
                  --reference train-x.npy --heldout test-x.npy --heldout-labels test-y.npy"
)]
struct Args {
    /// Generated samples, (N, D) .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "SAMPLES")]
    input: String,
    /// Reference samples, (M, D) .npy (e.g. fresh draws of p_data); needed unless --model
    #[arg(long, value_name = "PATH", required_unless_present = "model")]
    reference: Option<String>,
    /// A denoiser (fit-denoiser): the input is held-out tokens (N, L) int64 and the report is
    /// their ELBO in bits per token for masked noise, the CTMC path bound for uniform noise
    /// (see flowpipe::discrete::train::elbo)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["reference", "classifier"])]
    model: Option<String>,
    /// With --model: Monte Carlo draws of (t, x_t) per sequence
    #[arg(long, default_value_t = 16, requires = "model", value_parser = at_least_1::<usize>)]
    draws: usize,
    /// Use at most this many samples of each set, a seeded random subset (the pairwise
    /// metrics cost O(N^2)); 0 uses all
    #[arg(long, default_value_t = 2000)]
    max_n: usize,
    /// Random directions of the sliced Wasserstein distance
    #[arg(long, default_value_t = 256, value_parser = at_least_1::<usize>)]
    projections: usize,
    /// A classifier model file: compare images (N, C, H, W) in its feature space
    #[arg(long, value_name = "PATH")]
    classifier: Option<String>,
    /// The labels the samples were generated for, (N,) i64: reports the guided accuracy (needs
    /// --classifier or --posterior)
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// Points: a Gaussian-mixture density spec whose components are the classes (as
    /// sample-data labels them); with --labels, guided_accuracy is the fraction of samples whose
    /// most probable component (the exact posterior's argmax) is their label
    #[arg(
        long,
        value_name = "SPEC",
        requires = "labels",
        conflicts_with = "classifier"
    )]
    posterior: Option<String>,
    /// Real held-out images: the same figures for them against the reference (the floor), on a
    /// seeded subset of as many images as there are samples, so that both FIDs carry the same
    /// small-sample bias
    #[arg(long, value_name = "PATH", requires = "classifier")]
    heldout: Option<String>,
    /// With --classifier: use at most this many reference images, a seeded random subset (the
    /// reference's features are fitted once per report); 0 uses all
    #[arg(long, default_value_t = 10000, value_name = "N")]
    max_reference: usize,
    /// The held-out images' labels (their guided accuracy is the classifier's accuracy)
    #[arg(long, value_name = "PATH", requires = "heldout")]
    heldout_labels: Option<String>,
    /// KID: the number of random subsets
    #[arg(long, default_value_t = 100, value_parser = at_least_1::<usize>)]
    kid_subsets: usize,
    /// KID: samples of each set per subset (at most the smaller set's size)
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup_text()?;
    if let Some(m) = &args.model {
        let report = flowpipe::discrete::train::evaluate_file(
            &args.input,
            m,
            args.draws,
            args.common.seed,
            &device,
        )?;
        return io::write_json(&args.common.output, &report);
    }
    let reference = args.reference.clone().unwrap_or_default();
    if args.input == "-" && reference == "-" {
        usage_bail!("the samples and --reference cannot both be stdin");
    }
    cli::one_stdin([
        Some(&args.input),
        Some(&reference),
        args.labels.as_ref(),
        args.heldout.as_ref(),
        args.heldout_labels.as_ref(),
        args.classifier.as_ref(),
    ])?;
    if args.labels.is_some() && args.classifier.is_none() && args.posterior.is_none() {
        usage_bail!("--labels needs --classifier (images) or --posterior (points)");
    }
    if args.posterior.is_some() && args.input == "-" {
        usage_bail!("--posterior reads the samples twice: give them as a file, not stdin");
    }
    let posterior = match &args.posterior {
        Some(spec) => Some(flowpipe::densities::mixture_from_spec(spec)?),
        None => None,
    };
    let mut report = match &args.classifier {
        Some(classifier) => {
            if args.kid_subset_size < 2 {
                usage_bail!("--kid-subset-size must be at least 2");
            }
            let files = ImageFiles {
                samples: &args.input,
                labels: args.labels.as_deref(),
                reference: args.reference.as_deref().unwrap_or("-"),
                heldout: args.heldout.as_deref(),
                heldout_labels: args.heldout_labels.as_deref(),
            };
            let opts = ImageOptions {
                kid_subsets: args.kid_subsets,
                kid_subset_size: args.kid_subset_size,
                seed: args.common.seed,
            };
            report::image_report_files(classifier, &files, args.max_reference, &opts, &device)?
        }
        None => {
            if args.max_n == 1 {
                usage_bail!("--max-n must be 0 (all) or at least 2, got 1");
            }
            let opts = Options {
                max_n: args.max_n,
                projections: args.projections,
                seed: args.common.seed,
            };
            report::compare_files(&args.input, &reference, &opts, &args.common)?
        }
    };
    if let (Some(mix), Some(labels)) = (&posterior, &args.labels) {
        let x = io::npy::read_f32(&args.input)?;
        let name = io::display_name(&args.input);
        let x = x
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| anyhow::anyhow!("expected points (N, D) for --posterior in {name}"))?;
        let y = flowpipe::guidance::read_labels(labels)?;
        let acc = mix
            .accuracy(x.mapv(f64::from).view(), &y)
            .map_err(|e| anyhow::anyhow!("{name} with {}: {e:#}", io::display_name(labels)))?;
        report["guided_accuracy"] = serde_json::json!(acc);
    }
    io::write_json(&args.common.output, &report)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("evaluate", run)
}
