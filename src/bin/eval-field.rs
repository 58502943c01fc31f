//! eval-field: a trained model's velocity, score, noise or denoiser at given points and time,
//! or a discrete denoiser's logits at given tokens.

use candle_core::Device;
use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::discrete::{net::Denoiser, tokens};
use flowpipe::io::model::{self, ModelFile};
use flowpipe::io::{display_name, npy};
use flowpipe::nn::learned::{predict_points, Learned};
use flowpipe::nn::Weights;
use flowpipe::paths::Param;
use flowpipe::{densities, usage_bail, Result};
use std::process::ExitCode;

/// Evaluate a model (converted through its path: Proposition 1, Remark 16) at points (N, D),
/// images (N, C, H, W) or on a 2D grid, at one time t, for class labels or the null label.
/// Writes the values shaped like the points, or rows [x, value] (N, 2D) with --with-points,
/// ready for `render-grid --kind quiver`. The grid's points are the centres of resolution^2
/// cells in row-major order, as an image is drawn: point i * resolution + j is at (x_j, y_i),
/// x_j rising from XMIN with j and y_i falling from YMAX with i (row 0 at the top). A discrete
/// denoiser (token-transformer) is evaluated at token ids (N, L) int64 instead: the output is its
/// raw logits (N, L, K) over the K data symbols.
#[derive(Parser, Debug)]
#[command(
    name = "eval-field",
    version,
    allow_negative_numbers = true,
    after_help = "Examples:\n  eval-field --model fm.safetensors --what score --t 0.5 --grid -10,10,-10,10 \
--resolution 20 --with-points | render-grid --kind quiver -o score.png\n  \
eval-field noise.npy --model out/latent/flow.safetensors --labels labels.npy --t 0.3 -o v.npy\n  \
eval-field tokens.npy --model out/discrete/words.safetensors --t 0.5 -o logits.npy"
)]
struct Args {
    /// Points (N, ...the model's data shape) to evaluate at (`-` = stdin); omit when --grid
    /// is given
    points: Option<String>,
    /// A velocity, score or checkpoint model file
    #[arg(long)]
    model: String,
    /// What to output: velocity, score, noise or denoiser [velocity]; logits for a discrete
    /// denoiser (its only output)
    #[arg(long)]
    what: Option<String>,
    /// The time t in [0, 1]
    #[arg(long, default_value_t = 0.5)]
    t: f64,
    /// Evaluate on a grid over XMIN,XMAX,YMIN,YMAX instead of given points (2D models)
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    grid: Option<Vec<f64>>,
    /// Grid points per side
    #[arg(long, default_value_t = 20)]
    resolution: usize,
    /// Prefix each row with its point: (N, 2D)
    #[arg(long)]
    with_points: bool,
    /// Class labels (N,) int64, one per point, for a conditional model (its num_classes is the
    /// null label); without it every point gets the null label
    #[arg(long)]
    labels: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup()?;
    if !(0.0..=1.0).contains(&args.t) {
        usage_bail!("--t must be in [0, 1], got {}", args.t);
    }
    let what = args.what.as_deref().unwrap_or("velocity");
    let want = Param::parse(what);
    if want.is_none() && what != "logits" {
        usage_bail!("--what must be velocity, score, noise, denoiser or logits, got '{what}'");
    }
    let grid = match (&args.points, &args.grid) {
        (Some(_), Some(_)) => usage_bail!("give points or --grid, not both"),
        (None, None) => usage_bail!("give points (a .npy, or - for stdin) or --grid"),
        (None, Some(g)) => Some(match g[..] {
            _ if args.resolution == 0 => usage_bail!("--resolution must be at least 1"),
            [x0, x1, y0, y1] if x0 < x1 && y0 < y1 => {
                let r = args.resolution as u128;
                // The grid's points in f64, then in f32, then the output rows.
                let what = format!("--resolution {}", args.resolution);
                flowpipe::memory::check_fits(what, &[r, r, 2 * (8 + 4 + 4)])?;
                densities::grid_points([x0, x1, y0, y1], args.resolution, args.resolution)
                    .mapv(|v| v as f32)
                    .into_dyn()
            }
            _ => usage_bail!("--grid must be XMIN,XMAX,YMIN,YMAX with min < max"),
        }),
        (Some(_), None) => None,
    };
    let file = model::load(&args.model, &device)?;
    if Denoiser::is_denoiser(&file) {
        return eval_denoiser(&args, &file, &device);
    }
    let Some(want) = want else {
        usage_bail!("{}: logits are a discrete denoiser's; this model gives velocity, score, noise or denoiser", file.name);
    };
    let points = match (grid, &args.points) {
        (Some(g), _) => g,
        (None, p) => {
            let p = p.as_deref().unwrap_or("-");
            let x = npy::read_f32(p)?;
            npy::expect_finite(&x, &display_name(p))?;
            x
        }
    };
    let learned = Learned::load(&file, Weights::Auto, &device)?;
    let name = args.points.as_deref().map_or("--grid".into(), display_name);
    let mut want_shape = vec!["N".to_string()];
    want_shape.extend(learned.data_shape.iter().map(|d| d.to_string()));
    npy::expect_shape(points.shape(), &want_shape.join(","), "points", &name)?;
    let labels = match &args.labels {
        None => None,
        Some(path) => {
            let top = learned.num_classes() as u32;
            Some(tokens::read_labels(
                path,
                Some(points.shape()[0]),
                Some(top),
            )?)
        }
    };
    let out = predict_points(
        &learned,
        want,
        &points,
        labels.as_deref(),
        args.t,
        args.with_points,
        &device,
    )?;
    npy::write(&args.common.output, &out.into_dyn())
}

/// A discrete denoiser: token ids (N, L) in, logits (N, L, K) out.
fn eval_denoiser(args: &Args, file: &ModelFile, device: &Device) -> Result<()> {
    if args.grid.is_some() || args.with_points {
        usage_bail!("{}: a denoiser is evaluated at token ids (N, L); --grid and --with-points are for vector fields", file.name);
    }
    if let Some(w) = args.what.as_deref().filter(|w| *w != "logits") {
        usage_bail!(
            "{}: a denoiser gives logits, not '{w}' (leave --what out)",
            file.name
        );
    }
    let Some(path) = &args.points else {
        usage_bail!("give token ids (N, L) int64 (a .npy, or - for stdin)");
    };
    let net = Denoiser::from_file(file, device)?;
    let x = tokens::read_tokens(path, &net.config.vocab, Some(net.config.seq_len), true)?;
    let top = net.config.num_classes as u32;
    let labels = match &args.labels {
        Some(l) => Some(tokens::read_labels(l, Some(x.shape()[0]), Some(top))?),
        None => None,
    };
    let out = net.logits_array(&x, args.t, labels.as_deref(), device)?;
    npy::write(&args.common.output, &out)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("eval-field", run)
}
