//! The matmul figure: a large f32 matmul, its GFLOP/s and their share of the CPU's estimated
//! peak.

use candle_core::{Device, IndexOp};
use serde_json::{json, Value};

use super::harness::{line, median, normal, threads, time_runs};
use super::Settings;
use crate::Result;

/// The f32 peak of `threads` cores in GFLOP/s, estimated from /proc/cpuinfo: the clock it
/// reports (MHz) times the FLOPs a core retires per cycle with the widest fused multiply-add it
/// lists (2 FMA pipes: 64 with avx512f, 32 with avx2 and fma, else 8 from SSE). None where the
/// file is missing. An estimate: turbo clocks and a single AVX-512 pipe move it either way.
pub fn f32_peak_gflops(threads: usize) -> Option<(f64, f64, usize)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    let per_cycle = if has("avx512f") {
        64
    } else if has("avx2") && has("fma") {
        32
    } else {
        8
    };
    Some((
        mhz * 1e-3 * per_cycle as f64 * threads as f64,
        mhz,
        per_cycle,
    ))
}

/// A large f32 matmul (1024 x 1024 times 1024 x 1024): GFLOP/s and its share of the
/// estimated peak of the threads used ([`f32_peak_gflops`]).
pub fn matmul(s: Settings, device: &Device) -> Result<Value> {
    let n = if s.tiny { 64 } else { 1024 };
    let a = normal(&[n, n], 11, device)?;
    let b = normal(&[n, n], 12, device)?;
    let (warmup, runs) = if s.tiny {
        (1, 2)
    } else {
        (3, s.runs.unwrap_or(11))
    };
    let times = time_runs(warmup, runs, || {
        let c = a.matmul(&b)?;
        c.i((0, 0))?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let mut v = line(
        "matmul",
        json!({"m": n, "k": n, "n": n, "dtype": "f32"}),
        warmup,
        &times,
    );
    let gflops = 2.0 * (n as f64).powi(3) / (median(&times) * 1e6);
    v["gflops"] = json!((gflops * 10.0).round() / 10.0);
    if let Some((peak, mhz, per_cycle)) = f32_peak_gflops(threads()) {
        v["peak_gflops_estimate"] = json!((peak * 10.0).round() / 10.0);
        v["peak_basis"] = json!(format!(
            "{} threads x {mhz:.0} MHz (/proc/cpuinfo) x {per_cycle} f32 FLOPs/cycle",
            threads()
        ));
        v["fraction_of_peak"] = json!((gflops / peak * 1000.0).round() / 1000.0);
    }
    Ok(v)
}
