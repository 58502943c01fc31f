//! density: sample a density, or evaluate its log-density and score (notes section 2.2).

use clap::{Parser, Subcommand};
use flowpipe::cli::{self, Common};
use flowpipe::densities;
use flowpipe::io::{display_name, npy};
use flowpipe::{usage_bail, Result};
use ndarray::{ArrayD, IxDyn};
use std::process::ExitCode;

/// Sample a density, or evaluate log p(x) and the score ∇ log p(x) on points or on a grid.
///
/// Densities are Gaussians and Gaussian mixtures given by a spec (see `density sample --help`).
#[derive(Parser, Debug)]
#[command(
    name = "density",
    version,
    after_help = "Example:\n  density grid -d random_2d:nmodes=5,std=0.75,scale=15,seed=3 --bounds -15,15,-15,15 \
-o bg.npy && density sample -d random_2d:nmodes=5,std=0.75,scale=15,seed=3 -n 1000 \
| render-grid --kind scatter --background bg.npy --bounds -15,15,-15,15 -o target.png"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

/// The density spec every mode takes.
#[derive(clap::Args, Debug)]
struct Spec {
    /// The density, e.g. `gaussian:mean=0;0,std=1` (--help lists the forms)
    #[arg(short = 'd', long = "density", value_name = "SPEC", long_help = densities::SPEC_HELP)]
    spec: String,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Draw N samples, (N, D); sample i depends only on (--seed, i)
    #[command(allow_negative_numbers = true)]
    Sample {
        #[command(flatten)]
        density: Spec,
        /// Number of samples
        #[arg(short = 'n', long, default_value_t = 1000)]
        n: usize,
        /// Index of the first sample (to draw a large set in parts)
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[command(flatten)]
        common: Common,
    },
    /// log p(x) of points (N, D), written as (N,)
    Logp {
        #[command(flatten)]
        density: Spec,
        /// Points (N, D) .npy; `-` reads stdin
        #[arg(default_value = "-")]
        input: String,
        #[command(flatten)]
        common: Common,
    },
    /// The score ∇ log p(x) of points (N, D), written as (N, D)
    Score {
        #[command(flatten)]
        density: Spec,
        /// Points (N, D) .npy; `-` reads stdin
        #[arg(default_value = "-")]
        input: String,
        #[command(flatten)]
        common: Common,
    },
    /// log p (or p) of a 2-D density at the cell centres of an (H, W) grid, row 0 at the top
    /// (y = YMAX), for heat maps
    Grid {
        #[command(flatten)]
        density: Spec,
        /// The area: XMIN,XMAX,YMIN,YMAX
        #[arg(
            long,
            value_delimiter = ',',
            allow_hyphen_values = true,
            default_value = "-15,15,-15,15"
        )]
        bounds: Vec<f64>,
        /// Cells across and down, W[,H] (H = W when one number is given)
        #[arg(long, value_delimiter = ',', default_value = "200")]
        resolution: Vec<usize>,
        /// Write the density p instead of log p
        #[arg(long)]
        exp: bool,
        #[command(flatten)]
        common: Common,
    },
}

fn run(args: Args) -> Result<()> {
    match args.mode {
        Mode::Sample {
            density,
            n,
            first,
            common,
        } => {
            common.setup()?;
            let d = densities::from_spec(&density.spec)?;
            let what = format!("-n {n} ({}-D samples)", d.dim());
            flowpipe::memory::check_fits(what, &[n as u128, d.dim() as u128, 8 + 4])?;
            let x = d.sample(n, common.seed, first).mapv(|v| v as f32);
            npy::write(&common.output, &x.into_dyn())
        }
        Mode::Logp {
            density,
            input,
            common,
        } => evaluate(&density, &input, &common, false),
        Mode::Score {
            density,
            input,
            common,
        } => evaluate(&density, &input, &common, true),
        Mode::Grid {
            density,
            bounds,
            resolution,
            exp,
            common,
        } => {
            common.setup()?;
            let d = densities::from_spec(&density.spec)?;
            let (w, h) = match resolution[..] {
                [w] if w > 0 => (w, w),
                [w, h] if w > 0 && h > 0 => (w, h),
                _ => usage_bail!(
                    "--resolution must be W or W,H with positive sizes, got {resolution:?}"
                ),
            };
            let b = match bounds[..] {
                [x0, x1, y0, y1] if x0 < x1 && y0 < y1 => [x0, x1, y0, y1],
                _ => usage_bail!(
                    "--bounds must be XMIN,XMAX,YMIN,YMAX with XMIN < XMAX and YMIN < YMAX, \
                     got {bounds:?}"
                ),
            };
            if d.dim() != 2 {
                usage_bail!(
                    "grid needs a 2-D density, but {} is {}-D",
                    density.spec,
                    d.dim()
                );
            }
            // The grid's points (2 f64 each), the log-densities (f64) and the output (f32).
            let what = format!("--resolution {w},{h}");
            flowpipe::memory::check_fits(what, &[w as u128, h as u128, 16 + 8 + 4])?;
            let logp = d.log_density(densities::grid_points(b, h, w).view())?;
            let values: Vec<f32> = logp
                .iter()
                .map(|&l| if exp { l.exp() } else { l } as f32)
                .collect();
            npy::write(
                &common.output,
                &ArrayD::from_shape_vec(IxDyn(&[h, w]), values)?,
            )
        }
    }
}

/// log p (N,) or the score (N, D) of the points in `input`.
fn evaluate(density: &Spec, input: &str, common: &Common, score: bool) -> Result<()> {
    common.setup()?;
    let d = densities::from_spec(&density.spec)?;
    let x = npy::read_f32(input)?;
    let name = display_name(input);
    npy::expect_shape(
        x.shape(),
        &format!("N,{}", d.dim()),
        &format!("points for a {}-D density", d.dim()),
        &name,
    )?;
    npy::expect_finite(&x, &name)?;
    let points = x.mapv(f64::from).into_dimensionality::<ndarray::Ix2>()?;
    let out = if score {
        d.score(points.view())?.into_dyn()
    } else {
        d.log_density(points.view())?.into_dyn()
    };
    npy::write(&common.output, &out.mapv(|v| v as f32))
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("density", run)
}
