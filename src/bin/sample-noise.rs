//! sample-noise: N samples from p_init, the start (t = 0) of every flow and diffusion, or from
//! a trained model's own p_init (`--model`: N(0, 50^2 I) for the variance-exploding path).

use candle_core::Device;
use clap::{Parser, ValueEnum};
use flowpipe::cli::{self, Common};
use flowpipe::io::{model, npy};
use flowpipe::noise::{self, PInit};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Draw N samples from p_init (isotropic Gaussian or uniform) as an (N, ...shape) f32 .npy.
///
/// Sample i depends only on (--seed, i): the first 10 of `-n 1000` equal `-n 10`. With --model,
/// the model's p_init: N(0, I), or N(0, 50^2 I) for a `--path ve` model, in its sample shape.
#[derive(Parser, Debug)]
#[command(
    name = "sample-noise",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 64 --shape 1,28,28 --seed 1 | render-grid --upscale 2 -o grid.png\n  \
                  sample-noise -n 500 --model ve.safetensors | simulate-sde --field ve.safetensors --solver ddim --steps 200 -o x.npy"
)]
struct Args {
    /// Number of samples
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// Shape of one sample, comma separated: `2` for points, `1,28,28` for images [default: 2,
    /// or the --model's]
    #[arg(long, value_delimiter = ',')]
    shape: Option<Vec<usize>>,
    /// Distribution of p_init
    #[arg(long, value_enum, default_value_t = Dist::Gaussian)]
    dist: Dist,
    /// Standard deviation of the Gaussian, N(0, std^2 I)
    #[arg(long, default_value_t = 1.0)]
    std: f32,
    /// Draw from this model's p_init (its path's: N(0, 50^2 I) for ve, else N(0, I)) in its
    /// sample shape; instead of --std and --dist [default: none]
    #[arg(long, value_name = "M", conflicts_with_all = ["std", "dist", "range"])]
    model: Option<String>,
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
    if let Some(shape) = args
        .shape
        .as_ref()
        .filter(|s| s.is_empty() || s.contains(&0))
    {
        usage_bail!("--shape must list positive sizes, got {shape:?}");
    }
    flowpipe::io::check_output(&args.common.output, true)?;
    let (noise, shape) = match &args.model {
        Some(m) => {
            let model = model::load(m, &Device::Cpu)?;
            let (noise, shape) = noise::model_p_init(&model)?;
            if let Some(given) = args.shape.as_ref().filter(|&s| *s != shape) {
                usage_bail!(
                    "--shape {} differs from the model {}'s sample shape {}",
                    join(given),
                    model.name,
                    join(&shape)
                );
            }
            (noise, shape)
        }
        None => (flag_noise(&args)?, args.shape.clone().unwrap_or(vec![2])),
    };
    let mut factors = vec![args.n as u128, 4];
    factors.extend(shape.iter().map(|&d| d as u128));
    let what = format!("-n {} --shape {}", args.n, join(&shape));
    flowpipe::memory::check_fits(what, &factors)?;
    let x = noise::sample(&noise, args.n, &shape, args.common.seed, args.first)?;
    npy::write(&args.common.output, &x)
}

fn join(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// p_init from --dist, --std and --range.
fn flag_noise(args: &Args) -> Result<PInit> {
    Ok(match args.dist {
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
    })
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("sample-noise", run)
}
