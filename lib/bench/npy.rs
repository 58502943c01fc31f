//! The `.npy` figures: write and read throughput through an OS pipe, the way tools exchange
//! tensors.

use serde_json::{json, Value};
use std::io::Write;

use super::harness::{line, median, time_runs};
use super::Settings;
use crate::rng::{self, Purpose};
use crate::Result;

/// An OS pipe: (read end, write end).
fn pipe() -> Result<(std::io::PipeReader, std::io::PipeWriter)> {
    Ok(std::io::pipe()?)
}

/// `.npy` write and read throughput through a pipe, for an (N, 1, 32, 32) f32 array of about
/// 64 MB (tiny: 64 KB): encoding + writing while a thread drains the pipe, and reading +
/// decoding (as every tool reads stdin) while a thread fills it.
pub fn npy_pipe(s: Settings) -> Result<Vec<Value>> {
    let n = if s.tiny { 16 } else { 16384 };
    let arr = ndarray::ArrayD::from_shape_vec(
        vec![n, 1, 32, 32],
        rng::normal_rows(0, Purpose::Misc, 4, 1, n * 1024),
    )?;
    let bytes = std::sync::Arc::new(crate::io::npy::encode(&arr)?);
    let mb = bytes.len() as f64 / 1e6;
    let runs = if s.tiny { 1 } else { s.runs.unwrap_or(5) };
    let warmup = usize::from(!s.tiny);
    let write = time_runs(warmup, runs, || {
        let (mut r, mut w) = pipe()?;
        crate::io::widen_pipe(&w); // as a tool does to its stdout
        let drain = std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()));
        w.write_all(&crate::io::npy::encode(&arr)?)?;
        drop(w);
        drain.join().expect("drain thread")?;
        Ok(())
    })?;
    let read = time_runs(warmup, runs, || {
        let (r, mut w) = pipe()?;
        crate::io::widen_pipe(&r); // as a tool does to its stdin
        let data = std::sync::Arc::clone(&bytes);
        let fill = std::thread::spawn(move || w.write_all(&data));
        crate::io::npy::read_f32_from(r, "-")?;
        fill.join().expect("fill thread")?;
        Ok(())
    })?;
    let config = json!({"shape": [n, 1, 32, 32], "dtype": "f32", "megabytes": mb});
    let mut out = Vec::new();
    for (name, times) in [("npy_write_pipe", write), ("npy_read_pipe", read)] {
        let mut v = line(name, config.clone(), warmup, &times);
        v["mb_per_s"] = json!(mb / (median(&times) / 1000.0));
        out.push(v);
    }
    Ok(out)
}
