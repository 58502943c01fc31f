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
    let x = npy_f32(&ode_samples(&m, &noise));
    let n = x.shape()[0] as f64;
    for (j, (want_m, want_s)) in [(3.0, 0.5), (-2.0, 0.5)].into_iter().enumerate() {
        let col: Vec<f64> = (0..x.shape()[0]).map(|i| x[[i, j]] as f64).collect();
        let mean = col.iter().sum::<f64>() / n;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - want_m).abs() < 0.1, "coordinate {j}: mean {mean}");
        assert!((std - want_s).abs() < 0.08, "coordinate {j}: std {std}");
    }
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
