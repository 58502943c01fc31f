//! fit-velocity --coupling (issue 28): a flow trained on minibatch-OT pairs keeps a far
//! Gaussian's moments, is reproducible and resumes bit-identically; the flag's usage errors;
//! `make couplings SMALL=1` writes its table and figure.

use crate::common::*;
use candle_core::Device;
use flowpipe::io::model;

const DATA: &str = bin!("sample-data");
const NOISE: &str = bin!("sample-noise");
const FIT_V: &str = bin!("fit-velocity");
const FIT_S: &str = bin!("fit-score");
const SIM: &str = bin!("simulate-sde");

const FIT: [&str; 12] = [
    "--coupling",
    "ot",
    "--batch",
    "128",
    "--hidden",
    "64,64",
    "--lr",
    "3e-3",
    "--threads",
    "1",
    "--seed",
    "3",
];

/// The ODE samples (Heun, 40 steps) of `model` from `noise`.
fn ode_samples(model: &str, noise: &str) -> Vec<u8> {
    let args = [noise, "--field", model, "--solver", "heun", "--steps", "40"];
    ok(SIM, &[&args[..], &["-q", "--threads", "1"]].concat(), b"")
}

/// Asserts that the samples (an .npy of (N, 2)) have the target N((3, -2), 0.5^2 I)'s means
/// (within 0.1) and standard deviations (within `std_tol`).
fn assert_moments(samples: &[u8], std_tol: f64) {
    let x = npy_f32(samples);
    let n = x.shape()[0] as f64;
    for (j, (want_m, want_s)) in [(3.0, 0.5), (-2.0, 0.5)].into_iter().enumerate() {
        let col: Vec<f64> = (0..x.shape()[0]).map(|i| x[[i, j]] as f64).collect();
        let mean = col.iter().sum::<f64>() / n;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - want_m).abs() < 0.1, "coordinate {j}: mean {mean}");
        assert!((std - want_s).abs() < std_tol, "coordinate {j}: std {std}");
    }
}

#[test]
fn an_ot_coupled_flow_keeps_a_far_gaussians_mean_and_std() {
    let dir = tmp();
    let (data, noise) = (path(&dir, "d.npy"), path(&dir, "z.npy"));
    let (m, m2) = (path(&dir, "m.st"), path(&dir, "m2.st"));
    ok(
        DATA,
        &[
            "gaussian:mean=3,-2,std=0.5",
            "-n",
            "2000",
            "--seed",
            "1",
            "-o",
            &data,
        ],
        b"",
    );
    ok(
        NOISE,
        &["-n", "2000", "--shape", "2", "--seed", "2", "-o", &noise],
        b"",
    );
    let args = [&FIT[..], &["--data", &data, "--steps", "600", "-q"]].concat();
    ok(FIT_V, &[&args[..], &["-o", &m]].concat(), b"");
    assert_moments(&ode_samples(&m, &noise), 0.08);
    let cfg = model::load(&m, &Device::Cpu).unwrap().config;
    assert_eq!(cfg["train"]["coupling"], "ot", "{}", cfg["train"]);
    // Same seed, same bytes.
    ok(FIT_V, &[&args[..], &["-o", &m2]].concat(), b"");
    assert_eq!(std::fs::read(&m).unwrap(), std::fs::read(&m2).unwrap());
}

#[test]
fn coupled_runs_resume_bit_identically_and_check_the_flag() {
    let dir = tmp();
    let data = path(&dir, "d.npy");
    let noise = path(&dir, "z.npy");
    ok(
        DATA,
        &["8gaussians", "-n", "500", "--seed", "1", "-o", &data],
        b"",
    );
    ok(NOISE, &["-n", "100", "--shape", "2", "-o", &noise], b"");
    let (whole, resumed, ck) = (
        path(&dir, "w.st"),
        path(&dir, "r.st"),
        path(&dir, "ck-{step}.st"),
    );
    let short = ["--data", &data, "--steps", "40", "-q"];
    let ckpt = [
        "--checkpoint",
        &ck,
        "--checkpoint-every",
        "20",
        "-o",
        &whole,
    ];
    ok(FIT_V, &[&FIT[..], &short, &ckpt].concat(), b"");
    let ck20 = ck.replace("{step}", "20");
    let again = [
        "--data",
        &data,
        "--resume",
        &ck20,
        "-q",
        "--threads",
        "1",
        "-o",
        &resumed,
    ];
    ok(FIT_V, &again, b"");
    assert_eq!(ode_samples(&whole, &noise), ode_samples(&resumed, &noise));
    // A resumed run keeps its coupling.
    let r = run(
        FIT_V,
        &[&again[..], &["--coupling", "independent"]].concat(),
        b"",
    );
    fails(&r, 2, &["--coupling independent", "ot", "ck-20.st"]);
    // The default is independent, and its file does not record it (as before the flag).
    let plain = path(&dir, "p.st");
    ok(
        FIT_V,
        &[&short[..], &["--hidden", "8", "-o", &plain]].concat(),
        b"",
    );
    let cfg = model::load(&plain, &Device::Cpu).unwrap().config;
    assert!(cfg["train"].get("coupling").is_none(), "{}", cfg["train"]);
    // Unknown values list the valid ones; score matching refuses the flag.
    let r = run(
        FIT_V,
        &[&short[..], &["--coupling", "sinkhorn", "-o", &plain]].concat(),
        b"",
    );
    fails(&r, 2, &["sinkhorn", "independent", "ot"]);
    let r = run(
        FIT_S,
        &[&short[..], &["--coupling", "ot", "-o", &plain]].concat(),
        b"",
    );
    fails(&r, 2, &["--coupling"]);
}

/// `make couplings SMALL=1`: the table holds every (data, coupling, steps) row, and the figure
/// is a PNG.
#[test]
fn couplings_pipeline_writes_its_table_and_figure_at_small_sizes() {
    let out = tmp();
    make_small(&["couplings"], out.path(), &[]);
    let dir = out.path().join("couplings");
    let table = std::fs::read_to_string(dir.join("couplings.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = table
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2 * 3 * 5, "{table}");
    for r in &rows {
        assert!(r["energy_distance"].is_number(), "{r}");
        assert!(["independent", "ot", "floor"].contains(&r["coupling"].as_str().unwrap()));
        // Each model's straightness, >= 0 up to rounding; none for the floor.
        match r["coupling"].as_str().unwrap() {
            "floor" => assert!(r["straightness"].is_null(), "{r}"),
            _ => assert!(r["straightness"].as_f64().unwrap() > -1e-6, "{r}"),
        }
    }
    let img = image::open(dir.join("couplings.png")).unwrap();
    assert!(img.width() >= 200 && img.height() >= 200);
}

/// fit-velocity --interpolant-noise (issue 28): the stochastic interpolant between two
/// Gaussians still carries the source to the data (its ODE samples keep the target's mean and
/// std), the file records the noise, a resumed run keeps it, and from N(0, I) it is refused.
#[test]
fn the_stochastic_interpolant_carries_source_to_data() {
    let dir = tmp();
    let (data, src, x0) = (
        path(&dir, "d.npy"),
        path(&dir, "s.npy"),
        path(&dir, "x0.npy"),
    );
    let gauss = |spec: &str, n: &str, seed: &str, out: &str| {
        ok(DATA, &[spec, "-n", n, "--seed", seed, "-o", out], b"");
    };
    gauss("gaussian:mean=3,-2,std=0.5", "2000", "1", &data);
    gauss("gaussian:mean=-2,1,std=1", "2000", "2", &src);
    gauss("gaussian:mean=-2,1,std=1", "2000", "3", &x0);
    let (m, ck) = (path(&dir, "m.st"), path(&dir, "ck-{step}.st"));
    let fit = [
        "--data",
        &data,
        "--source",
        &src,
        "--interpolant-noise",
        "1.5",
        "--hidden",
        "64,64",
        "--lr",
        "3e-3",
        "--batch",
        "256",
        "--steps",
        "800",
        "--threads",
        "1",
        "--seed",
        "3",
        "-q",
    ];
    let keep = ["--checkpoint", &ck, "--checkpoint-every", "400", "-o", &m];
    ok(FIT_V, &[&fit[..], &keep].concat(), b"");
    assert_moments(&ode_samples(&m, &x0), 0.1);
    let cfg = model::load(&m, &Device::Cpu).unwrap().config;
    assert_eq!(cfg["train"]["interpolant_noise"], 1.5, "{}", cfg["train"]);
    // A resumed run keeps its noise.
    let ck400 = ck.replace("{step}", "400");
    let again = [
        "--data",
        &data,
        "--source",
        &src,
        "--resume",
        &ck400,
        "--interpolant-noise",
        "1",
        "-q",
        "-o",
        &m,
    ];
    let r = run(FIT_V, &again, b"");
    fails(&r, 2, &["--interpolant-noise 1", "1.5", "ck-400.st"]);
    // From N(0, I), or negative: usage errors.
    let r = run(
        FIT_V,
        &["--data", &data, "--interpolant-noise", "1", "-o", &m],
        b"",
    );
    fails(&r, 2, &["--source"]);
    let r = run(
        FIT_V,
        &[
            "--data",
            &data,
            "--source",
            &src,
            "--interpolant-noise",
            "-1",
            "-o",
            &m,
        ],
        b"",
    );
    fails(&r, 2, &["--interpolant-noise", "-1"]);
}

/// `make schedules SMALL=1` (issue 28): one row per path and time density, each with its two
/// energy distances and its test NLL.
#[test]
fn schedules_pipeline_tabulates_every_path_and_time_density() {
    let out = tmp();
    make_small(&["schedules"], out.path(), &[]);
    let table = std::fs::read_to_string(out.path().join("schedules/schedules.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = table
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 15, "{table}");
    for path in ["condot", "sqrt", "cosine", "vp", "ve"] {
        for time in ["uniform", "logit-normal:0,1", "mode:1.29"] {
            let row = rows
                .iter()
                .find(|r| r["path"] == path && r["time_density"] == time)
                .unwrap_or_else(|| panic!("no row for {path} / {time} in {table}"));
            for key in ["energy_distance_euler8", "energy_distance_heun50", "nll"] {
                assert!(row[key].as_f64().is_some_and(f64::is_finite), "{row}");
            }
        }
    }
}
