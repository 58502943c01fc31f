//! Helpers to run the real binaries built by cargo for this test run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The path of a tool built for this test run: `bin!("sample-noise")`.
#[macro_export]
macro_rules! bin {
    ($name:literal) => {
        env!(concat!("CARGO_BIN_EXE_", $name))
    };
}

/// Runs `exe` with `args`, feeding `stdin`, and returns its output.
pub fn run(exe: &str, args: &[&str], stdin: &[u8]) -> Output {
    run_in(exe, args, stdin, None)
}

/// Like [`run`], in the folder `dir`.
pub fn run_in(exe: &str, args: &[&str], stdin: &[u8], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Runs a tool and asserts success, returning stdout.
pub fn ok(exe: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(exe, args, stdin);
    assert!(
        out.status.success(),
        "{exe} {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Asserts a failure with `code` whose stderr is one line containing every `needle`.
pub fn fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "expected a one-line error in stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in stderr: {err}");
    }
    err
}

/// A fresh temp folder for one test.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `dir/name` as a String.
pub fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

/// The files in a folder, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Decodes f32 .npy bytes with the library's reader.
pub fn npy_f32(bytes: &[u8]) -> ndarray::ArrayD<f32> {
    flowpipe::io::npy::decode_f32(bytes, "test output").unwrap()
}

/// Whether a Python with numpy (and safetensors) is available for interop tests.
pub fn python_with(modules: &[&str]) -> bool {
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join(";");
    Command::new("python3")
        .args(["-c", &code])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The 2D fixture of the lab 2 and distillation tests, in `dir`: checkerboard training data
/// (4,000 points, seed 1), held-out reference samples (1,000, seed 2) and N(0, I) noise
/// (1,000, seed 3): (data, reference, noise) paths.
pub fn checkerboard_files(dir: &tempfile::TempDir) -> (String, String, String) {
    let (data, reference, noise) = (
        path(dir, "cb.npy"),
        path(dir, "ref.npy"),
        path(dir, "z.npy"),
    );
    for (n, seed, out) in [("4000", "1", &data), ("1000", "2", &reference)] {
        let args = ["checkerboard:grid=4", "-n", n, "--seed", seed, "-o", out];
        ok(bin!("sample-data"), &args, b"");
    }
    ok(
        bin!("sample-noise"),
        &["-n", "1000", "--seed", "3", "-o", &noise],
        b"",
    );
    (data, reference, noise)
}

/// Runs `make -s SMALL=1 TARGETS` in the checkout, with the tools under test (`BIN`), outputs
/// under `out` and the extra `VAR=value` settings; fails the test with make's stderr.
pub fn make_small(targets: &[&str], out: &Path, extra: &[String]) {
    let bin = Path::new(bin!("simulate-sde")).parent().unwrap();
    let r = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(format!("BIN={}", bin.display()))
        .arg(format!("OUT={}", out.display()))
        .args(extra)
        .args(["-s", "SMALL=1"])
        .args(targets)
        .output()
        .expect("the pipeline tests need GNU make");
    assert!(
        r.status.success(),
        "make {}: {}",
        targets.join(" "),
        String::from_utf8_lossy(&r.stderr)
    );
}
