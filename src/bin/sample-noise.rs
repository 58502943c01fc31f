//! sample-noise: N samples from p_init, the start (t = 0) of every flow and diffusion.

use clap::{Parser, ValueEnum};
use flowpipe::cli::{self, Common};
use flowpipe::io::npy;
use flowpipe::noise::{self, PInit};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Draw N samples from p_init (isotropic Gaussian or uniform) as an (N, ...shape) f32 .npy.
///
/// Sample i depends only on (--seed, i): the first 10 of `-n 1000` equal `-n 10`.
#[derive(Parser, Debug)]
#[command(
    name = "sample-noise",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 64 --shape 1,28,28 --seed 1 | render-grid --upscale 2 -o grid.png"
)]
struct Args {
    /// Number of samples
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// Shape of one sample, comma separated: `2` for points, `1,28,28` for images
    #[arg(long, default_value = "2", value_delimiter = ',')]
    shape: Vec<usize>,
    /// Distribution of p_init
    #[arg(long, value_enum, default_value_t = Dist::Gaussian)]
    dist: Dist,
    /// Standard deviation of the Gaussian, N(0, std^2 I)
    #[arg(long, default_value_t = 1.0)]
    std: f32,
    /// Bounds of the uniform distribution, `low,high`
    #[arg(
        long,
        default_value = "-1,1",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    range: Vec<f32>,
    /// Index of the first sample (to draw a large set in parts)
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dist {
    Gaussian,
    Uniform,
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    if args.shape.is_empty() || args.shape.contains(&0) {
        usage_bail!("--shape must list positive sizes, got {:?}", args.shape);
    }
    let noise = match args.dist {
        Dist::Gaussian => {
            if !(args.std > 0.0 && args.std.is_finite()) {
                usage_bail!("--std must be positive, got {}", args.std);
            }
            PInit::Gaussian { std: args.std }
        }
        Dist::Uniform => match args.range[..] {
            [low, high] if low < high => PInit::Uniform { low, high },
            _ => usage_bail!(
                "--range must be `low,high` with low < high, got {:?}",
                args.range
            ),
        },
    };
    let mut factors = vec![args.n as u128, 4];
    factors.extend(args.shape.iter().map(|&d| d as u128));
    let shape = args.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let what = format!("-n {} --shape {}", args.n, shape.join(","));
    flowpipe::memory::check_fits(what, &factors)?;
    let x = noise::sample(&noise, args.n, &args.shape, args.common.seed, args.first)?;
    npy::write(&args.common.output, &x)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("sample-noise", run)
}
