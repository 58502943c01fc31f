//! fit-classifier and the image metrics of evaluate (--classifier), on tiny synthetic images:
//! two classes of 1x8x8 patterns (a bright left half, a bright top half) plus noise.

use crate::common::{fails, ok, path, run, tmp};
use flowpipe::io::npy;
use flowpipe::rng::{self, Purpose};
use ndarray::ArrayD;
use serde_json::Value;

/// n images of the two patterns (class i % 2) with pixel noise of `noise`, from `seed`.
fn patterns(n: usize, seed: u64, noise: f32) -> (ArrayD<f32>, ArrayD<i64>) {
    let eps = rng::normal_rows(seed, Purpose::Data, 0, n, 64);
    let mut x = vec![0f32; n * 64];
    for i in 0..n {
        for p in 0..64 {
            let on = if i % 2 == 0 { p % 8 < 4 } else { p / 8 < 4 };
            x[i * 64 + p] = if on { 0.8 } else { -0.8 } + noise * eps[i * 64 + p];
        }
    }
    let y = (0..n).map(|i| (i % 2) as i64).collect();
    (
        ArrayD::from_shape_vec(vec![n, 1, 8, 8], x).unwrap(),
        ArrayD::from_shape_vec(vec![n], y).unwrap(),
    )
}

/// `x` plus N(0, sigma^2) noise from `seed`.
fn noisy(x: &ArrayD<f32>, sigma: f32, seed: u64) -> ArrayD<f32> {
    let eps = rng::normal_rows(seed, Purpose::Noise, 0, 1, x.len());
    let mut out = x.clone();
    out.iter_mut().zip(eps).for_each(|(v, e)| *v += sigma * e);
    out
}

/// Trains a tiny classifier in `dir` on 128 training images; returns (model path, the
/// stderr JSON report of fit-classifier).
fn train(dir: &tempfile::TempDir) -> (String, Value) {
    let (x, y) = patterns(128, 1, 0.3);
    let (tx, ty) = patterns(200, 2, 0.6);
    for (name, arr) in [("x.npy", &x), ("tx.npy", &tx)] {
        npy::write(&path(dir, name), arr).unwrap();
    }
    npy::write(&path(dir, "y.npy"), &y).unwrap();
    npy::write(&path(dir, "ty.npy"), &ty).unwrap();
    let model = path(dir, "c.safetensors");
    let out = run(
        bin!("fit-classifier"),
        &[
            "--data",
            &path(dir, "x.npy"),
            "--labels",
            &path(dir, "y.npy"),
            "--test-data",
            &path(dir, "tx.npy"),
            "--test-labels",
            &path(dir, "ty.npy"),
            "--channels",
            "8,8",
            "--features",
            "16",
            "--steps",
            "40",
            "--batch",
            "16",
            "--lr",
            "1e-2",
            "--threads",
            "1",
            "-o",
            &model,
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let report: Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    (model, report)
}

fn evaluate(args: &[&str]) -> Value {
    serde_json::from_slice(&ok(bin!("evaluate"), args, b"")).unwrap()
}

#[test]
fn classifier_learns_and_metrics_behave() {
    let dir = tmp();
    let (model, report) = train(&dir);
    let acc = report["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc}: {report}");
    assert_eq!(report["n_test"], 200);
    let m = flowpipe::io::model::load(&model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.kind(), "classifier");
    assert_eq!(m.config["test"]["accuracy"].as_f64(), Some(acc));

    // The labelled test set against itself: FID and KID ~0, guided accuracy = test accuracy.
    let (tx, ty) = (path(&dir, "tx.npy"), path(&dir, "ty.npy"));
    let base = [
        "--classifier",
        model.as_str(),
        "--reference",
        tx.as_str(),
        "--kid-subsets",
        "10",
    ];
    let mut args = vec![tx.as_str(), "--labels", ty.as_str()];
    args.extend(base);
    args.extend(["--heldout", tx.as_str(), "--heldout-labels", ty.as_str()]);
    let v = evaluate(&args);
    let fid0 = v["classifier_fid"]["value"].as_f64().unwrap();
    assert!(fid0.abs() < 1e-6, "{v}");
    assert_eq!(v["classifier_fid"]["n_samples"], 200);
    assert_eq!(v["classifier_fid"]["n_reference"], 200);
    assert_eq!(v["guided_accuracy"]["value"].as_f64(), Some(acc));
    assert_eq!(v["floor"]["guided_accuracy"]["value"].as_f64(), Some(acc));
    let counts = v["class_histogram"]["counts"].as_array().unwrap();
    assert_eq!(counts.iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 200);

    // FID and KID grow with the noise added to the samples.
    let (mut fids, mut kids) = (vec![fid0], vec![v["kid"]["value"].as_f64().unwrap()]);
    let clean = npy::read_f32(&tx).unwrap();
    for (k, sigma) in [0.3f32, 0.8, 2.0].into_iter().enumerate() {
        let p = path(&dir, &format!("noisy{k}.npy"));
        npy::write(&p, &noisy(&clean, sigma, k as u64)).unwrap();
        let mut args = vec![p.as_str()];
        args.extend(base);
        let v = evaluate(&args);
        assert!(
            v["guided_accuracy"].is_null() && v["floor"].is_null(),
            "{v}"
        );
        fids.push(v["classifier_fid"]["value"].as_f64().unwrap());
        kids.push(v["kid"]["value"].as_f64().unwrap());
    }
    assert!(
        fids.windows(2).all(|w| w[0] < w[1]),
        "FID not increasing: {fids:?}"
    );
    assert!(kids[3] > 0.0, "{kids:?}");
    // A set against itself: |KID| is O(1/n) (shared samples), small beside the noisy sets'.
    assert!(kids[0].abs() < 0.1 * kids[3], "KID {kids:?}");

    // The floor uses as many held-out images as there are samples (the same FID bias), and
    // --max-reference bounds the reference.
    let few = path(&dir, "few.npy");
    npy::write(
        &few,
        &clean
            .slice(ndarray::s![..50, .., .., ..])
            .to_owned()
            .into_dyn(),
    )
    .unwrap();
    let v = evaluate(&[
        few.as_str(),
        "--classifier",
        model.as_str(),
        "--reference",
        tx.as_str(),
        "--max-reference",
        "120",
        "--heldout",
        tx.as_str(),
        "--kid-subsets",
        "5",
    ]);
    assert_eq!(v["floor"]["classifier_fid"]["n_samples"], 50, "{v}");
    assert_eq!(v["classifier_fid"]["n_reference"], 120, "{v}");

    // A perfect autoencoder (the identity) reconstructs the held-out images exactly: its
    // reconstruction FID is the floor's, bit for bit, and the ratio is 1. Noisy
    // reconstructions are further from the reference than the floor.
    let floor = |samples: &str| {
        evaluate(&[
            samples,
            "--classifier",
            model.as_str(),
            "--reference",
            tx.as_str(),
            "--max-reference",
            "120",
            "--heldout",
            few.as_str(),
            "--kid-subsets",
            "5",
        ])
    };
    let v = floor(&few);
    let fid = v["classifier_fid"]["value"].as_f64().unwrap();
    assert!(fid > 0.0, "{v}");
    assert_eq!(
        Some(fid),
        v["floor"]["classifier_fid"]["value"].as_f64(),
        "{v}"
    );
    assert_eq!(v["fid_over_floor"].as_f64(), Some(1.0), "{v}");
    let blurred = path(&dir, "blurred.npy");
    let few_arr = npy::read_f32(&few).unwrap();
    npy::write(&blurred, &noisy(&few_arr, 0.8, 9)).unwrap();
    let v = floor(&blurred);
    assert!(v["fid_over_floor"].as_f64().unwrap() > 1.0, "{v}");
}

#[test]
fn evaluate_refuses_wrong_shapes_and_other_models() {
    let dir = tmp();
    let (model, _) = train(&dir);
    let flat = path(&dir, "flat.npy");
    npy::write(&flat, &ArrayD::<f32>::zeros(vec![16, 2])).unwrap();
    let tx = path(&dir, "tx.npy");
    let out = run(
        bin!("evaluate"),
        &[&flat, "--classifier", &model, "--reference", &tx],
        b"",
    );
    fails(
        &out,
        1,
        &["expected images (N, 1, 8, 8)", "got (16, 2) in", "flat.npy"],
    );

    let velocity = path(&dir, "v.safetensors");
    flowpipe::io::model::save(&velocity, &serde_json::json!({"kind": "velocity"}), &[]).unwrap();
    let out = run(
        bin!("evaluate"),
        &[&tx, "--classifier", &velocity, "--reference", &tx],
        b"",
    );
    fails(
        &out,
        1,
        &[
            "v.safetensors",
            "expected a classifier model, found a velocity model",
        ],
    );

    let bad = path(&dir, "bad-labels.npy");
    npy::write(&bad, &ArrayD::from_elem(vec![200], 5i64)).unwrap();
    let out = run(
        bin!("evaluate"),
        &[
            &tx,
            "--labels",
            &bad,
            "--classifier",
            &model,
            "--reference",
            &tx,
        ],
        b"",
    );
    fails(&out, 1, &["bad-labels.npy", "label 5"]);
    let out = run(
        bin!("evaluate"),
        &[&tx, "--labels", &bad, "--reference", &tx],
        b"",
    );
    fails(&out, 2, &["--classifier"]);
    let out = run(
        bin!("fit-classifier"),
        &[
            "--data",
            &tx,
            "--labels",
            &path(&dir, "ty.npy"),
            "--lr",
            "-1",
        ],
        b"",
    );
    fails(&out, 2, &["--lr"]);
}

#[test]
fn bench_runs_every_figure_at_tiny_sizes() {
    let out = ok(bin!("run-bench"), &["--tiny", "--threads", "1"], b"");
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|v| v["figure"].as_str().unwrap())
        .collect();
    assert_eq!(names, flowpipe::bench::FIGURES);
    for v in &lines {
        assert!(v["median_ms"].as_f64().unwrap() >= 0.0, "{v}");
        assert_eq!(v["threads"], 1, "{v}");
        assert!(
            v["config"].is_object() && v["runs"].as_u64().unwrap() >= 1,
            "{v}"
        );
    }
    let dir = tmp();
    let file = path(&dir, "b.jsonl");
    ok(
        bin!("run-bench"),
        &["--tiny", "--only", "npy_read_pipe", "-o", &file],
        b"",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let out = run(bin!("run-bench"), &["--tiny", "--only", "nope"], b"");
    fails(&out, 2, &["unknown figure 'nope'", "train_step_mlp2d"]);
}
