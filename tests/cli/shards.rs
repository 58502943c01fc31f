//! Issue 31: a large sample set drawn in K parts (`--first`, `-n`) on K machines, then joined
//! by `concat-npy`, is the one run's set byte for byte; `concat-npy` refuses parts that do not
//! fit, and `--split` undoes the join.

use crate::common::*;
use crate::images::{ok1, train};

const NOISE: &str = bin!("sample-noise");
const SIM: &str = bin!("simulate-sde");
const GUIDE: &str = bin!("guide");
const CONCAT: &str = bin!("concat-npy");

/// Samples N = 24 guided images in one run and in three parts of 8 (each with its own
/// `--first`), and asserts that the joined parts are the one run's bytes. Parts of 8 rows keep
/// the network's kernels on the same summation order as the whole batch (with 1 to 3 rows a
/// matrix product may round differently, in the last bit).
fn parts_equal_whole(dir: &tempfile::TempDir, field: &str, solver: &str) {
    let (n, k) = (24usize, 3usize);
    let whole_x0 = path(dir, "x0.npy");
    let shape = ["--shape", "1,8,8", "--seed", "9"];
    let ns = n.to_string();
    let mut a = vec!["-n", &ns, "-o", &whole_x0];
    a.extend(shape);
    ok1(NOISE, &a);
    let sim = [
        "--field", field, "--solver", solver, "--steps", "4", "--seed", "4", "-q",
    ];
    let mut a = vec![whole_x0.as_str()];
    a.extend(sim);
    let whole = ok1(SIM, &a);

    let mut parts = Vec::new();
    for i in 0..k {
        let (lo, hi) = (i * n / k, (i + 1) * n / k);
        let (first, count) = (lo.to_string(), (hi - lo).to_string());
        let (x0, x1) = (
            path(dir, &format!("x0-{i}.npy")),
            path(dir, &format!("x1-{i}.npy")),
        );
        let mut a = vec!["--first", &first, "-n", &count, "-o", &x0];
        a.extend(shape);
        ok1(NOISE, &a);
        let mut a = vec![x0.as_str(), "--first", &first, "-o", &x1];
        a.extend(sim);
        ok1(SIM, &a);
        parts.push(x1);
    }
    let joined = path(dir, "joined.npy");
    let mut a: Vec<&str> = parts.iter().map(String::as_str).collect();
    a.extend(["-o", &joined]);
    ok(CONCAT, &a, b"");
    assert!(
        std::fs::read(&joined).unwrap() == whole,
        "{solver}: the joined parts differ from the one run"
    );
    // And through stdout, as a pipeline would.
    let mut a: Vec<&str> = parts.iter().map(String::as_str).collect();
    a.extend(["-o", "-"]);
    assert!(ok(CONCAT, &a, b"") == whole);
}

#[test]
fn sharded_guided_sampling_is_the_one_run_byte_for_byte() {
    let dir = tmp();
    let m = train(&dir, "dit", "20", &[]);
    // The ODE (Heun) on the CFG field, classes 0 and 1 in blocks that straddle the parts.
    let g = path(&dir, "g.json");
    ok1(
        GUIDE,
        &["--model", &m, "--each", "12", "--scale", "2", "-o", &g],
    );
    parts_equal_whole(&dir, &g, "heun");
    // The SDE (Euler-Maruyama): each sample's Brownian stream follows its index.
    let gs = path(&dir, "gs.json");
    let args = [
        "--model", &m, "--each", "12", "--scale", "2", "--sigma", "0.5", "-o", &gs,
    ];
    ok1(GUIDE, &args);
    parts_equal_whole(&dir, &gs, "euler-maruyama");
}

#[test]
fn concat_refuses_parts_that_do_not_fit_and_split_undoes_it() {
    let dir = tmp();
    let (a, b) = (path(&dir, "a.npy"), path(&dir, "b.npy"));
    ok(NOISE, &["-n", "5", "--shape", "2,3", "-o", &a], b"");
    ok(NOISE, &["-n", "4", "--shape", "3,2", "-o", &b], b"");
    let out = path(&dir, "out.npy");
    // Another item shape: the file, the expected and the found are named; nothing is written.
    let r = run(CONCAT, &[&a, &b, "-o", &out], b"");
    fails(&r, 1, &["b.npy", "(N, 2, 3)", "(4, 3, 2)"]);
    assert!(!std::path::Path::new(&out).exists());
    // Another dtype: i64 labels after f32 images.
    let y = path(&dir, "y.npy");
    flowpipe::io::npy::write(
        &y,
        &ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3]), vec![0i64, 1, 2]).unwrap(),
    )
    .unwrap();
    let r = run(CONCAT, &[&a, &y, "-o", &out], b"");
    fails(&r, 1, &["y.npy", "float32", "int64"]);
    assert!(!std::path::Path::new(&out).exists());
    // --split K then concat gives the file back; a template without {} is a usage error.
    let tmpl = path(&dir, "part-{}.npy");
    ok(CONCAT, &[&a, "--split", "2", "-o", &tmpl], b"");
    let (p0, p1) = (path(&dir, "part-0.npy"), path(&dir, "part-1.npy"));
    assert_eq!(npy_f32(&std::fs::read(&p0).unwrap()).shape(), &[2, 2, 3]);
    assert_eq!(npy_f32(&std::fs::read(&p1).unwrap()).shape(), &[3, 2, 3]);
    assert!(ok(CONCAT, &[&p0, &p1, "-o", "-"], b"") == std::fs::read(&a).unwrap());
    let r = run(CONCAT, &[&a, "--split", "2", "-o", &out], b"");
    fails(&r, 2, &["{}"]);
}
