//! fit-velocity and fit-score: learned fields match the closed forms for Gaussian data, ODE
//! samples have the data's moments, resuming is bit-identical, and bad input is refused before
//! anything is written.

use crate::common::*;
use candle_core::{Device, Tensor};
use flowpipe::io::{model, npy};
use flowpipe::nn::{LearnedScore, LearnedVelocity};
use flowpipe::paths::GaussianPath;
use flowpipe::rng::{self, Purpose};

const FIT_V: &str = bin!("fit-velocity");
const FIT_S: &str = bin!("fit-score");

/// Runs a trainer on one thread: these nets are small, and CI runs tests side by side on two
/// cores, where candle's spinning worker pool would only wait for a descheduled thread.
fn train(tool: &str, args: &[&str]) {
    let mut all = args.to_vec();
    all.extend(["--threads", "1"]);
    ok(tool, &all, b"");
}

/// Data mean m and standard deviation s of the Gaussian test data N(m, s^2 I).
const M: [f32; 2] = [1.0, -0.5];
const S: f32 = 0.5;

/// Writes n points of N(m, s^2 I) to `p`.
fn write_gaussian(p: &str, n: usize, m: [f32; 2], s: f32, seed: u64) {
    let mut v = rng::normal_rows(seed, Purpose::Data, 0, n, 2);
    for (i, x) in v.iter_mut().enumerate() {
        *x = m[i % 2] + s * *x;
    }
    npy::write(p, &npy::from_vec(&[n, 2], v).unwrap()).unwrap();
}

/// A short training run of a small MLP (2 x 32, Fourier time features): about a second.
const SHORT: [&str; 14] = [
    "--steps",
    "800",
    "--batch",
    "512",
    "--hidden",
    "32,32",
    "--time-features",
    "2",
    "--lr",
    "5e-3",
    "--decay",
    "cosine",
    "--seed",
    "3",
];

fn point(x: [f32; 2]) -> Tensor {
    Tensor::new(&[x], &Device::Cpu).unwrap()
}

/// Query points around the marginal p_t = N(alpha m, (alpha^2 s^2 + beta^2) I), and t.
fn queries(path: GaussianPath) -> Vec<([f32; 2], f64)> {
    let mut q = Vec::new();
    for t in [0.2, 0.5, 0.8] {
        let k = path.coefs(t);
        let sd = ((k.alpha * S as f64).powi(2) + k.beta * k.beta).sqrt() as f32;
        for (a, b) in [
            (0.0, 0.0),
            (1.0, 0.0),
            (-1.0, 0.5),
            (0.5, -1.0),
            (-0.7, -0.7),
        ] {
            let x = [
                k.alpha as f32 * M[0] + a * sd,
                k.alpha as f32 * M[1] + b * sd,
            ];
            q.push((x, t));
        }
    }
    q
}

/// The marginal vector field of data N(m, s^2 I) on a Gaussian path, from the Gaussian
/// posterior: with v = alpha^2 s^2 + beta^2,
///   E[z | x] = m + alpha s^2 / v (x - alpha m),  E[eps | x] = beta / v (x - alpha m),
///   u_t(x) = d_alpha E[z | x] + d_beta E[eps | x];
/// and the marginal score grad log p_t(x) = -(x - alpha m) / v.
fn closed_forms(path: GaussianPath, x: [f32; 2], t: f64) -> ([f64; 2], [f64; 2]) {
    let k = path.coefs(t);
    let s2 = (S * S) as f64;
    let v = k.alpha * k.alpha * s2 + k.beta * k.beta;
    let mut u = [0.0; 2];
    let mut score = [0.0; 2];
    for i in 0..2 {
        let r = x[i] as f64 - k.alpha * M[i] as f64;
        let ez = M[i] as f64 + k.alpha * s2 / v * r;
        let eeps = k.beta / v * r;
        u[i] = k.d_alpha * ez + k.d_beta * eeps;
        score[i] = -r / v;
    }
    (u, score)
}

/// Root mean square of (learned - exact) over the queries, and of the exact field.
fn rms_error(
    learned: impl Fn(&Tensor, &Tensor) -> Tensor,
    exact: impl Fn([f32; 2], f64) -> [f64; 2],
    path: GaussianPath,
) -> (f64, f64) {
    let (mut err, mut norm, mut n) = (0.0, 0.0, 0.0);
    for (x, t) in queries(path) {
        let got: Vec<f32> = learned(&point(x), &Tensor::new(&[t as f32], &Device::Cpu).unwrap())
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = exact(x, t);
        for i in 0..2 {
            err += (got[i] as f64 - want[i]).powi(2);
            norm += want[i].powi(2);
            n += 1.0;
        }
    }
    ((err / n).sqrt(), (norm / n).sqrt())
}

/// Heun's method (second order) for dx/dt = u(x, t) from t = 0 to 1 in `steps` steps.
fn heun(u: &LearnedVelocity, x0: Vec<f32>, n: usize, steps: usize) -> Vec<f32> {
    let mut x = Tensor::from_vec(x0, (n, 2), &Device::Cpu).unwrap();
    let h = 1.0 / steps as f64;
    let at = |t: f64| Tensor::new(t as f32, &Device::Cpu).unwrap();
    for k in 0..steps {
        let t = k as f64 * h;
        let v1 = u.velocity(&x, &at(t)).unwrap();
        let guess = (&x + (&v1 * h).unwrap()).unwrap();
        let v2 = u.velocity(&guess, &at(t + h)).unwrap();
        x = (x + ((v1 + v2).unwrap() * (h / 2.0)).unwrap()).unwrap();
    }
    x.flatten_all().unwrap().to_vec1().unwrap()
}

/// Per-coordinate mean and standard deviation of (n, 2) points.
fn moments(x: &[f32]) -> ([f64; 2], [f64; 2]) {
    let n = (x.len() / 2) as f64;
    let mut mean = [0.0; 2];
    let mut sd = [0.0; 2];
    for i in 0..2 {
        mean[i] = x.iter().skip(i).step_by(2).map(|&v| v as f64).sum::<f64>() / n;
        sd[i] = (x
            .iter()
            .skip(i)
            .step_by(2)
            .map(|&v| (v as f64 - mean[i]).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
    }
    (mean, sd)
}

#[test]
fn flow_matching_learns_the_gaussian_marginal_field_and_its_ode_samples_the_data() {
    let dir = tmp();
    let (data, out, log) = (
        path(&dir, "d.npy"),
        path(&dir, "m.st"),
        path(&dir, "l.jsonl"),
    );
    write_gaussian(&data, 4000, M, S, 1);
    let mut args = vec![
        "--data",
        &data,
        "-o",
        &out,
        "--log",
        &log,
        "--log-every",
        "100",
    ];
    args.extend(SHORT);
    train(FIT_V, &args);
    let u = LearnedVelocity::open(&out, &Device::Cpu).unwrap();
    let path = GaussianPath::CONDOT;
    let (err, scale) = rms_error(
        |x, t| u.velocity(x, t).unwrap(),
        |x, t| closed_forms(path, x, t).0,
        path,
    );
    // A short run gets within about 5% of the exact field (an untrained net is off by ~100%).
    assert!(err < 0.1 * scale, "rms error {err} vs field size {scale}");
    // ODE samples: 2000 points, so the mean has standard error s / sqrt(2000) ~ 0.011 and the
    // std s / sqrt(4000) ~ 0.008; a short run also shrinks the std by a few hundredths.
    let n = 2000;
    let x0 = rng::normal_rows(9, Purpose::Noise, 0, n, 2);
    let (mean, sd) = moments(&heun(&u, x0, n, 100));
    for i in 0..2 {
        assert!((mean[i] - M[i] as f64).abs() < 0.05, "mean {mean:?}");
        assert!((sd[i] - S as f64).abs() < 0.05, "std {sd:?}");
    }
    // The loss curve: 8 JSON lines with the step, a finite loss and the learning rate.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[7]["step"], 800);
    assert!(
        lines[7]["lr"].as_f64().unwrap() < 1e-4,
        "cosine decay ends near 0"
    );
    assert!(lines[7]["loss"].as_f64().unwrap() < lines[0]["loss"].as_f64().unwrap());
}

/// The variance-exploding path (issue 27): fit-velocity --path ve records the path and its noise
/// levels, sample-noise --model draws its p_init N(0, 50^2 I), and DDIM (eta 0 and 1) and Heun
/// from there land on the data's mean and std. From N(0, I) they would not: the flow keeps the
/// spread it starts with in proportion, 1/50 of the data's.
#[test]
fn a_ve_model_samples_the_data_from_its_wide_prior() {
    const NOISE: &str = bin!("sample-noise");
    const SIM: &str = bin!("simulate-sde");
    let dir = tmp();
    let (data, m) = (path(&dir, "d.npy"), path(&dir, "ve.st"));
    write_gaussian(&data, 4000, M, S, 1);
    // x_t = z + beta_t eps with beta up to 50 is hard on a raw MLP (inputs of scale 50, velocity
    // targets up to 8.5 * 50): it takes a wider net and longer than SHORT, about 10 s in debug.
    #[rustfmt::skip]
    let args = [
        "--data", &data, "-o", &m, "--path", "ve", "--steps", "4000", "--batch", "512",
        "--hidden", "64,64", "--time-features", "4", "--lr", "3e-3", "--decay", "cosine",
        "--seed", "3",
    ];
    train(FIT_V, &args);
    let config = model::load(&m, &Device::Cpu).unwrap().config;
    assert_eq!(config["path"]["beta"], "ve");
    assert_eq!(config["path"]["sigma_max"], 50.0);
    let x0 = ok(NOISE, &["--model", &m, "-n", "2000", "--seed", "9"], b"");
    let (_, sd0) = moments(npy_f32(&x0).as_slice().unwrap());
    assert!(
        sd0.iter().all(|s| (s - 50.0).abs() < 2.5),
        "p_init std {sd0:?}"
    );
    let sample = |x0: &[u8], solver: &[&str]| {
        let mut a = vec!["--field", &m, "-q"];
        a.extend(solver);
        if !a.contains(&"--steps") {
            a.extend(["--steps", "200"]);
        }
        moments(npy_f32(&ok(SIM, &a, x0)).as_slice().unwrap())
    };
    // The ancestral sampler's variance has a first-order bias (lib/solvers/ddim.rs): 1000 steps.
    for solver in [
        &["--solver", "ddim", "--eta", "0"][..],
        &["--solver", "ddim", "--eta", "1", "--steps", "1000"],
        &["--solver", "heun"],
    ] {
        let (mean, sd) = sample(&x0, solver);
        for i in 0..2 {
            assert!(
                (mean[i] - M[i] as f64).abs() < 0.08,
                "{solver:?}: mean {mean:?}"
            );
            assert!((sd[i] - S as f64).abs() < 0.08, "{solver:?}: std {sd:?}");
        }
    }
    let unit = ok(NOISE, &["-n", "2000", "--seed", "9"], b"");
    let (_, sd) = sample(&unit, &["--solver", "heun"]);
    assert!(sd.iter().all(|&s| s < 0.1), "from N(0, I): std {sd:?}");
    // The model fixes the sample shape; another is a usage error.
    let bad = run(NOISE, &["--model", &m, "--shape", "3"], b"");
    fails(&bad, 2, &["--shape 3 differs", "ve.st", "sample shape 2"]);
    let bad = run(NOISE, &["--model", &m, "--std", "2"], b"");
    assert_eq!(bad.status.code(), Some(2));
    // Minibatch OT pairs eps with z by distance: meaningless where x_0 = z + 50 eps.
    let out = path(&dir, "ot.st");
    let bad = run(
        FIT_V,
        &[
            "--data",
            &data,
            "--path",
            "ve",
            "--coupling",
            "ot",
            "-o",
            &out,
        ],
        b"",
    );
    fails(&bad, 2, &["--coupling ot", "--path ve"]);
    assert!(!std::path::Path::new(&out).exists());
}

#[test]
fn score_matching_learns_the_gaussian_score_in_both_forms() {
    let dir = tmp();
    let data = path(&dir, "d.npy");
    write_gaussian(&data, 4000, M, S, 2);
    let path_ = GaussianPath::SQRT;
    for param in ["noise", "score"] {
        let out = path(&dir, &format!("{param}.st"));
        let mut args = vec!["--data", &data, "--param", param, "-o", &out];
        args.extend(SHORT);
        train(FIT_S, &args);
        let m = model::load(&out, &Device::Cpu).unwrap();
        assert_eq!(m.kind(), "score");
        assert_eq!(m.config["parametrisation"], param);
        let s = LearnedScore::load(&m, &Device::Cpu).unwrap();
        let (err, scale) = rms_error(
            |x, t| s.score(x, t).unwrap(),
            |x, t| closed_forms(path_, x, t).1,
            path_,
        );
        // The noise form trains steadier: its targets stay bounded as t -> 1.
        let tol = if param == "noise" { 0.06 } else { 0.15 };
        assert!(
            err < tol * scale,
            "{param}: rms error {err} vs score size {scale}"
        );
        if param == "noise" {
            // The same model as a velocity field (Proposition 1).
            let u = LearnedVelocity::load(&m, &Device::Cpu).unwrap();
            let (err, scale) = rms_error(
                |x, t| u.velocity(x, t).unwrap(),
                |x, t| closed_forms(path_, x, t).0,
                path_,
            );
            assert!(err < 0.1 * scale, "velocity rms error {err} vs {scale}");
        }
    }
}

#[test]
fn a_flow_bridges_a_source_data_set_to_the_data() {
    let dir = tmp();
    let (src, data, out) = (path(&dir, "s.npy"), path(&dir, "d.npy"), path(&dir, "m.st"));
    write_gaussian(&src, 2000, [-3.0, 0.0], 0.3, 3);
    write_gaussian(&data, 2000, [3.0, 1.0], 0.3, 4);
    let mut args = vec!["--data", &data, "--source", &src, "-o", &out];
    args.extend(SHORT);
    train(FIT_V, &args);
    let m = model::load(&out, &Device::Cpu).unwrap();
    assert_eq!(m.config["path"]["kind"], "linear-interpolant");
    assert_eq!(m.config["source"], "data");
    let u = LearnedVelocity::load(&m, &Device::Cpu).unwrap();
    let x0 = npy::read_f32(&src).unwrap().iter().copied().collect();
    let (mean, _) = moments(&heun(&u, x0, 2000, 50));
    assert!(
        (mean[0] - 3.0).abs() < 0.15 && (mean[1] - 1.0).abs() < 0.15,
        "{mean:?}"
    );
    assert!(LearnedScore::load(&m, &Device::Cpu).is_err());
}

/// The tensors of a model file, by name, as raw bytes.
fn tensor_bytes(p: &str) -> Vec<(String, Vec<u8>)> {
    let m = model::load(p, &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = m
        .tensors
        .iter()
        .map(|(k, t)| {
            let f: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), f.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = tmp();
    let (data, src) = (path(&dir, "d.npy"), path(&dir, "s.npy"));
    write_gaussian(&data, 500, M, S, 5);
    write_gaussian(&src, 300, [0.0, 2.0], 1.0, 6);
    let runs: [(&str, &[&str]); 3] = [
        (FIT_V, &["--ema", "0.9"]),
        (FIT_V, &["--source", &src]),
        (
            FIT_S,
            &["--param", "noise", "--path", "cosine", "--ema", "0.95"],
        ),
    ];
    for (k, (tool, extra)) in runs.iter().enumerate() {
        let whole = path(&dir, &format!("whole{k}.st"));
        let resumed = path(&dir, &format!("resumed{k}.st"));
        let ckpt = path(&dir, &format!("ck{k}-{{step}}.st"));
        let log = path(&dir, &format!("log{k}.jsonl"));
        let mut args = vec![
            "--data",
            &data,
            "--steps",
            "40",
            "--batch",
            "64",
            "--hidden",
            "16,16",
            "--warmup",
            "5",
            "--decay",
            "cosine",
            "--weight-decay",
            "0.01",
            "--seed",
            "7",
            "--checkpoint",
            &ckpt,
            "--checkpoint-every",
            "20",
            "-o",
            &whole,
        ];
        args.extend_from_slice(extra);
        train(tool, &args);
        // The checkpoint of step 20 is what an interrupted run leaves behind.
        let ck20 = ckpt.replace("{step}", "20");
        let c = model::load(&ck20, &Device::Cpu).unwrap();
        assert_eq!((c.kind(), &c.config["step"]), ("checkpoint", &20.into()));
        assert!(c.tensors.keys().any(|n| n.starts_with("adam.m.")));
        let mut again = vec!["--data", &data, "--resume", &ck20, "-o", &resumed];
        again.extend(["--log", &log, "--log-every", "10"]);
        if extra.contains(&"--source") {
            again.extend(["--source", &src]);
        }
        train(tool, &again);
        let (a, b) = (tensor_bytes(&whole), tensor_bytes(&resumed));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(ta == tb, "run {k}: tensor {na} differs after resuming");
        }
        let c20 = tensor_bytes(&ck20);
        let w = c20.iter().find(|(n, _)| n == "out.weight").unwrap();
        assert!(
            !a.contains(w),
            "run {k}: weights did not change after step 20"
        );
        let steps: Vec<u64> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [30, 40]);
    }
}

#[test]
fn bad_hyperparameters_exit_2_and_write_nothing() {
    let dir = tmp();
    let data = path(&dir, "d.npy");
    write_gaussian(&data, 50, M, S, 0);
    let out = path(&dir, "m.st");
    let ck = path(&dir, "ck.st");
    let cases: [(&str, &[&str], &str); 8] = [
        (FIT_V, &["--lr", "0"], "--lr must be positive"),
        (FIT_V, &["--lr", "-1e-3"], "--lr must be positive"),
        (FIT_V, &["--batch", "0"], "--batch"),
        (FIT_S, &["--steps", "0"], "--steps"),
        (FIT_V, &["--ema", "1.5"], "--ema"),
        (FIT_V, &["--hidden", "32,0"], "--hidden"),
        (
            FIT_V,
            &["--source", &data, "--path", "condot"],
            "linear-interp",
        ),
        (FIT_S, &["--path", "linear-interp"], "Gaussian path"),
    ];
    for (tool, extra, needle) in cases {
        let mut args = vec![
            "--data",
            &data,
            "-o",
            &out,
            "--checkpoint",
            &ck,
            "--log",
            &ck,
        ];
        args.extend_from_slice(extra);
        let r = run(tool, &args, b"");
        fails(&r, 2, &[": error:", needle]);
    }
    assert_eq!(files(dir.path()).len(), 1, "a failed run left files behind");
}

#[test]
fn bad_data_exits_1_naming_the_file_and_shape() {
    let dir = tmp();
    let out = path(&dir, "m.st");
    let cube = path(&dir, "cube.npy");
    npy::write(&cube, &npy::from_vec(&[4, 1, 2, 2], vec![0.0; 16]).unwrap()).unwrap();
    // Images are data too (Lab 3), but not for the MLP.
    let r = run(FIT_V, &["--data", &cube, "--arch", "mlp", "-o", &out], b"");
    fails(
        &r,
        1,
        &["fit-velocity: error:", "cube.npy", "(N, D)", "(4, 1, 2, 2)"],
    );
    let nan = path(&dir, "nan.npy");
    npy::write(
        &nan,
        &npy::from_vec(&[2, 2], vec![0.0, f32::NAN, 1.0, 1.0]).unwrap(),
    )
    .unwrap();
    let r = run(FIT_S, &["--data", &nan, "-o", &out], b"");
    fails(&r, 1, &["nan.npy", "non-finite"]);
    let (d2, d3) = (path(&dir, "d2.npy"), path(&dir, "d3.npy"));
    write_gaussian(&d2, 50, M, S, 0);
    npy::write(&d3, &npy::from_vec(&[5, 3], vec![0.5; 15]).unwrap()).unwrap();
    let r = run(FIT_V, &["--data", &d2, "--source", &d3, "-o", &out], b"");
    fails(&r, 1, &["d3.npy", "(N, 2)", "(5, 3)"]);
    let r = run(
        FIT_V,
        &["--data", &path(&dir, "missing.npy"), "-o", &out],
        b"",
    );
    fails(&r, 1, &["missing.npy"]);
    assert!(!std::path::Path::new(&out).exists());
}

#[test]
fn resuming_checks_data_dimension_kind_and_settings() {
    let dir = tmp();
    let (d2, d3) = (path(&dir, "d2.npy"), path(&dir, "d3.npy"));
    write_gaussian(&d2, 100, M, S, 0);
    npy::write(&d3, &npy::from_vec(&[5, 3], vec![0.5; 15]).unwrap()).unwrap();
    let ck = path(&dir, "ck.st");
    let small = ["--steps", "5", "--batch", "8", "--hidden", "4"];
    let first = path(&dir, "first.st");
    let mut args = vec!["--data", &d2, "--checkpoint", &ck, "-o", &first];
    args.extend(small);
    train(FIT_V, &args);
    // The checkpoint loads as a model, too.
    assert!(LearnedVelocity::open(&ck, &Device::Cpu).is_ok());
    let out = path(&dir, "m.st");
    let r = run(
        FIT_V,
        &["--data", &d3, "--resume", &ck, "--steps", "9", "-o", &out],
        b"",
    );
    fails(&r, 1, &["d3.npy", "ck.st", "(N, 2)", "(5, 3)"]);
    let r = run(
        FIT_V,
        &["--data", &d2, "--resume", &ck, "--lr", "0.5", "-o", &out],
        b"",
    );
    fails(&r, 2, &["--lr", "ck.st"]);
    let r = run(
        FIT_V,
        &["--data", &d2, "--resume", &ck, "--steps", "3", "-o", &out],
        b"",
    );
    fails(&r, 2, &["--steps 3"]);
    let r = run(FIT_S, &["--data", &d2, "--resume", &ck, "-o", &out], b"");
    fails(&r, 1, &["ck.st", "velocity model"]);
    let r = run(FIT_V, &["--data", &d2, "--resume", &d2, "-o", &out], b"");
    fails(&r, 1, &["d2.npy", "expected a .safetensors"]);
    assert!(!std::path::Path::new(&out).exists());
}
