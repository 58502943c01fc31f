//! Speed figures of the library's hot paths (`run-bench`, `make bench`), one JSON object each:
//! `{"figure", "config", "median_ms", "runs", "warmup", "threads", ...}` plus a throughput
//! (`images_per_s`, `mb_per_s`) where one is meaningful.
//!
//! Each figure runs `warmup` untimed repetitions, then `runs` timed ones, and reports the median
//! (robust to the odd slow run on a shared machine). Training steps time one conditional flow
//! matching step on a fixed batch (x_t = t x_1 + (1 - t) x_0, target x_1 - x_0, notes eq. 31):
//! forward, backward and the AdamW update; drawing the batch is left out so that the same figure
//! can be measured in PyTorch (`bench/torch_reference.py`). Sampling times 100 Euler steps of the
//! classifier-free guided field u~ = (1 - w) u(x | null) + w u(x | y) (notes section 5.1), both
//! branches in one forward call on [x; x] with labels [y; null]. `.npy` throughput goes through
//! an OS pipe, the way tools exchange tensors.
//!
//! The `tiny` sizes only check that every figure runs (tests); their timings mean nothing.

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Instant;

use crate::nn::vae::{Vae, VaeConfig};
use crate::nn::{Activation, Dit, DitConfig, FieldNet, Mlp, MlpConfig, Params, UNet, UNetConfig};
use crate::rng::{self, Purpose};
use crate::train::optim::{AdamW, AdamWConfig, Decay, Schedule};
use crate::Result;

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

/// The number of threads candle's kernels and our loops use.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs `f` `warmup` times untimed, then `runs` times timed: the times in milliseconds.
pub fn time_runs(
    warmup: usize,
    runs: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            f()?;
            Ok(start.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// A figure's JSON line from its times.
fn line(figure: &str, config: Value, warmup: usize, times: &[f64]) -> Value {
    json!({
        "figure": figure,
        "config": config,
        "median_ms": (median(times) * 1000.0).round() / 1000.0,
        "runs": times.len(),
        "warmup": warmup,
        "threads": threads(),
        "implementation": "flowpipe",
    })
}

/// A tensor of standard normals of `shape` from stream (seed, Misc, index).
fn normal(shape: &[usize], index: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v = rng::normal_rows(0, Purpose::Misc, index, 1, n);
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// A fixed flow-matching batch for data of `shape` (B, ...): (x_t, t (B, 1), target, labels
/// (B,) cycling through 0..=classes, the last being the null label).
fn fm_batch(shape: &[usize], classes: usize, device: &Device) -> Result<[Tensor; 4]> {
    let b = shape[0];
    let x1 = normal(shape, 1, device)?;
    let x0 = normal(shape, 2, device)?;
    let tv: Vec<f32> = (0..b).map(|i| (i as f32 + 0.5) / b as f32).collect();
    let t = Tensor::from_vec(tv, (b, 1), device)?;
    let mut tb = vec![b];
    tb.extend(std::iter::repeat_n(1, shape.len() - 1));
    let tt = t.reshape(tb)?;
    let xt = (x1.broadcast_mul(&tt)? + x0.broadcast_mul(&(1.0 - &tt)?)?)?;
    let target = (&x1 - &x0)?;
    let y: Vec<u32> = (0..b).map(|i| (i % (classes + 1)) as u32).collect();
    Ok([xt, t, target, Tensor::from_vec(y, b, device)?])
}

/// The optimiser of every training-step figure: AdamW at a constant 1e-4, no weight decay.
fn bench_optimiser(params: &Params) -> Result<AdamW> {
    let schedule = Schedule {
        lr: 1e-4,
        warmup: 0,
        decay: Decay::Constant,
        total: u64::MAX,
    };
    AdamW::new(params, AdamWConfig::new(schedule, 0.0))
}

/// Times one training step (forward, backward, AdamW) of `net` on a fixed batch.
fn train_step(
    figure: &str,
    config: Value,
    net: &dyn FieldNet,
    params: &Params,
    shape: &[usize],
    (warmup, runs): (usize, usize),
    device: &Device,
) -> Result<Value> {
    let classes = net.num_classes();
    let [xt, t, target, y] = fm_batch(shape, classes, device)?;
    let y = (classes > 0).then_some(y);
    let mut opt = bench_optimiser(params)?;
    let b = shape[0] as f64;
    let times = time_runs(warmup, runs, || {
        let pred = net.forward(&xt, &t, y.as_ref())?;
        let loss = (pred - &target)?.sqr()?.sum_all()?.affine(1.0 / b, 0.0)?;
        opt.step(&loss.backward()?)?;
        // Wait for the device (a no-op on the CPU).
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let mut v = line(figure, config, warmup, &times);
    v["config"]["parameters"] = json!(params.count());
    Ok(v)
}

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

/// (a) the 2-D MLP of Lab 2: 4 x 256, SiLU, batch 1024.
pub fn mlp2d(s: Settings, device: &Device) -> Result<Value> {
    let (hidden, batch) = if s.tiny { (16, 8) } else { (256, 1024) };
    let cfg = MlpConfig {
        dim: 2,
        hidden: vec![hidden; 4],
        activation: Activation::Silu,
        time_features: 0,
    };
    let params = Params::new(0, device);
    let net = Mlp::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (5, s.runs.unwrap_or(30))
    };
    train_step(
        "train_step_mlp2d",
        config,
        &net,
        &params,
        &[batch, 2],
        reps,
        device,
    )
}

/// The lab's U-Net for 1x28x28 images and 10 classes (tiny: 1x8x8, channels [8, 16]).
fn unet_config(tiny: bool) -> UNetConfig {
    if tiny {
        UNetConfig {
            channels: vec![8, 16],
            blocks_per_level: 1,
            time_embed_dim: 8,
            label_embed_dim: 8,
            groups: 4,
            ..UNetConfig::lab([1, 8, 8], 10)
        }
    } else {
        UNetConfig::lab([1, 28, 28], 10)
    }
}

/// (b) the U-Net at the lab 3 default size, batch 128.
pub fn unet(s: Settings, device: &Device) -> Result<Value> {
    let cfg = unet_config(s.tiny);
    let batch = if s.tiny { 2 } else { 128 };
    let params = Params::new(0, device);
    let net = UNet::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    train_step(
        "train_step_unet",
        config,
        &net,
        &params,
        &shape,
        reps,
        device,
    )
}

/// (c) the DiT on 4x8x8 latents (the shape of the lab's VAE latents), batch 256, its default
/// sizes (patch 2, width 256, depth 6, 4 heads).
pub fn dit(s: Settings, device: &Device) -> Result<Value> {
    let mut config = json!({"arch": "dit", "data_shape": [4, 8, 8], "num_classes": 10,
                            "activation": "gelu"});
    if s.tiny {
        config = json!({"arch": "dit", "data_shape": [4, 4, 4], "num_classes": 10,
                        "width": 16, "depth": 1, "heads": 2, "time_features": 8,
                        "activation": "gelu"});
    }
    let cfg = DitConfig::from_json(&config).map_err(anyhow::Error::msg)?;
    let batch = if s.tiny { 2 } else { 256 };
    let params = Params::new(0, device);
    let net = Dit::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    train_step(
        "train_step_dit",
        config,
        &net,
        &params,
        &shape,
        reps,
        device,
    )
}

/// (d) the main job's VAE (1x32x32 images, channels 16, 32, 64, 4x8x8 latents), batch 128: one
/// step of the negative ELBO (encode, reparametrised sample, decode, Gaussian NLL + KL).
pub fn vae(s: Settings, device: &Device) -> Result<Value> {
    let mut cfg = VaeConfig::default_for(if s.tiny { [1, 8, 8] } else { [1, 32, 32] });
    cfg.channels = if s.tiny { vec![4, 8] } else { vec![16, 32, 64] };
    cfg.groups = 4;
    let batch = if s.tiny { 2 } else { 128 };
    let params = Params::new(0, device);
    let net = Vae::new(&cfg, &params)?;
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let x = normal(&shape, 4, device)?;
    let mut latent = vec![batch];
    latent.extend(cfg.latent_shape());
    let eps = normal(&latent, 5, device)?;
    let mut opt = bench_optimiser(&params)?;
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    let times = time_runs(reps.0, reps.1, || {
        let post = net.encode(&x)?;
        let recon = net.decode(&post.sample(&eps)?)?;
        let loss = (net.nll(&x, &recon)?.mean_all()? + post.kl()?.mean_all()?)?;
        opt.step(&loss.backward()?)?;
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut v = line("train_step_vae", config, reps.0, &times);
    v["config"]["parameters"] = json!(params.count());
    Ok(v)
}

/// Sampling throughput: 100 Euler steps of the guided U-Net (w = 3) from N(0, I), both branches
/// in one call; images per second.
pub fn sample_cfg(s: Settings, device: &Device) -> Result<Value> {
    let cfg = unet_config(s.tiny);
    let (batch, steps) = if s.tiny { (1, 2) } else { (8, 100) };
    let w = 3.0;
    let params = Params::new(0, device);
    let net = UNet::new(&cfg, &params)?;
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let x0 = normal(&shape, 3, device)?;
    let mut labels: Vec<u32> = (0..batch).map(|i| (i % 10) as u32).collect();
    labels.extend(std::iter::repeat_n(10u32, batch));
    let y = Tensor::from_vec(labels, 2 * batch, device)?;
    let dt = 1.0 / steps as f64;
    let times = time_runs(
        if s.tiny { 0 } else { 1 },
        s.runs.unwrap_or(3).min(if s.tiny { 1 } else { 99 }),
        || {
            let mut x = x0.clone();
            for k in 0..steps {
                let t = Tensor::full((k as f64 * dt) as f32, (2 * batch, 1), device)?;
                let both = net.forward(&Tensor::cat(&[&x, &x], 0)?, &t, Some(&y))?;
                let (cond, null) = (both.narrow(0, 0, batch)?, both.narrow(0, batch, batch)?);
                let guided = ((cond * w)? + (null * (1.0 - w))?)?;
                // Detached: otherwise each step's graph (the weights are variables) is kept.
                x = (x + (guided * dt)?)?.detach();
            }
            x.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Ok(())
        },
    )?;
    let mut config = cfg.to_json();
    config.as_object_mut().unwrap().extend([
        ("batch".to_string(), json!(batch)),
        ("steps".to_string(), json!(steps)),
        ("guidance".to_string(), json!(w)),
    ]);
    let mut v = line("sample_cfg_unet", config, usize::from(!s.tiny), &times);
    v["images_per_s"] = json!(batch as f64 / (median(&times) / 1000.0));
    Ok(v)
}

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
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

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
