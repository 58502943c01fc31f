//! run-bench: speed figures of training steps, guided sampling and `.npy` piping, one JSON line
//! each (see `flowpipe::bench`).

use clap::Parser;
use flowpipe::bench::{self, Settings, FIGURES};
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io;
use flowpipe::{usage_bail, Result};
use std::io::Write;
use std::process::ExitCode;

/// Measure training-step time, guided sampling throughput and .npy pipe throughput.
///
/// Prints one JSON line per figure: {"figure", "config", "median_ms", "runs", "warmup",
/// "threads", "implementation"} plus "images_per_s", "mb_per_s" or "gflops" where meaningful.
/// Each figure is the median of several timed runs after untimed warm-up runs. Figures: matmul
/// (1024^3 f32, with its share of the CPU's estimated f32 peak), train_step_mlp2d
/// (4 x 256 SiLU MLP, batch 1024), train_step_unet (lab 3 U-Net, 1x28x28, batch 128),
/// train_step_dit (DiT on 4x8x8 latents, batch 256), train_step_vae (the main job's VAE on
/// 1x32x32, batch 128), sample_cfg_unet (100 guided Euler steps,
/// batch 8), npy_write_pipe, npy_read_pipe (64 MB).
#[derive(Parser, Debug)]
#[command(
    name = "run-bench",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  run-bench --only train_step_mlp2d,npy_read_pipe --threads 2 | tee bench.jsonl"
)]
struct Args {
    /// Tiny sizes that run in about a second: a smoke test (the timings mean nothing)
    #[arg(long)]
    tiny: bool,
    /// Only these figures, comma separated [default: all]
    #[arg(long, value_delimiter = ',', value_name = "FIGURE,...")]
    only: Vec<String>,
    /// Timed runs per figure [default: 30 for the MLP, 5 for the U-Net and DiT steps and the
    /// pipes, 3 for sampling]
    #[arg(long, value_parser = at_least_1::<usize>)]
    runs: Option<usize>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    let device = args.common.setup_text()?;
    if let Some(f) = args.only.iter().find(|f| !FIGURES.contains(&f.as_str())) {
        usage_bail!("unknown figure '{f}'; figures: {}", FIGURES.join(", "));
    }
    let settings = Settings {
        tiny: args.tiny,
        runs: args.runs,
    };
    // On stdout, lines go out as they are measured (a full run takes minutes); a file is
    // written atomically at the end.
    let to_stdout = args.common.output == "-";
    let mut text = String::new();
    bench::run(settings, &args.only, &device, &mut |v| {
        // -v echoes each line on stderr as soon as it is measured, whatever -o is.
        args.common.explain(v.to_string());
        if to_stdout {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{v}")?;
            out.flush()?;
        } else {
            text.push_str(&format!("{v}\n"));
        }
        Ok(())
    })?;
    if !to_stdout {
        io::write_bytes(&args.common.output, text.as_bytes(), false)?;
    }
    Ok(())
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("run-bench", run)
}
