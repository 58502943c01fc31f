//! guide: classifier-free guidance (notes eq. 65, Remark 28) as a field spec for simulate-sde.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::fields::GuidedField;
use flowpipe::guidance;
use flowpipe::io::{self, npy};
use flowpipe::{usage_bail, Result};
use ndarray::{ArrayD, IxDyn};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;

/// Turn a conditional velocity model into the guided field u~ = (1 - w) u(x | null) + w u(x | y).
///
/// Writes a JSON field spec {"field": "guided", "model", "scale", "labels", "sigma"} that
/// simulate-sde takes as --field: label i goes with sample i of X_0 (however --batch splits it).
/// w = 1 samples the conditional model, w = 0 the unconditional one, w > 1 sharpens the class.
/// With --sigma the sampler runs the SDE dX = (u~ + sigma^2/2 s~) dt + sigma dW with the guided
/// score s~ (use --solver euler-maruyama or auto). The model must be a velocity model trained
/// with labels (fit-velocity --labels); label K (the model's class count) is the null label and
/// gives an unguided sample.
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
    /// The guidance scale w
    #[arg(long, value_name = "W")]
    scale: f64,
    /// Diffusion coefficient of SDE sampling (0: the ODE)
    #[arg(long, default_value_t = 0.0)]
    sigma: f64,
    /// Guide only for t in [A, B] (the conditional model, w = 1, elsewhere; Kynkäänniemi et al.
    /// 2024) [default: 0,1, every time]
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
    if !args.scale.is_finite() {
        usage_bail!("--scale must be a finite number, got {}", args.scale);
    }
    if !(args.sigma >= 0.0 && args.sigma.is_finite()) {
        usage_bail!("--sigma must be zero or positive, got {}", args.sigma);
    }
    let interval = match args.interval.as_deref() {
        None => None,
        Some(&[a, b]) => Some((a, b)),
        Some(v) => usage_bail!("--interval takes two times A,B, got {} numbers", v.len()),
    };
    let model = guidance::load_conditional(&args.model, &device)?;
    let classes = model.num_classes();
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
    let field = GuidedField::new(Arc::new(model), &labels, args.scale, args.sigma)
        .map_err(|e| anyhow::anyhow!("guiding {name}: {e:#}"))?;
    if let Some((a, b)) = interval {
        field
            .with_interval(a, b)
            .map_err(|e| anyhow::Error::new(flowpipe::UsageError(format!("--interval: {e}"))))?;
    }
    args.common.explain(format!(
        "{} labels over {classes} classes (null label {classes}), w = {}, sigma = {}",
        labels.len(),
        args.scale,
        args.sigma
    ));
    let mut spec = json!({
        "field": "guided",
        "model": args.model,
        "scale": args.scale,
        "sigma": args.sigma,
        "labels": labels.clone(),
    });
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
