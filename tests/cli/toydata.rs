//! Lab 2's 2D tools: sample-data (toy p_data) and evaluate (energy distance, MMD^2, sliced W2).

use crate::common::*;

const DATA: &str = bin!("sample-data");
const EVAL: &str = bin!("evaluate");

fn labels(bytes: &[u8]) -> Vec<i64> {
    flowpipe::io::npy::decode_i64(bytes, "labels")
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[test]
fn sample_data_is_reproducible_with_labels_and_pipe_equals_file() {
    let dir = tmp();
    let (p, l) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    let a = ok(DATA, &["moons", "-n", "200", "--seed", "3"], b"");
    assert_eq!(a, ok(DATA, &["moons", "-n", "200", "--seed", "3"], b""));
    assert_ne!(a, ok(DATA, &["moons", "-n", "200", "--seed", "4"], b""));
    ok(
        DATA,
        &[
            "moons", "-n", "200", "--seed", "3", "-o", &p, "--labels", &l,
        ],
        b"",
    );
    assert_eq!(std::fs::read(&p).unwrap(), a);
    assert_eq!(npy_f32(&a).shape(), &[200, 2]);
    let y = labels(&std::fs::read(&l).unwrap());
    assert_eq!(y.len(), 200);
    assert!(y.iter().all(|&c| c == 0 || c == 1) && y.contains(&0) && y.contains(&1));
}

#[test]
fn every_data_set_runs_with_prefix_and_part_properties() {
    for name in [
        "gaussian:mean=1,-1,std=2",
        "moons",
        "circles:factor=0.3",
        "checkerboard:grid=6,scale=3",
        "spirals:turns=2",
        "8gaussians",
    ] {
        let big = npy_f32(&ok(DATA, &[name, "-n", "1000", "--seed", "5"], b""));
        let small = npy_f32(&ok(DATA, &[name, "-n", "10", "--seed", "5"], b""));
        let part = npy_f32(&ok(
            DATA,
            &[
                name,
                "-n",
                "7",
                "--first",
                "500",
                "--seed",
                "5",
                "--threads",
                "1",
            ],
            b"",
        ));
        assert_eq!(big.shape(), &[1000, 2], "{name}");
        let flat: Vec<f32> = big.iter().copied().collect();
        assert_eq!(&flat[..20], small.as_slice().unwrap(), "{name}: prefix");
        assert_eq!(&flat[1000..1014], part.as_slice().unwrap(), "{name}: part");
    }
}

#[test]
fn checkerboard_points_sit_in_kept_cells() {
    let x = npy_f32(&ok(
        DATA,
        &["checkerboard:grid=4,scale=2", "-n", "500"],
        b"",
    ));
    for p in x.as_slice().unwrap().chunks(2) {
        let (i, j) = ((p[0] + 2.0).floor() as i32, (p[1] + 2.0).floor() as i32);
        assert!((0..4).contains(&i) && (0..4).contains(&j), "{p:?}");
        assert_eq!((i + j) % 2, 0, "{p:?}");
    }
}

#[test]
fn sample_data_bad_parameters_exit_2_and_write_nothing() {
    let dir = tmp();
    let (p, l) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    let cases: &[(&[&str], &str)] = &[
        (&["moons:noise=-1"], "noise must be >= 0, got -1"),
        (&["squares"], "unknown data set 'squares'"),
        (&["checkerboard:grid=0"], "grid must be a whole number"),
        (&["circles:factor=2"], "factor must be in (0, 1)"),
        (&["8gaussians:sigma=1"], "unknown parameter 'sigma'"),
        (&["gaussian", "--labels", &l], "has no labels"),
    ];
    for (args, needle) in cases {
        let mut all = args.to_vec();
        all.extend(["-o", &p]);
        fails(&run(DATA, &all, b""), 2, &["sample-data: error:", needle]);
    }
    assert_eq!(
        run(DATA, &["-n", "5", "-o", &p], b"").status.code(),
        Some(2)
    );
    assert!(
        files(dir.path()).is_empty(),
        "a failed run left files behind"
    );
}

#[test]
fn help_lists_data_sets_and_an_example() {
    let help = String::from_utf8(ok(DATA, &["--help"], b"")).unwrap();
    for needle in [
        "Example:",
        "| evaluate",
        "checkerboard",
        "grid=4 scale=5",
        "8gaussians",
    ] {
        assert!(help.contains(needle), "{needle} missing: {help}");
    }
    let help = String::from_utf8(ok(EVAL, &["--help"], b"")).unwrap();
    assert!(
        help.contains("Example:") && help.contains("[default: 2000]"),
        "{help}"
    );
}

#[test]
fn evaluate_tells_same_from_different_through_a_pipe() {
    let dir = tmp();
    let r = path(&dir, "ref.npy");
    ok(DATA, &["moons", "-n", "400", "--seed", "2", "-o", &r], b"");
    let fast = ["--reference", &r, "--projections", "32"];
    let same = ok(DATA, &["moons", "-n", "500", "--seed", "1"], b"");
    let other = ok(DATA, &["checkerboard", "-n", "500", "--seed", "1"], b"");
    let mut args = fast.to_vec();
    args.extend(["--max-n", "300"]);
    let s = json(&ok(EVAL, &args, &same));
    let d = json(&ok(EVAL, &args, &other));
    assert_eq!(s["n_x"], 500);
    assert_eq!(s["n_y"], 400);
    assert_eq!(s["n_x_used"], 300);
    assert_eq!(s["energy_distance"]["n_y"], 300);
    assert_eq!(s["samples"], "stdin");
    // Squared distances, each ~0 (sliced W2: sampling bias ~c/n) for the same distribution.
    for (m, v) in [
        ("energy_distance", "value"),
        ("mmd2_rbf", "value"),
        ("sliced_w2", "squared"),
    ] {
        let (vs, vd) = (s[m][v].as_f64().unwrap(), d[m][v].as_f64().unwrap());
        assert!(vs.abs() * 3.0 < vd, "{m}: same {vs} vs different {vd}");
    }
    // Same seed, same bytes; -o writes what stdout would.
    assert_eq!(ok(EVAL, &args, &same), ok(EVAL, &args, &same));
    let o = path(&dir, "report.json");
    let mut with_o = fast.to_vec();
    with_o.extend(["-o", &o]);
    let on_stdout = ok(EVAL, &fast, &same);
    ok(EVAL, &with_o, &same);
    assert_eq!(std::fs::read(&o).unwrap(), on_stdout);
}

#[test]
fn evaluate_input_errors_exit_1_naming_files_and_shapes() {
    let dir = tmp();
    let (r, e, o) = (
        path(&dir, "ref.npy"),
        path(&dir, "empty.npy"),
        path(&dir, "o.json"),
    );
    ok(DATA, &["moons", "-n", "20", "-o", &r], b"");
    ok(DATA, &["moons", "-n", "0", "-o", &e], b"");
    std::fs::write(&o, b"precious").unwrap();
    let three = ok(bin!("sample-noise"), &["-n", "30", "--shape", "3"], b"");
    let out = run(EVAL, &["--reference", &r, "-o", &o], &three);
    fails(
        &out,
        1,
        &["evaluate: error:", "stdin is (30, 3)", "ref.npy is (20, 2)"],
    );
    let out = run(EVAL, &[&e, "--reference", &r, "-o", &o], b"");
    fails(&out, 1, &["empty.npy holds no samples: shape (0, 2)"]);
    let out = run(
        EVAL,
        &[&r, "--reference", &path(&dir, "nope.npy"), "-o", &o],
        b"",
    );
    fails(&out, 1, &["reading reference samples", "nope.npy"]);
    let out = run(EVAL, &["--reference", &r, "-o", &o], b"");
    fails(&out, 1, &["stdin is empty"]);
    assert_eq!(std::fs::read(&o).unwrap(), b"precious");
}

#[test]
fn evaluate_bad_flags_exit_2() {
    let dir = tmp();
    let r = path(&dir, "ref.npy");
    ok(DATA, &["moons", "-n", "20", "-o", &r], b"");
    fails(
        &run(EVAL, &[&r, "--reference", &r, "--projections", "0"], b""),
        2,
        &["--projections"],
    );
    fails(
        &run(EVAL, &[&r, "--reference", &r, "--max-n", "1"], b""),
        2,
        &["--max-n"],
    );
    fails(
        &run(EVAL, &["--reference", "-"], b""),
        2,
        &["both be stdin"],
    );
    assert_eq!(run(EVAL, &[&r], b"").status.code(), Some(2));
}
