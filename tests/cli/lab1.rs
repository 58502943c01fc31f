//! Lab 1 tools: simulate-sde and density, their bad inputs, and the lab1 pipeline's data.

use crate::common::*;
use flowpipe::io::npy;
use ndarray::{ArrayD, IxDyn};

const SIM: &str = bin!("simulate-sde");
const DENSITY: &str = bin!("density");
const NOISE: &str = bin!("sample-noise");

/// The stats line simulate-sde prints on stderr.
fn stats(stderr: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {text}"))
}

fn write_npy(dir: &tempfile::TempDir, name: &str, shape: &[usize], data: Vec<f32>) -> String {
    let p = path(dir, name);
    npy::write(&p, &ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()).unwrap();
    p
}

#[test]
fn same_seed_same_bytes_pipe_equals_file_and_batches_do_not_matter() {
    let x0 = ok(NOISE, &["-n", "9", "--shape", "2", "--seed", "4"], b"");
    let args = [
        "--field",
        "ou:theta=0.5,sigma=0.8",
        "--steps",
        "20",
        "--seed",
        "3",
        "-q",
    ];
    let a = ok(SIM, &args, &x0);
    assert_eq!(a, ok(SIM, &args, &x0));
    let mut batched = args.to_vec();
    batched.extend(["--batch", "4"]);
    assert_eq!(a, ok(SIM, &batched, &x0), "--batch changed the paths");
    let mut other = args.to_vec();
    other[5] = "5";
    assert_ne!(a, ok(SIM, &other, &x0));
    let dir = tmp();
    let input = path(&dir, "x0.npy");
    std::fs::write(&input, &x0).unwrap();
    let out = path(&dir, "x1.npy");
    let mut to_file = args.to_vec();
    to_file.extend([input.as_str(), "-o", out.as_str()]);
    ok(SIM, &to_file, b"");
    assert_eq!(std::fs::read(&out).unwrap(), a);
    assert_eq!(npy_f32(&a).shape(), &[9, 2]);
}

#[test]
fn trajectory_and_stats_line() {
    let dir = tmp();
    let traj = path(&dir, "traj.npy");
    let out = run(
        SIM,
        &[
            "--x0",
            "linspace:n=3,from=-1,to=1",
            "--field",
            "linear:theta=1",
            "--solver",
            "heun",
            "--steps",
            "10",
            "--trajectory",
            &traj,
            "--save-every",
            "4",
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = stats(&out.stderr);
    assert_eq!(
        (s["nfe"].as_u64(), s["accepted"].as_u64()),
        (Some(20), Some(10))
    );
    assert_eq!(s["solver"], "heun");
    let t = npy::read_f32(&traj).unwrap();
    // Kept states: grid indices 0, 4, 8 and the last, 10.
    assert_eq!(t.shape(), &[3, 4, 1]);
    let x1 = npy_f32(&out.stdout);
    assert_eq!(t[[2, 3, 0]], x1[[2, 0]]);
    assert!((x1[[2, 0]] - (-1f32).exp()).abs() < 1e-3);
    assert_eq!(t[[0, 0, 0]], -1.0);
}

#[test]
fn dopri5_meets_its_tolerance_and_logs_to_a_file() {
    let dir = tmp();
    let log = path(&dir, "log.jsonl");
    let out = run(
        SIM,
        &[
            "--x0",
            "linspace:n=4,from=1,to=4",
            "--field",
            "linear:theta=2",
            "--solver",
            "dopri5",
            "--rtol",
            "1e-6",
            "--atol",
            "1e-6",
            "--log",
            &log,
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x1 = npy_f32(&out.stdout);
    for (i, v) in x1.iter().enumerate() {
        let want = (i as f32 + 1.0) * (-2f32).exp();
        assert!((v - want).abs() < 2e-5, "{v} vs {want}");
    }
    let s: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    let nfe = s["nfe"].as_u64().unwrap();
    // Euler would need about 10^5 evaluations for this accuracy.
    assert!(nfe < 200, "nfe {nfe}");
    assert!(s["rejected"].is_u64());
}

#[test]
fn a_time_grid_file_equals_the_uniform_grid() {
    let dir = tmp();
    // Dyadic times, exact in f32 and f64.
    let times = write_npy(&dir, "t.npy", &[5], vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    let base = [
        "--x0",
        "zeros:n=5,dim=2",
        "--field",
        "brownian:sigma=2",
        "-q",
    ];
    let mut a = base.to_vec();
    a.extend(["--steps", "4"]);
    let mut b = base.to_vec();
    b.extend(["--times", times.as_str()]);
    assert_eq!(ok(SIM, &a, b""), ok(SIM, &b, b""));
}

#[test]
fn langevin_field_with_density_flag_or_key() {
    let x0 = ok(NOISE, &["-n", "20", "--shape", "2"], b"");
    let a = ok(
        SIM,
        &[
            "--field",
            "langevin:sigma=0.6,density=gaussian:mean=1;2,std=1",
            "--t1",
            "2",
            "-q",
        ],
        &x0,
    );
    let b = ok(
        SIM,
        &[
            "--field",
            "langevin:sigma=0.6",
            "--density",
            "gaussian:mean=1;2,std=1",
            "--t1",
            "2",
            "-q",
        ],
        &x0,
    );
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_fail_clearly_and_write_nothing() {
    let dir = tmp();
    let out = path(&dir, "x1.npy");
    let traj = path(&dir, "traj.npy");
    let good = write_npy(&dir, "good.npy", &[2, 3], vec![0.0; 6]);
    let nan = write_npy(&dir, "nan.npy", &[2, 2], vec![0.0, f32::NAN, 1.0, 2.0]);
    let times = write_npy(&dir, "t.npy", &[3], vec![0.0, 0.5, 0.5]);
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            vec![&good, "--field", "ou", "--times", &times],
            1,
            vec!["t.npy", "strictly monotone"],
        ),
        (
            vec![&good, "--field", "warp:speed=9"],
            2,
            vec!["unknown field 'warp'"],
        ),
        (
            vec![&nan, "--field", "ou"],
            1,
            vec!["nan.npy", "non-finite"],
        ),
        (
            vec![&good, "--field", "ou", "--steps", "0"],
            2,
            vec!["--steps"],
        ),
        (
            vec![
                &good,
                "--field",
                "langevin:sigma=1,density=random_2d:nmodes=3,std=1",
            ],
            1,
            vec!["expected initial states", "(N, 2)", "(2, 3)", "good.npy"],
        ),
        (
            vec![&good, "--field", "ou", "--solver", "rk4"],
            2,
            vec!["euler-maruyama"],
        ),
        (vec!["missing.npy", "--field", "ou"], 1, vec!["missing.npy"]),
        (
            vec![&good, "--field", "ou", "--rtol", "0"],
            2,
            vec!["--rtol"],
        ),
    ];
    for (args, code, needles) in cases {
        let mut a = args.clone();
        a.extend(["--trajectory", traj.as_str(), "-o", out.as_str()]);
        let r = run(SIM, &a, b"");
        let err = fails(&r, code, &needles);
        assert!(err.starts_with("simulate-sde: error: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    std::fs::write(&out, b"precious").unwrap();
    let r = run(SIM, &["--field", "ou"], b"");
    fails(&r, 1, &["stdin is empty"]);
    let r = run(SIM, &[&nan, "--field", "ou", "-o", &out], b"");
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(files(dir.path()).len(), 4, "a failed run left files behind");
}

#[test]
fn a_model_file_of_another_kind_is_not_a_field() {
    let dir = tmp();
    let m = path(&dir, "m.safetensors");
    let t =
        candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    flowpipe::io::model::save(&m, &serde_json::json!({"kind": "vae"}), &[("w".into(), t)]).unwrap();
    let r = run(SIM, &["--x0", "zeros:n=2,dim=2", "--field", &m], b"");
    fails(
        &r,
        1,
        &[
            "m.safetensors",
            "model kind vae is not supported as a field",
        ],
    );
}

#[test]
fn density_samples_evaluates_and_draws_grids() {
    let spec = "gaussian:mean=0;5,std=1;2";
    let x = ok(
        DENSITY,
        &["sample", "-d", spec, "-n", "30", "--seed", "2"],
        b"",
    );
    assert_eq!(
        x,
        ok(
            DENSITY,
            &["sample", "-d", spec, "-n", "30", "--seed", "2"],
            b""
        )
    );
    let part = ok(
        DENSITY,
        &[
            "sample", "-d", spec, "-n", "3", "--seed", "2", "--first", "5",
        ],
        b"",
    );
    assert_eq!(
        npy_f32(&part).as_slice().unwrap(),
        &npy_f32(&x).as_slice().unwrap()[10..16]
    );
    let logp = npy_f32(&ok(DENSITY, &["logp", "-d", spec], &x));
    let score = npy_f32(&ok(DENSITY, &["score", "-d", spec], &x));
    assert_eq!((logp.shape(), score.shape()), (&[30][..], &[30, 2][..]));
    let xs = npy_f32(&x);
    // Score of N((0, 5), diag(1, 4)): -(x - mu) / s^2.
    assert!((score[[0, 1]] + (xs[[0, 1]] - 5.0) / 4.0).abs() < 1e-5);
    let g = npy_f32(&ok(
        DENSITY,
        &[
            "grid",
            "-d",
            spec,
            "--bounds",
            "-10,10,-10,10",
            "--resolution",
            "8,4",
            "--exp",
        ],
        b"",
    ));
    assert_eq!(g.shape(), &[4, 8]);
    // Row 0 is the top (y near 10): the mode at y = 5 lies in the upper rows.
    let row_sum = |i: usize| g.index_axis(ndarray::Axis(0), i).sum();
    assert!(row_sum(1) > row_sum(3), "row 0 should be the top");
}

#[test]
fn density_bad_inputs() {
    let dir = tmp();
    let pts = write_npy(&dir, "p.npy", &[2, 3], vec![0.0; 6]);
    let r = run(DENSITY, &["logp", "-d", "gaussian:mean=0;0", &pts], b"");
    fails(
        &r,
        1,
        &[
            "expected points for a 2-D density (N, 2), got (2, 3) in",
            "p.npy",
        ],
    );
    let r = run(DENSITY, &["grid", "-d", "gaussian:dim=3"], b"");
    fails(&r, 2, &["2-D density"]);
    let r = run(DENSITY, &["sample", "-d", "banana"], b"");
    fails(&r, 2, &["unknown density 'banana'"]);
    let r = run(
        DENSITY,
        &["grid", "-d", "gaussian:dim=2", "--bounds", "1,0,0,1"],
        b"",
    );
    fails(&r, 2, &["--bounds"]);
}

/// `make lab1 SMALL=1`: the data behind the figures, and every figure of the lab as a PNG.
#[test]
fn lab1_pipeline_data_and_figures_at_small_sizes() {
    let out = tmp();
    make_small(&["lab1"], out.path(), &[]);
    let lab = out.path().join("lab1");
    for f in [
        "brownian.png",
        "ou.png",
        "ou-grid.png",
        "langevin.png",
        "target.png",
    ] {
        let img = image::open(lab.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 200 && img.height() >= 200, "{f}");
    }
    // The Langevin figure has two rows of six panels: particles, then their KDE.
    let (p, k) = (
        image::open(lab.join("langevin-particles.png")).unwrap(),
        image::open(lab.join("langevin-kde.png")).unwrap(),
    );
    let both = image::open(lab.join("langevin.png")).unwrap();
    assert!(both.height() >= p.height() + k.height() && both.width() >= p.width());
    let traj = npy::read_f32(lab.join("langevin.traj.npy").to_str().unwrap()).unwrap();
    assert_eq!(traj.shape(), &[100, 11, 2]);
    let grid = npy::read_f32(lab.join("target-density.npy").to_str().unwrap()).unwrap();
    assert_eq!(grid.shape(), &[40, 40]);
    for f in [
        "brownian.x1.npy",
        "ou-sigma0.25.traj.npy",
        "ou-grid-s10_d4.traj.npy",
    ] {
        assert!(lab.join(f).is_file(), "{f} missing");
    }
}
