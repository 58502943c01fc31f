//! fit-vae, encode-vae, decode-vae, interpolate-vae, evaluate-vae on synthetic images the tests
//! draw: the VAE reconstructs far better than the mean image, encoding is deterministic and
//! independent of the batch, latents have unit scale, shapes are checked with clear errors, and
//! resuming is bit-identical.

use crate::common::*;
use flowpipe::io::{model, npy};

const FIT: &str = bin!("fit-vae");
const ENC: &str = bin!("encode-vae");
const DEC: &str = bin!("decode-vae");
const INTERP: &str = bin!("interpolate-vae");
const EVAL: &str = bin!("evaluate-vae");

/// 64 images 1x16x16 in [-1, 1]: a horizontal bar, a vertical bar, a square or a cross, at
/// eight positions.
fn write_patterns(p: &str) {
    let (n, s) = (64, 16);
    let mut v = vec![-1f32; n * s * s];
    for i in 0..n {
        let o = 2 + (i / 4) % 8;
        let img = &mut v[i * s * s..(i + 1) * s * s];
        for y in 0..s {
            for x in 0..s {
                let on = match i % 4 {
                    0 => y == o || y == o + 1,
                    1 => x == o || x == o + 1,
                    2 => (o..o + 5).contains(&y) && (o..o + 5).contains(&x),
                    _ => {
                        (y == o + 2 && (o..o + 5).contains(&x))
                            || (x == o + 2 && (o..o + 5).contains(&y))
                    }
                };
                if on {
                    img[y * s + x] = 1.0;
                }
            }
        }
    }
    npy::write(p, &npy::from_vec(&[n, 1, s, s], v).unwrap()).unwrap();
}

/// A small VAE, 1x16x16 -> 2x8x8, trained on one thread.
const SMALL: [&str; 12] = [
    "--channels",
    "8,16",
    "--latent-channels",
    "2",
    "--batch",
    "16",
    "--lr",
    "3e-3",
    "--threads",
    "1",
    "--seed",
    "4",
];

fn fit(data: &str, out: &str, steps: &str, extra: &[&str]) {
    let mut args = vec!["--data", data, "--steps", steps, "-q", "-o", out];
    args.extend(SMALL);
    args.extend(extra);
    ok(FIT, &args, b"");
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn vae_reconstructs_and_encodes_consistently() {
    let d = tmp();
    let (data, vae) = (path(&d, "x.npy"), path(&d, "vae.safetensors"));
    let (grid, log) = (path(&d, "recon.png"), path(&d, "log.jsonl"));
    write_patterns(&data);
    let extra = ["--recon-grid", &grid, "--log", &log, "--log-every", "50"];
    fit(&data, &vae, "300", &extra);
    assert!(std::fs::read(&grid).unwrap().starts_with(b"\x89PNG"));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 6);
    let m = model::load(&vae, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.kind(), "vae");
    assert_eq!(m.config["latent_shape"], serde_json::json!([2, 8, 8]));

    // Reconstruction far better than predicting the mean image.
    let stats = json(&ok(EVAL, &[&data, "--model", &vae], b""));
    let (rec, base) = (
        stats["recon_mse"].as_f64().unwrap(),
        stats["mean_image_mse"].as_f64().unwrap(),
    );
    assert!(
        rec < 0.25 * base,
        "reconstruction MSE {rec}, mean image {base}"
    );

    // --mean: deterministic, the same bytes for any batch, unit-variance latents.
    let mean = ok(ENC, &[&data, "--model", &vae, "--mean"], b"");
    assert_eq!(
        mean,
        ok(
            ENC,
            &[&data, "--model", &vae, "--mean", "--batch", "5"],
            b""
        )
    );
    let z = npy_f32(&mean);
    assert_eq!(z.shape(), &[64, 2, 8, 8]);
    let n = z.len() as f64;
    let mu = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (z.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n).sqrt();
    assert!((sd - 1.0).abs() < 1e-3, "scaled latents have std {sd}");

    // --sample: reproducible by seed, batch-independent, different from the mean.
    let s1 = ok(
        ENC,
        &[&data, "--model", &vae, "--sample", "--seed", "1"],
        b"",
    );
    let s1b = ok(
        ENC,
        &[
            &data, "--model", &vae, "--sample", "--seed", "1", "--batch", "7",
        ],
        b"",
    );
    let s2 = ok(
        ENC,
        &[&data, "--model", &vae, "--sample", "--seed", "2"],
        b"",
    );
    assert_eq!(s1, s1b);
    assert_ne!(s1, s2);
    assert_ne!(s1, mean);

    // decode(encode(x)) has the images' shape and matches evaluate-vae's error.
    let x = npy_f32(&std::fs::read(&data).unwrap());
    let r = npy_f32(&ok(DEC, &["--model", &vae], &mean));
    assert_eq!(r.shape(), x.shape());
    let mse = (&r - &x).mapv(|v| (v as f64).powi(2)).sum() / x.len() as f64;
    assert!((mse - rec).abs() < 1e-4 * (1.0 + rec), "{mse} vs {rec}");

    // Interpolation: the ends decode the pair's own reconstructions.
    let line = npy_f32(&ok(
        INTERP,
        &[&data, "--model", &vae, "--pairs", "0:2,5:6", "--steps", "4"],
        b"",
    ));
    assert_eq!(line.shape(), &[8, 1, 16, 16]);
    let close = |a: ndarray::ArrayViewD<f32>, b: ndarray::ArrayViewD<f32>| {
        (&a - &b).iter().all(|v| v.abs() < 1e-4)
    };
    use ndarray::Axis;
    assert!(close(line.index_axis(Axis(0), 0), r.index_axis(Axis(0), 0)));
    assert!(close(line.index_axis(Axis(0), 7), r.index_axis(Axis(0), 6)));
}

#[test]
fn shapes_and_kinds_are_checked_with_clear_errors() {
    let d = tmp();
    let (data, vae, ckpt) = (
        path(&d, "x.npy"),
        path(&d, "vae.safetensors"),
        path(&d, "c.safetensors"),
    );
    write_patterns(&data);
    fit(&data, &vae, "2", &["--checkpoint", &ckpt]);
    let out = path(&d, "out.npy");
    std::fs::write(&out, b"keep").unwrap();
    let r = run(DEC, &[&data, "--model", &vae, "-o", &out], b"");
    fails(
        &r,
        1,
        &[
            "decode-vae: error: expected latents (N, 2, 8, 8), got (64, 1, 16, 16) in ",
            "x.npy",
        ],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    let r = run(ENC, &[&data, "--model", &ckpt, "--mean", "-o", &out], b"");
    fails(
        &r,
        1,
        &["c.safetensors: expected a vae model, found a checkpoint model"],
    );
    let latents = ok(ENC, &[&data, "--model", &vae, "--mean"], b"");
    let r = run(ENC, &["--model", &vae, "--mean"], &latents);
    fails(
        &r,
        1,
        &["expected images (N, 1, 16, 16), got (64, 2, 8, 8) in stdin"],
    );
    fails(
        &run(ENC, &[&data, "--model", &vae], b""),
        2,
        &["--mean", "--sample"],
    );
    fails(
        &run(
            FIT,
            &["--data", &data, "--channels", "6,12", "--groups", "4"],
            b"",
        ),
        2,
        &["--groups 4 does not divide 6"],
    );
    let missing = path(&d, "missing.npy");
    fails(
        &run(FIT, &["--data", &missing, "-o", &out], b""),
        1,
        &["missing.npy"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}

#[test]
fn resumed_training_is_bit_identical() {
    let d = tmp();
    let data = path(&d, "x.npy");
    write_patterns(&data);
    let (whole, half, resumed) = (
        path(&d, "a.safetensors"),
        path(&d, "h.safetensors"),
        path(&d, "b.safetensors"),
    );
    let ckpt = path(&d, "ckpt-{step}.safetensors");
    fit(&data, &whole, "12", &["--ema", "0.9", "--kl-warmup", "8"]);
    fit(
        &data,
        &half,
        "6",
        &["--ema", "0.9", "--kl-warmup", "8", "--checkpoint", &ckpt],
    );
    let c6 = path(&d, "ckpt-6.safetensors");
    ok(
        FIT,
        &[
            "--data",
            &data,
            "--resume",
            &c6,
            "--steps",
            "12",
            "--threads",
            "1",
            "-q",
            "-o",
            &resumed,
        ],
        b"",
    );
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap()
    );
    let r = run(
        FIT,
        &[
            "--data", &data, "--resume", &c6, "--beta", "0.5", "-o", &resumed,
        ],
        b"",
    );
    fails(&r, 2, &["--beta 0.5 differs from the checkpoint's 1 in"]);
}

/// An uncompressed IDX file: magic, dimensions (big-endian u32), then the bytes.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// `make latent lab3 schedules-images SMALL=1` on a 20-image stand-in for Fashion-MNIST: every
/// stage of the main job, of lab 3 and of the image schedules table runs through the binaries,
/// metrics included (classifier, evaluate).
#[test]
fn make_latent_and_lab3_run_every_stage() {
    let data = tmp();
    let fm = data.path().join("fashion-mnist");
    std::fs::create_dir(&fm).unwrap();
    for (split, n) in [("train", 20u32), ("t10k", 6)] {
        let px: Vec<u8> = (0..n as usize * 784)
            .map(|i| {
                if (i % 28 + i / 28 % 28 + i / 784) % 7 < 3 {
                    200
                } else {
                    0
                }
            })
            .collect();
        let labels: Vec<u8> = (0..n as u8).map(|i| i % 10).collect();
        std::fs::write(
            fm.join(format!("{split}-images-idx3-ubyte")),
            idx(0x803, &[n, 28, 28], &px),
        )
        .unwrap();
        std::fs::write(
            fm.join(format!("{split}-labels-idx1-ubyte")),
            idx(0x801, &[n], &labels),
        )
        .unwrap();
    }
    let out = tmp();
    let data_dir = format!("FLOWPIPE_DATA={}", data.path().display());
    let targets = [
        "latent",
        "lab3",
        "lab3-sanity",
        "guidance-latent",
        "schedules-images",
    ];
    make_small(&targets, out.path(), &[data_dir]);
    // The image half of the schedules table (issue 28): a row per model, each with its two
    // classifier-FIDs (SMALL trains two of the fifteen models).
    let table = std::fs::read_to_string(out.path().join("schedules/images.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = table
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows[1]["path"], "ve", "{table}");
    for r in &rows {
        for key in ["fid_euler8", "fid_heun25"] {
            assert!(r[key].as_f64().is_some_and(f64::is_finite), "{r}");
        }
    }
    // Classifier guidance beside CFG on the latents (issue 27): a row per method and w.
    let gl = out.path().join("guidance").join("latent");
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gl.join("guidance.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2, "{rows:?}");
    for r in rows {
        assert!(r["evaluate"]["classifier_fid"]["value"].is_number(), "{r}");
        assert!(r["evaluate"]["guided_accuracy"]["value"].is_number(), "{r}");
    }
    assert!(std::fs::read(gl.join("guidance.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    let lat = out.path().join("latent");
    let read = |name: &str| std::fs::read(lat.join(name)).unwrap();
    assert_eq!(npy_f32(&read("latents.npy")).shape(), &[20, 4, 8, 8]);
    assert!(read("recon.png").starts_with(b"\x89PNG"));
    assert!(read("interpolation.png").starts_with(b"\x89PNG"));
    let metrics = json(&read("vae-metrics.json"));
    assert_eq!(metrics["n"], 6);
    assert!(metrics["recon_mse"].as_f64().unwrap().is_finite());
    assert!(!read("vae-loss.jsonl").is_empty());
    assert!(read("grid.png").starts_with(b"\x89PNG"));
    assert_eq!(npy_f32(&read("samples.npy")).shape(), &[20, 1, 32, 32]);
    let all = json(&read("metrics.json"));
    assert_eq!(all["vae"]["n"], 6);
    // The report names its n (10 classes x 2 in SMALL), how it sampled, and scores the
    // samples and the VAE's reconstructions of the held-out images against one floor.
    assert_eq!(all["n"], 20, "{all}");
    assert!(
        all["guidance"].is_number() && all["sampler"]["solver"].is_string(),
        "{all}"
    );
    assert!(
        all["sampler"]["nfe_per_sample"].as_u64().unwrap()
            >= all["sampler"]["steps"].as_u64().unwrap()
    );
    let samples = &all["samples"];
    assert_eq!(samples["classifier_fid"]["n_samples"], 20, "{samples}");
    let accuracy = samples["guided_accuracy"]["value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{samples}");
    assert!(samples["kid"]["value"].is_number(), "{samples}");
    let recon = &all["reconstruction"];
    assert_eq!(recon["classifier_fid"]["n_samples"], 6, "{recon}");
    let floor = samples["floor"]["classifier_fid"]["value"]
        .as_f64()
        .unwrap();
    assert_eq!(
        recon["floor"]["classifier_fid"]["value"].as_f64(),
        Some(floor)
    );
    for part in [samples, recon] {
        let ratio = part["fid_over_floor"].as_f64().unwrap();
        let fid = part["classifier_fid"]["value"].as_f64().unwrap();
        assert!((ratio * floor - fid).abs() <= 1e-9 * fid.max(1.0), "{part}");
    }
    // Issue 27: the latent flow's bits per dimension on held-out latents (4 x 8 x 8).
    let lik = &all["likelihood"];
    assert_eq!(lik["dim"], 256, "{lik}");
    assert!(lik["bpd"].as_f64().is_some_and(f64::is_finite), "{lik}");
    assert!(lik["se_probes"].as_f64().unwrap() > 0.0, "{lik}");
    assert!(read("vae-loss.png").starts_with(b"\x89PNG"));
    assert!(read("flow-loss.png").starts_with(b"\x89PNG"));

    // Issue 31: the same samples in one part and in three parts run side by side (-j3), byte
    // for byte; the labels hold every sample's class.
    let many = |shards: &str, jobs: &str| {
        let extra = [format!("SHARDS={shards}"), "N=20".into(), jobs.into()];
        make_small(&["latent-samples"], out.path(), &extra);
        std::fs::read(lat.join("samples-20/samples.npy")).unwrap()
    };
    let one = many("1", "-j1");
    std::fs::remove_file(lat.join("samples-20/samples.npy")).unwrap();
    assert!(many("3", "-j3") == one, "3 parts joined differ from 1");
    assert_eq!(npy_f32(&one).shape(), &[20, 1, 32, 32]);
    assert!(lat.join("samples-20/part-2-of-3.npy").exists());
    assert_eq!(
        npy::read_i64(lat.join("samples-20/labels.npy").to_str().unwrap())
            .unwrap()
            .len(),
        20
    );

    let lab3 = out.path().join("lab3");
    let sanity = std::fs::read(lab3.join("sanity/gmm-sanity.png")).unwrap();
    assert!(sanity.starts_with(b"\x89PNG"));
    assert_eq!(
        npy_f32(&std::fs::read(lab3.join("sanity/w4.npy")).unwrap()).shape(),
        &[60, 2]
    );
    for w in [1, 3, 5] {
        assert!(std::fs::read(lab3.join(format!("unet-w{w}.png")))
            .unwrap()
            .starts_with(b"\x89PNG"));
    }
    let m = json(&std::fs::read(lab3.join("metrics.json")).unwrap());
    assert_eq!(m["arch"], "unet");
    for w in ["w1", "w3", "w5"] {
        assert_eq!(m[w]["classifier_fid"]["n_samples"], 20, "{m}");
        assert!(m[w]["kid"]["value"].is_number(), "{m}");
    }
}
