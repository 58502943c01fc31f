//! sample-path: draw x_t ~ p_t(x | z) for data z at chosen times (notes eq. 13), for figures.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::{self, npy};
use flowpipe::paths::noising;
use flowpipe::paths::{GaussianPath, Path};
use flowpipe::train::driver::PathArg;
use flowpipe::{usage_bail, Result};
use ndarray::{Axis, Slice};
use std::process::ExitCode;

/// Noise data along a Gaussian probability path: x_t = alpha_t z + beta_t eps at each time.
///
/// Writes (N * T, ...) with the T times of sample i in rows i*T .. i*T + T-1, so that
/// `render-grid --cols T` shows a row per sample from noise (t = 0) to data (t = 1). Each sample
/// keeps one eps for every time, drawn from (--seed, i). With `--path linear-interp --source
/// X0.npy` it draws the linear interpolant x_t = (1 - t) x0_i + t z_i between two data sets
/// instead (sample i of each, paired by index).
#[derive(Parser, Debug)]
#[command(
    name = "sample-path",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-path images.npy -n 8 --times 0,0.25,0.5,0.75,1 \
| render-grid --cols 5 --range -1,1 -o noising.png"
)]
struct Args {
    /// Data z, an (N, ...) .npy; `-` reads stdin
    #[arg(default_value = "-")]
    input: String,
    /// Use the first N samples (at most as many as the data holds) [default: all]
    #[arg(short = 'n', long, value_parser = at_least_1::<usize>)]
    n: Option<usize>,
    /// Times in [0, 1], comma separated
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1")]
    times: Vec<f64>,
    /// Probability path
    #[arg(long, value_enum, default_value_t = PathArg::Condot)]
    path: PathArg,
    /// With --path linear-interp: the source samples x_0 (at least N, of the data's item
    /// shape), sample i of the source paired with sample i of the data [default: N(0, I)]
    #[arg(long, value_name = "PATH")]
    source: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    if let Some(t) = args.times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        usage_bail!("--times must lie in [0, 1], got {t}");
    }
    let path = args.path.path();
    if args.source.is_some() && !matches!(path, Path::LinearInterpolant) {
        usage_bail!("--source goes with --path linear-interp (the other paths start from noise)");
    }
    cli::one_stdin([Some(&args.input), args.source.as_ref()])?;
    let z = npy::read_f32(&args.input)?;
    let name = io::display_name(&args.input);
    if z.ndim() < 2 || z.shape()[0] == 0 {
        anyhow::bail!(
            "expected data (N, ...) with N >= 1, got {} in {name}",
            npy::shape_str(z.shape())
        );
    }
    npy::expect_finite(&z, &name)?;
    let have = z.shape()[0];
    let n = args.n.unwrap_or(have);
    if n > have {
        anyhow::bail!("-n {n} asks for more samples than the {have} in {name}");
    }
    let z = z.slice_axis(Axis(0), Slice::from(0..n)).to_owned();
    let x = match (&path, &args.source) {
        (Path::Gaussian(path), _) => {
            noising::along_path(path, &z, &args.times, args.common.seed, 0)?
        }
        // Without a source, x_0 ~ N(0, I): the interpolant is then the CondOT path.
        (_, None) => {
            noising::along_path(&GaussianPath::CONDOT, &z, &args.times, args.common.seed, 0)?
        }
        (_, Some(src)) => {
            let x0 = npy::read_f32(src)?;
            let src_name = io::display_name(src);
            if x0.shape()[1..] != z.shape()[1..] || x0.shape()[0] < n {
                let mut want = vec![n];
                want.extend_from_slice(&z.shape()[1..]);
                anyhow::bail!(
                    "{src_name}: expected source samples {} (at least {n}, the shape of {name}'s), found {}",
                    npy::shape_str(&want),
                    npy::shape_str(x0.shape())
                );
            }
            npy::expect_finite(&x0, &src_name)?;
            let x0 = x0.slice_axis(Axis(0), Slice::from(0..n)).to_owned();
            noising::between(&x0, &z, &args.times)?
        }
    };
    npy::write(&args.common.output, &x)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("sample-path", run)
}
