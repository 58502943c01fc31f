//! Lab 3 tools on tiny synthetic labelled images (N = 32, 1x8x8): fit-velocity with each
//! architecture and label dropout, guide, simulate-sde on the guided field, sample-path; resume
//! and determinism with labels; and the errors a person is likely to meet.

use crate::common::*;
use flowpipe::io::{model, npy};
use flowpipe::rng::{self, Purpose};
use ndarray::{ArrayD, IxDyn};

const FIT_V: &str = bin!("fit-velocity");
const GUIDE: &str = bin!("guide");
const NOISE: &str = bin!("sample-noise");
const SIM: &str = bin!("simulate-sde");
const PATH: &str = bin!("sample-path");

/// Runs a tool on one thread (CI runs the tests side by side on two cores).
pub(crate) fn ok1(tool: &str, args: &[&str]) -> Vec<u8> {
    let mut all = args.to_vec();
    all.extend(["--threads", "1"]);
    ok(tool, &all, b"")
}

/// 32 images 1x8x8 in two classes (class 0 bright on top, class 1 bright below) with a little
/// noise, and their (32,) labels; returns the two paths.
fn write_images(dir: &tempfile::TempDir) -> (String, String) {
    let (n, d) = (32, 64);
    let noise = rng::normal_rows(1, Purpose::Data, 0, n, d);
    let mut x = vec![0f32; n * d];
    let mut y = Vec::new();
    for i in 0..n {
        let class = (i % 2) as i64;
        y.push(class);
        for p in 0..d {
            let top = p < d / 2;
            let v = if top == (class == 0) { 0.8 } else { -0.8 };
            x[i * d + p] = v + 0.1 * noise[i * d + p];
        }
    }
    let (xp, yp) = (path(dir, "x.npy"), path(dir, "y.npy"));
    npy::write(&xp, &npy::from_vec(&[n, 1, 8, 8], x).unwrap()).unwrap();
    npy::write(&yp, &ArrayD::from_shape_vec(IxDyn(&[n]), y).unwrap()).unwrap();
    (xp, yp)
}

/// Small sizes of each image architecture.
fn arch_flags(arch: &str) -> Vec<&'static str> {
    match arch {
        "unet" => vec!["--arch", "unet", "--channels", "8,16", "--blocks", "1"],
        _ => vec![
            "--arch", "dit", "--patch", "4", "--width", "16", "--depth", "1", "--heads", "2",
        ],
    }
}

/// The losses of a --log file.
fn losses(log: &str) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Trains `arch` on the images for `steps`; returns the model path.
pub(crate) fn train(dir: &tempfile::TempDir, arch: &str, steps: &str, extra: &[&str]) -> String {
    let (x, y) = write_images(dir);
    let out = path(dir, &format!("{arch}.safetensors"));
    let lr = if arch == "dit" { "1e-2" } else { "3e-3" };
    let mut args = vec![
        "--data", &x, "--labels", &y, "--steps", steps, "--batch", "32", "--lr", lr, "--ema",
        "0.9", "--seed", "2", "-o", &out,
    ];
    args.extend(arch_flags(arch));
    args.extend(extra);
    ok1(FIT_V, &args);
    out
}

#[test]
fn each_image_architecture_learns_and_samples_with_guidance() {
    for arch in ["unet", "dit"] {
        let dir = tmp();
        let (log, grid) = (path(&dir, "log.jsonl"), path(&dir, "grid.png"));
        let m = train(
            &dir,
            arch,
            "80",
            &[
                "--log",
                &log,
                "--log-every",
                "10",
                "--sample-grid",
                &grid,
                "--checkpoint-every",
                "40",
                "--grid-cols",
                "3",
                "--grid-steps",
                "4",
            ],
        );
        let l = losses(&log);
        assert!(l[l.len() - 1] < 0.6 * l[0], "{arch}: loss {l:?}");
        assert!(std::fs::read(&grid).unwrap().starts_with(b"\x89PNG"));
        // The model file rebuilds itself: kind, arch, classes, shape, dropout.
        let mf = model::load(&m, &candle_core::Device::Cpu).unwrap();
        let c = &mf.config;
        assert_eq!(c["kind"], "velocity");
        assert_eq!(c["arch"], arch);
        assert_eq!(c["num_classes"], 2);
        assert_eq!(c["data_shape"], serde_json::json!([1, 8, 8]));
        assert_eq!(c["train"]["label_dropout"], 0.1);
        assert!(mf.tensors.keys().any(|k| k.starts_with("ema.")));

        // Guided sampling, ODE then SDE: a row per class plus the unguided row.
        let (g, labels) = (path(&dir, "g.json"), path(&dir, "labels.npy"));
        ok1(
            GUIDE,
            &[
                "--model",
                &m,
                "--each",
                "2",
                "--unguided-row",
                "--scale",
                "3",
                "-o",
                &g,
                "--labels-out",
                &labels,
            ],
        );
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&g).unwrap()).unwrap();
        assert_eq!(spec["labels"], serde_json::json!([0, 0, 1, 1, 2, 2]));
        assert_eq!(npy::read_i64(&labels).unwrap().len(), 6);
        let x0 = path(&dir, "x0.npy");
        ok1(
            NOISE,
            &["-n", "6", "--shape", "1,8,8", "--seed", "5", "-o", &x0],
        );
        let whole = ok1(SIM, &[&x0, "--field", &g, "--steps", "5", "-q"]);
        let x1 = npy_f32(&whole);
        assert_eq!(x1.shape(), &[6, 1, 8, 8]);
        assert!(x1.iter().all(|v| v.is_finite()));
        // Labels stay with their rows however the batch is split, to the bit (the network's
        // products sum a row in one order whatever the rows beside it: lib/nn/ops/gemm.rs).
        let split = ok1(
            SIM,
            &[&x0, "--field", &g, "--steps", "5", "--batch", "4", "-q"],
        );
        assert!(split == whole, "{arch}: --batch changed the samples");
        // SDE sampling (Remark 28) with the guided score.
        let gs = path(&dir, "gs.json");
        ok1(
            GUIDE,
            &[
                "--model", &m, "--each", "2", "--scale", "2", "--sigma", "0.5", "-o", &gs,
            ],
        );
        let x0s = path(&dir, "x0s.npy");
        ok1(NOISE, &["-n", "4", "--shape", "1,8,8", "-o", &x0s]);
        let sde = npy_f32(&ok1(SIM, &[&x0s, "--field", &gs, "--steps", "5", "-q"]));
        assert_eq!(sde.shape(), &[4, 1, 8, 8]);
        assert!(sde.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn guided_classes_look_like_their_class() {
    // After a short run, guided samples of class 0 are brighter on top than class 1's.
    let dir = tmp();
    let m = train(&dir, "unet", "150", &[]);
    let g = path(&dir, "g.json");
    ok1(
        GUIDE,
        &["--model", &m, "--each", "4", "--scale", "3", "-o", &g],
    );
    let x0 = path(&dir, "x0.npy");
    ok1(NOISE, &["-n", "8", "--shape", "1,8,8", "-o", &x0]);
    let x = npy_f32(&ok1(SIM, &[&x0, "--field", &g, "--steps", "10", "-q"]));
    let flat: Vec<f32> = x.iter().copied().collect();
    for (i, img) in flat.chunks(64).enumerate() {
        let top: f32 = img[..32].iter().sum::<f32>() - img[32..].iter().sum::<f32>();
        let class = i / 4;
        assert!(
            (top > 0.0) == (class == 0),
            "sample {i} of class {class}: top minus bottom {top}"
        );
    }

    // --interval goes into the spec; guiding on [0.5, 1] only changes the samples, and on the
    // empty-looking [1, 1] (the last instant alone, never a step's start) they are the
    // conditional model's (w = 1) to rounding.
    let sample = |args: &[&str]| {
        let spec = path(&dir, "gi.json");
        let mut a = vec!["--model", m.as_str(), "--each", "4", "-o", spec.as_str()];
        a.extend_from_slice(args);
        ok1(GUIDE, &a);
        let text = std::fs::read_to_string(&spec).unwrap();
        let x = npy_f32(&ok1(SIM, &[&x0, "--field", &spec, "--steps", "10", "-q"]));
        (text, x)
    };
    let (text, half) = sample(&["--scale", "3", "--interval", "0.5,1"]);
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(spec["interval"], serde_json::json!([0.5, 1.0]), "{text}");
    let (_, conditional) = sample(&["--scale", "1"]);
    let (_, last_only) = sample(&["--scale", "3", "--interval", "1,1"]);
    let max_diff = |a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>| {
        a.iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(max_diff(&last_only, &conditional) < 1e-5);
    assert!(
        max_diff(&half, &x) > 1e-3,
        "guiding on half the times changes the samples"
    );
    assert!(max_diff(&half, &conditional) > 1e-3);
    let o = run(
        GUIDE,
        &[
            "--model",
            &m,
            "--each",
            "1",
            "--scale",
            "2",
            "--interval",
            "0.8,0.2",
        ],
        b"",
    );
    fails(&o, 2, &["--interval", "[0.8, 0.2]"]);
}

#[test]
fn conditional_mlp_on_labelled_points() {
    let dir = tmp();
    let n = 256;
    let z = rng::normal_rows(3, Purpose::Data, 0, n, 2);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..n {
        let c = (i % 3) as i64;
        y.push(c);
        x.push(4.0 * (c as f32 - 1.0) + 0.2 * z[2 * i]);
        x.push(0.2 * z[2 * i + 1]);
    }
    let (xp, yp) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    npy::write(&xp, &npy::from_vec(&[n, 2], x).unwrap()).unwrap();
    npy::write(&yp, &ArrayD::from_shape_vec(IxDyn(&[n]), y).unwrap()).unwrap();
    let (m, log) = (path(&dir, "m.safetensors"), path(&dir, "log.jsonl"));
    ok1(
        FIT_V,
        &[
            "--data",
            &xp,
            "--labels",
            &yp,
            "--steps",
            "300",
            "--batch",
            "256",
            "--hidden",
            "32,32",
            "--time-features",
            "2",
            "--lr",
            "5e-3",
            "--log",
            &log,
            "--log-every",
            "50",
            "-o",
            &m,
        ],
    );
    let l = losses(&log);
    assert!(l[l.len() - 1] < 0.5 * l[0], "loss {l:?}");
    let cfg = model::load(&m, &candle_core::Device::Cpu).unwrap().config;
    assert_eq!(cfg["arch"], "cmlp");
    assert_eq!(cfg["num_classes"], 3);
    let g = path(&dir, "g.json");
    ok1(
        GUIDE,
        &["--model", &m, "--each", "20", "--scale", "1", "-o", &g],
    );
    let x0 = path(&dir, "x0.npy");
    ok1(NOISE, &["-n", "60", "--shape", "2", "-o", &x0]);
    let x1 = npy_f32(&ok1(SIM, &[&x0, "--field", &g, "--steps", "50", "-q"]));
    // Each class's samples sit near its mode at x = 4 (c - 1).
    for c in 0..3 {
        let mean: f32 = (0..20).map(|i| x1[[20 * c + i, 0]]).sum::<f32>() / 20.0;
        let want = 4.0 * (c as f32 - 1.0);
        assert!((mean - want).abs() < 1.0, "class {c}: mean x {mean}");
    }
}

#[test]
fn label_dropout_is_deterministic_and_resume_is_bit_identical() {
    let dir = tmp();
    let a = train(&dir, "unet", "12", &[]);
    let a_bytes = std::fs::read(&a).unwrap();
    let again = train(&dir, "unet", "12", &[]);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        a_bytes,
        "same seed, same bytes"
    );
    let other = train(&dir, "unet", "12", &["--label-dropout", "0.5"]);
    assert_ne!(
        std::fs::read(&other).unwrap(),
        a_bytes,
        "eta changes the run"
    );
    // 6 steps with a checkpoint, then resume to 12: the same model as 12 straight.
    let ck = path(&dir, "ck.safetensors");
    train(&dir, "unet", "6", &["--checkpoint", &ck]);
    let (x, y) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    let resumed = path(&dir, "resumed.safetensors");
    ok1(
        FIT_V,
        &[
            "--data", &x, "--labels", &y, "--resume", &ck, "--steps", "12", "-o", &resumed,
        ],
    );
    assert_eq!(
        std::fs::read(&resumed).unwrap(),
        a_bytes,
        "resume is bit-identical"
    );
    // Resuming without the labels, or with another arch, is refused.
    let out = run(
        FIT_V,
        &[
            "--data", &x, "--resume", &ck, "--steps", "12", "-o", &resumed,
        ],
        b"",
    );
    fails(&out, 2, &["ck.safetensors", "--labels"]);
    let out = run(
        FIT_V,
        &[
            "--data", &x, "--labels", &y, "--resume", &ck, "--arch", "dit", "-o", &resumed,
        ],
        b"",
    );
    fails(&out, 2, &["--arch", "differs"]);
}

#[test]
fn mistakes_are_refused_with_the_file_named() {
    let dir = tmp();
    let (x, y) = write_images(&dir);
    let m = train(&dir, "unet", "2", &[]);
    let g = path(&dir, "g.json");
    // An unconditional model.
    let pts = path(&dir, "pts.npy");
    ok1(NOISE, &["-n", "64", "--shape", "2", "-o", &pts]);
    let unc = path(&dir, "unc.safetensors");
    ok1(
        FIT_V,
        &["--data", &pts, "--steps", "2", "--hidden", "8", "-o", &unc],
    );
    let out = run(
        GUIDE,
        &["--model", &unc, "--each", "1", "--scale", "2", "-o", &g],
        b"",
    );
    fails(&out, 1, &["unc.safetensors", "unconditional"]);
    assert!(
        !std::path::Path::new(&g).exists(),
        "no output after a failure"
    );
    // A model of another kind.
    let vae = path(&dir, "vae.safetensors");
    let t =
        candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    model::save(
        &vae,
        &serde_json::json!({"kind": "vae"}),
        &[("w".into(), t)],
    )
    .unwrap();
    let out = run(
        GUIDE,
        &["--model", &vae, "--each", "1", "--scale", "2", "-o", &g],
        b"",
    );
    fails(
        &out,
        1,
        &["vae.safetensors", "vae model", "conditional velocity"],
    );
    // Labels out of range.
    let bad = path(&dir, "bad.npy");
    npy::write(
        &bad,
        &ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 5]).unwrap(),
    )
    .unwrap();
    let out = run(
        GUIDE,
        &["--model", &m, "--labels", &bad, "--scale", "2", "-o", &g],
        b"",
    );
    fails(&out, 1, &["bad.npy", "label 5", "out of range"]);
    let out = run(GUIDE, &["--model", &m, "--scale", "2", "-o", &g], b"");
    fails(&out, 2, &["--labels"]);
    // Images of the wrong shape for the model, and more samples than labels.
    ok1(
        GUIDE,
        &["--model", &m, "--each", "1", "--scale", "2", "-o", &g],
    );
    let small = path(&dir, "small.npy");
    ok1(NOISE, &["-n", "2", "--shape", "1,6,6", "-o", &small]);
    let out = run(SIM, &[&small, "--field", &g, "--steps", "2"], b"");
    fails(&out, 1, &["(N, 1, 8, 8)", "(2, 1, 6, 6)", "small.npy"]);
    let many = path(&dir, "many.npy");
    ok1(NOISE, &["-n", "3", "--shape", "1,8,8", "-o", &many]);
    let out = run(SIM, &[&many, "--field", &g, "--steps", "2"], b"");
    fails(&out, 1, &["2 labels"]);
    // Training mistakes.
    let few = path(&dir, "few.npy");
    npy::write(
        &few,
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 1, 0]).unwrap(),
    )
    .unwrap();
    let o = path(&dir, "o.safetensors");
    let out = run(FIT_V, &["--data", &x, "--labels", &few, "-o", &o], b"");
    fails(&out, 1, &["expected 32 labels", "few.npy", "x.npy"]);
    let out = run(FIT_V, &["--data", &x, "--arch", "mlp", "-o", &o], b"");
    fails(&out, 1, &["takes points", "(32, 1, 8, 8)", "x.npy"]);
    let out = run(
        FIT_V,
        &["--data", &x, "--arch", "dit", "--channels", "8", "-o", &o],
        b"",
    );
    fails(&out, 2, &["--channels", "dit"]);
    let out = run(
        FIT_V,
        &[
            "--data",
            &x,
            "--labels",
            &y,
            "--label-dropout",
            "1.5",
            "-o",
            &o,
        ],
        b"",
    );
    fails(&out, 2, &["--label-dropout"]);
    let out = run(
        FIT_V,
        &[
            "--data",
            &pts,
            "--sample-grid",
            &path(&dir, "s.png"),
            "-o",
            &o,
        ],
        b"",
    );
    fails(&out, 1, &["--sample-grid", "pts.npy"]);
    assert!(!std::path::Path::new(&o).exists());
}

#[test]
fn sample_path_goes_from_noise_to_data() {
    let dir = tmp();
    let (x, _) = write_images(&dir);
    let out = npy_f32(&ok1(
        PATH,
        &[&x, "-n", "3", "--times", "0,0.5,1", "--seed", "4"],
    ));
    assert_eq!(out.shape(), &[9, 1, 8, 8]);
    let data = npy::read_f32(&x).unwrap();
    let eps = rng::normal_rows(4, Purpose::Noise, 0, 3, 64);
    for i in 0..3 {
        let row = |k: usize| -> Vec<f32> {
            out.index_axis(ndarray::Axis(0), 3 * i + k)
                .iter()
                .copied()
                .collect()
        };
        let z: Vec<f32> = data
            .index_axis(ndarray::Axis(0), i)
            .iter()
            .copied()
            .collect();
        assert_eq!(row(2), z, "t = 1 is the data");
        assert_eq!(
            row(0),
            eps[64 * i..64 * (i + 1)].to_vec(),
            "t = 0 is the noise"
        );
    }
    let bad = run(PATH, &[&x, "--times", "0,2"], b"");
    fails(&bad, 2, &["--times"]);
}
