//! Speed figures of the library's hot paths (`run-bench`, `make bench`), one JSON object each:
//! `{"figure", "config", "median_ms", "runs", "warmup", "threads", ...}` plus a throughput
//! (`images_per_s`, `mb_per_s`) where one is meaningful.
//!
//! Each figure runs `warmup` untimed repetitions, then `runs` timed ones, and reports the median
//! (robust to the odd slow run on a shared machine; `harness.rs`). The figures, by what they
//! time: `matmul.rs` (a large matmul against the CPU's estimated peak), `train.rs` (one training
//! step of each network), `sample.rs` (guided sampling) and `npy.rs` (`.npy` through a pipe).
//!
//! The `tiny` sizes only check that every figure runs (tests); their timings mean nothing.
//!
//! **Outside the library's core.** Nothing else in `lib/` uses this module: it uses the core
//! (networks, optimiser, `.npy`) the way the tools do, and exists for `run-bench`. It stays in
//! the library, as `flowpipe::bench`, rather than in the binary, so that the command-line tests
//! can check the figures `run-bench` prints against [`FIGURES`]; `lib.rs` declares it apart
//! from the core modules to say so. A cargo feature would hide it from `cargo test` and the
//! Makefile for no gain: it costs the tools nothing they do not call.

mod harness;
mod matmul;
mod npy;
mod sample;
mod train;

use candle_core::Device;
use serde_json::Value;

use crate::Result;

pub use harness::{median, threads, time_runs};
pub use matmul::{f32_peak_gflops, matmul};
pub use npy::npy_pipe;
pub use sample::sample_cfg;
pub use train::{dit, mlp2d, unet, vae};

/// Every figure's name, in the order they run.
pub const FIGURES: [&str; 8] = [
    "matmul",
    "train_step_mlp2d",
    "train_step_unet",
    "train_step_dit",
    "train_step_vae",
    "sample_cfg_unet",
    "npy_write_pipe",
    "npy_read_pipe",
];

/// Benchmark sizes: the (`full`) or seconds-long smoke sizes (`tiny`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub tiny: bool,
    /// Timed repetitions per figure (None: each figure's default).
    pub runs: Option<usize>,
}

/// Runs the figures named in `only` (all when empty), handing each line to `emit` as it is
/// measured.
pub fn run(
    s: Settings,
    only: &[String],
    device: &Device,
    emit: &mut dyn FnMut(&Value) -> Result<()>,
) -> Result<()> {
    // As the trainers do: without it, glibc maps fresh pages for every large buffer.
    crate::memory::keep_freed_memory();
    let wanted = |f: &str| only.is_empty() || only.iter().any(|o| o == f);
    for f in [
        "matmul",
        "train_step_mlp2d",
        "train_step_unet",
        "train_step_dit",
        "train_step_vae",
        "sample_cfg_unet",
    ] {
        if !wanted(f) {
            continue;
        }
        let v = match f {
            "matmul" => matmul(s, device)?,
            "train_step_mlp2d" => mlp2d(s, device)?,
            "train_step_unet" => unet(s, device)?,
            "train_step_dit" => dit(s, device)?,
            "train_step_vae" => vae(s, device)?,
            _ => sample_cfg(s, device)?,
        };
        emit(&v)?;
    }
    if wanted("npy_write_pipe") || wanted("npy_read_pipe") {
        for v in npy_pipe(s)? {
            if wanted(v["figure"].as_str().unwrap_or("")) {
                emit(&v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_figures_all_run() {
        let s = Settings {
            tiny: true,
            runs: None,
        };
        let mut seen = Vec::new();
        run(s, &[], &Device::Cpu, &mut |v| {
            assert!(v["median_ms"].as_f64().unwrap() >= 0.0, "{v}");
            assert!(v["threads"].as_u64().unwrap() >= 1);
            seen.push(v["figure"].as_str().unwrap().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, FIGURES);
    }
}
