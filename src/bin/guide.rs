//! guide: classifier-free guidance (notes eq. 65, Remark 28) and classifier guidance (notes
//! section 5) as a field spec for simulate-sde.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::fields::{ClassifierTerm, GuidedField};
use flowpipe::guidance;
use flowpipe::io::{self, npy};
use flowpipe::{usage_bail, Result};
use ndarray::{ArrayD, IxDyn};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;

/// Turn a velocity model into a guided field: CFG u~ = (1 - w) u(x | null) + w u(x | y), and/or
/// classifier guidance u~ = u + w_c c_t grad log p(y | x_t, t).
///
/// Writes a JSON field spec {"field": "guided", "model", "scale", "labels", "sigma"} that
/// simulate-sde takes as --field: label i goes with sample i of X_0 (however --batch splits it).
/// w = 1 samples the conditional model, w = 0 the unconditional one, w > 1 sharpens the class.
/// With --sigma the sampler runs the SDE dX = (u~ + sigma^2/2 s~) dt + sigma dW with the guided
/// score s~ (use --solver euler-maruyama or auto). The model must be a velocity model trained
/// with labels (fit-velocity --labels); label K (the model's class count) is the null label and
/// gives an unguided sample. With --classifier (a noisy classifier from fit-noisy-classifier, on
/// the model's path) its gradient is added with --classifier-scale w_c, turned into a velocity by
/// the path's c_t = beta^2 d_alpha / alpha - d_beta beta; the base is the model's unconditional
/// field (any velocity model), or its CFG field when --scale is given too: the two pulls add.
#[derive(Parser, Debug)]
#[command(
    name = "guide",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  guide --model unet.safetensors --each 8 --scale 3 -o guided.json\n  \
sample-noise -n 80 --shape 1,32,32 | simulate-sde --field guided.json --steps 50 \
| render-grid --cols 8 -o grid.png"
)]
struct Args {
    /// The conditional velocity model (.safetensors); its EMA weights are used when present
    #[arg(long, value_name = "PATH")]
    model: String,
    /// One label per sample, an (N,) int64 .npy
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "each",
        required_unless_present = "each"
    )]
    labels: Option<String>,
    /// Labels 0, 0, ..., 1, 1, ...: each class K times (a grid with --cols K has a row per class)
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    each: Option<usize>,
    /// With --each: add a last row of K null labels (unguided samples)
    #[arg(long, requires = "each")]
    unguided_row: bool,
    /// The CFG scale w (optional with --classifier: then the base is unconditional)
    #[arg(long, value_name = "W", required_unless_present = "classifier")]
    scale: Option<f64>,
    /// A noisy classifier p(y | x_t, t) (.safetensors, kind noisy-classifier) for classifier
    /// guidance
    #[arg(long, value_name = "PATH", requires = "classifier_scale")]
    classifier: Option<String>,
    /// The classifier-guidance scale w_c
    #[arg(long, value_name = "W", requires = "classifier")]
    classifier_scale: Option<f64>,
    /// Diffusion coefficient of SDE sampling (0: the ODE)
    #[arg(long, default_value_t = 0.0)]
    sigma: f64,
    /// Guide only for t in [A, B] (the conditional model, w = 1, elsewhere, and no classifier
    /// term; Kynkäänniemi et al. 2024) [default: 0,1, every time]
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    interval: Option<Vec<f64>>,
    /// Also write the labels, an (N,) int64 .npy
    #[arg(long, value_name = "PATH")]
    labels_out: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup_text()?;
    io::check_output_opt(&args.labels_out, true)?;
    for (flag, w) in [
        ("--scale", args.scale),
        ("--classifier-scale", args.classifier_scale),
    ] {
        if w.is_some_and(|w| !w.is_finite()) {
            usage_bail!(
                "{flag} must be a finite number, got {}",
                w.unwrap_or_default()
            );
        }
    }
    if !(args.sigma >= 0.0 && args.sigma.is_finite()) {
        usage_bail!("--sigma must be zero or positive, got {}", args.sigma);
    }
    let interval = match args.interval.as_deref() {
        None => None,
        Some(&[a, b]) => Some((a, b)),
        Some(v) => usage_bail!("--interval takes two times A,B, got {} numbers", v.len()),
    };
    let conditional = args.scale.is_some();
    let model = guidance::load_velocity(&args.model, conditional, &device)?;
    let classifier = match &args.classifier {
        Some(c) => Some(guidance::load_classifier(c, &device)?),
        None => None,
    };
    let classes = match &classifier {
        Some(c) => c.net.config.num_classes,
        None => model.num_classes(),
    };
    let labels = match (&args.labels, args.each) {
        (Some(path), _) => {
            let l = guidance::read_labels(path)?;
            guidance::check_labels(&l, classes, &io::display_name(path))?;
            l
        }
        (None, Some(k)) => {
            let rows = classes + usize::from(args.unguided_row);
            let what = format!("--each {k} (for {rows} rows of labels)");
            flowpipe::memory::check_fits(what, &[rows as u128, k as u128, 8])?;
            guidance::each_class(classes, k, args.unguided_row)
        }
        (None, None) => usage_bail!("give --labels or --each"),
    };
    let name = model.name.clone();
    // Builds the field once so that what simulate-sde will refuse is refused here.
    let field = match (classifier, args.classifier_scale) {
        (Some(c), Some(w_c)) => {
            let term = ClassifierTerm {
                classifier: Arc::new(c),
                scale: w_c,
            };
            GuidedField::with_classifier(Arc::new(model), &labels, args.scale, term, args.sigma)
        }
        _ => GuidedField::new(
            Arc::new(model),
            &labels,
            args.scale.unwrap_or_default(),
            args.sigma,
        ),
    }
    .map_err(|e| anyhow::anyhow!("guiding {name}: {e:#}"))?;
    if let Some((a, b)) = interval {
        field
            .with_interval(a, b)
            .map_err(|e| anyhow::Error::new(flowpipe::UsageError(format!("--interval: {e}"))))?;
    }
    args.common.explain(format!(
        "{} labels over {classes} classes (null label {classes}), w = {:?}, w_c = {:?}, sigma = {}",
        labels.len(),
        args.scale,
        args.classifier_scale,
        args.sigma
    ));
    let mut spec = json!({
        "field": "guided",
        "model": args.model,
        "sigma": args.sigma,
        "labels": labels.clone(),
    });
    if let Some(w) = args.scale {
        spec["scale"] = json!(w);
    }
    if let (Some(c), Some(w_c)) = (&args.classifier, args.classifier_scale) {
        spec["classifier"] = json!(c);
        spec["classifier_scale"] = json!(w_c);
    }
    if let Some((a, b)) = interval {
        spec["interval"] = json!([a, b]);
    }
    let mut outputs = io::Outputs::new();
    if let Some(p) = &args.labels_out {
        let l = ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels)?;
        outputs.add(p, &npy::encode(&l)?, true)?;
    }
    outputs.add(&args.common.output, &io::json_bytes(&spec)?, false)?;
    outputs.commit()
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("guide", run)
}
