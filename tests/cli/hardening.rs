//! Issue 24: no bad input crashes a tool, no work is lost, no file is clobbered. One test per
//! cause, each running the tools as a user would and checking the exit code, the one-line
//! message and what is (not) left on disk.

use crate::common::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOISE: &str = bin!("sample-noise");
const PATHS: &str = bin!("sample-path");
const SIM: &str = bin!("simulate-sde");
const FIT: &str = bin!("fit-velocity");

/// The hidden temp files left in a folder.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".flowpipe-"))
        .collect()
}

/// A version-1 `.npy` header with the given descriptor and shape text, and `body` data bytes.
fn forged(descr: &str, shape: &str, body: usize) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes.resize(bytes.len() + body, 0);
    bytes
}

/// Asserts a one-line error.
fn one_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

// 1. Outputs that are not regular files are written through; symlinks are followed.

#[test]
fn dev_null_is_written_through_and_stays_a_device() {
    ok(NOISE, &["-n", "4", "-o", "/dev/null"], b"");
    let m = std::fs::metadata("/dev/null").unwrap();
    assert!(m.file_type().is_char_device(), "/dev/null was replaced");
}

#[test]
fn dev_stdout_writes_to_stdout() {
    let direct = ok(NOISE, &["-n", "4", "--seed", "2"], b"");
    let through = ok(NOISE, &["-n", "4", "--seed", "2", "-o", "/dev/stdout"], b"");
    assert_eq!(direct, through);
}

#[test]
fn a_fifo_gets_the_data_and_stays_a_fifo() {
    let d = tmp();
    let fifo = path(&d, "pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    ok(NOISE, &["-n", "8", "--seed", "5", "-o", &fifo], b"");
    let got = reader.join().unwrap();
    assert_eq!(got, ok(NOISE, &["-n", "8", "--seed", "5"], b""));
    let m = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(m.file_type().is_fifo(), "the FIFO was replaced");
    assert!(temps(d.path()).is_empty());
}

#[test]
fn a_symlink_is_followed_and_the_replaced_file_keeps_its_mode() {
    let d = tmp();
    let (real, link) = (path(&d, "real.npy"), path(&d, "link.npy"));
    std::fs::write(&real, b"old").unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("real.npy", &link).unwrap();
    let data = ok(NOISE, &["-n", "3"], b"");
    ok(NOISE, &["-n", "3", "-o", &link], b"");
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert!(m.file_type().is_symlink(), "the link was replaced");
    assert_eq!(std::fs::read(&real).unwrap(), data);
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(temps(d.path()).is_empty());
}

// 2. Headers that claim more than the input holds.

#[test]
fn a_huge_declared_shape_fails_without_allocating() {
    let d = tmp();
    let x = path(&d, "huge.npy");
    let bytes = forged("<f4", "(1000000, 1000000)", 16);
    std::fs::write(&x, &bytes).unwrap();
    let want = "is truncated: shape (1000000, 1000000) of float32 needs 4000000000000 data bytes";
    let err = fails(&run(PATHS, &[&x], b""), 1, &[&x, want]);
    one_line(&err);
    let err = fails(&run(SIM, &["--field", "ou"], &bytes), 1, &["stdin", want]);
    one_line(&err);
    let args = ["--data", &x, "--steps", "5", "-o", &path(&d, "m.st")];
    fails(&run(FIT, &args, b""), 1, &[&x, want]);
}

#[test]
fn an_overflowing_shape_and_big_endian_data_are_named() {
    let d = tmp();
    let x = path(&d, "over.npy");
    std::fs::write(&x, forged("<f4", "(4294967296, 4294967296)", 0)).unwrap();
    let err = fails(
        &run(PATHS, &[&x], b""),
        1,
        &[&x, "has more elements than memory can hold"],
    );
    one_line(&err);
    let b = forged(">f4", "(2, 2)", 16);
    let err = fails(
        &run(PATHS, &[], &b),
        1,
        &["stdin: expected float32 (or float64) data, found big-endian float32"],
    );
    one_line(&err);
}

// 3. Output locations are checked before the work.

#[test]
fn unwritable_outputs_fail_before_training() {
    let d = tmp();
    let data = path(&d, "x.npy");
    ok(NOISE, &["-n", "64", "-o", &data], b"");
    let long = ["--data", &data, "--steps", "2000000", "--hidden", "8"];
    let cases: [(&[&str], &str); 4] = [
        (
            &["-o", "/nonexistent/m.safetensors"],
            "/nonexistent/m.safetensors",
        ),
        (
            &[
                "-o",
                &path(&d, "m"),
                "--checkpoint",
                "/nonexistent/c-{step}.st",
            ],
            "/nonexistent/c-0.st",
        ),
        (
            &["-o", &path(&d, "m"), "--log", "/nonexistent/loss.jsonl"],
            "/nonexistent/loss.jsonl",
        ),
        (&["-o", d.path().to_str().unwrap()], "it is a folder"),
    ];
    for (extra, needle) in cases {
        let started = Instant::now();
        let args: Vec<&str> = long.iter().chain(extra).copied().collect();
        let err = fails(&run(FIT, &args, b""), 1, &["cannot write", needle]);
        one_line(&err);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "it trained first"
        );
    }
    let vae = [
        "--data",
        &data,
        "--steps",
        "2000000",
        "--recon-grid",
        "/nonexistent/g.png",
    ];
    fails(&run(bin!("fit-vae"), &vae, b""), 1, &["/nonexistent/g.png"]);
    assert_eq!(files(d.path()), [Path::new(&data)]);
}

#[test]
fn a_terminal_as_stdout_is_refused_before_training() {
    // `script` gives the command a terminal; without it there is nothing to check here.
    if Command::new("script").arg("--version").output().is_err() {
        return;
    }
    let d = tmp();
    let data = path(&d, "x.npy");
    ok(NOISE, &["-n", "64", "-o", &data], b"");
    let cmd = format!("{FIT} --data {data} --steps 2000000 --hidden 8");
    let started = Instant::now();
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("fit-velocity: error: refusing to write binary data to a terminal"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it trained first"
    );
}

// 4. All outputs of a run appear together or not at all.

#[test]
fn a_failed_write_leaves_no_secondary_output() {
    let d = tmp();
    // /dev/full takes the main output and fails it (ENOSPC) after the others are staged.
    let traj = path(&d, "traj.npy");
    let args = [
        "--x0",
        "zeros:n=4,dim=2",
        "--field",
        "ou",
        "--steps",
        "4",
        "--trajectory",
        &traj,
        "-o",
        "/dev/full",
        "-q",
    ];
    let err = fails(&run(SIM, &args, b""), 1, &["/dev/full"]);
    one_line(&err);
    let (tokens, vocab) = (path(&d, "t.npy"), path(&d, "v.json"));
    let args = ["--vocab-out", &vocab, "-o", "/dev/full"];
    fails(
        &run(bin!("import-text"), &args, b"ab\nba\n"),
        1,
        &["/dev/full"],
    );
    let args = [
        "moons",
        "-n",
        "8",
        "--labels",
        &path(&d, "y.npy"),
        "-o",
        "/dev/full",
    ];
    fails(&run(bin!("sample-data"), &args, b""), 1, &["/dev/full"]);
    assert!(files(d.path()).is_empty(), "{:?}", files(d.path()));
    // And together when it succeeds.
    ok(
        bin!("import-text"),
        &["--vocab-out", &vocab, "-o", &tokens],
        b"ab\nba\n",
    );
    assert_eq!(files(d.path()).len(), 2);
}

#[test]
fn a_failed_run_leaves_no_grid_nor_labels() {
    let d = tmp();
    let (img, x, y) = (path(&d, "img.npy"), path(&d, "x.npy"), path(&d, "y.npy"));
    ok(NOISE, &["-n", "8", "--shape", "1,8,8", "-o", &img], b"");
    ok(NOISE, &["-n", "8", "-o", &x], b"");
    let labels =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[8]), vec![0i64, 1, 0, 1, 0, 1, 0, 1]);
    flowpipe::io::npy::write(&y, &labels.unwrap()).unwrap();
    let before = files(d.path());
    // fit-vae: the reconstruction grids wait for the model, and go when it cannot be written.
    let grid = path(&d, "g-{step}.png");
    let vae = [
        "--data",
        &img,
        "--channels",
        "8,8",
        "--latent-channels",
        "2",
        "--batch",
        "4",
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--scale-samples",
        "8",
        "--threads",
        "1",
        "-q",
        "--recon-grid",
        &grid,
    ];
    let mut args = vae.to_vec();
    args.extend(["-o", "/dev/full"]);
    fails(&run(bin!("fit-vae"), &args, b""), 1, &["/dev/full"]);
    assert_eq!(files(d.path()), before);
    let model = path(&d, "vae.st");
    let mut args = vae.to_vec();
    args.extend(["-o", &model]);
    ok(bin!("fit-vae"), &args, b"");
    assert_eq!(
        files(d.path()).len(),
        before.len() + 3,
        "{:?}",
        files(d.path())
    );
    // guide: --labels-out goes with the spec.
    let m = path(&d, "cond.st");
    let fit = [
        "--data", &x, "--labels", &y, "--steps", "2", "--hidden", "8", "--batch", "4",
    ];
    let mut args = fit.to_vec();
    args.extend(["-q", "-o", &m]);
    ok(FIT, &args, b"");
    let out = path(&d, "l.npy");
    let args = [
        "--model",
        &m,
        "--scale",
        "2",
        "--each",
        "2",
        "--labels-out",
        &out,
        "-o",
        "/dev/full",
    ];
    fails(&run(bin!("guide"), &args, b""), 1, &["/dev/full"]);
    assert!(!Path::new(&out).exists());
    // ... and its --each is bounded by memory (item 7).
    let args = [
        "--model",
        &m,
        "--scale",
        "2",
        "--each",
        "100000000000",
        "-o",
        &path(&d, "g.json"),
    ];
    let err = fails(
        &run(bin!("guide"), &args, b""),
        2,
        &["--each 100000000000", "of memory"],
    );
    one_line(&err);
    assert!(temps(d.path()).is_empty());
}

// 5. A signal during a write leaves no temp file.

#[test]
fn sigterm_during_a_long_write_leaves_no_temp_file() {
    let d = tmp();
    let out = path(&d, "big.npy");
    let mut interrupted = 0;
    for n in ["20000000", "40000000", "80000000"] {
        let mut child = Command::new(NOISE)
            .args(["-n", n, "-o", &out])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let pid = child.id() as i32;
        let mut sent = false;
        while start.elapsed() < Duration::from_secs(120) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if !temps(d.path()).is_empty() {
                // SAFETY: kill only sends a signal to the child this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                sent = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let status = child.wait().unwrap();
        assert!(temps(d.path()).is_empty(), "{:?}", temps(d.path()));
        if sent && status.code().is_none() {
            interrupted += 1;
            assert!(!Path::new(&out).exists(), "a partial output appeared");
            break;
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(interrupted > 0, "no write was long enough to interrupt");
}

// 6. Labels far out of range.

#[test]
fn labels_beyond_the_class_bound_are_refused() {
    let d = tmp();
    let (x, y, img) = (path(&d, "x.npy"), path(&d, "y.npy"), path(&d, "img.npy"));
    ok(NOISE, &["-n", "4", "-o", &x], b"");
    ok(NOISE, &["-n", "4", "--shape", "1,8,8", "-o", &img], b"");
    let labels =
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[4]), vec![0i64, 1, 1_000_000_000, 2])
            .unwrap();
    flowpipe::io::npy::write(&y, &labels).unwrap();
    let m = path(&d, "m.st");
    for tool in [FIT, bin!("fit-score")] {
        let args = ["--data", &x, "--labels", &y, "--steps", "5", "-o", &m];
        let err = fails(
            &run(tool, &args, b""),
            1,
            &[&y, "label 1000000000", "0..65535"],
        );
        one_line(&err);
    }
    let args = ["--data", &img, "--labels", &y, "--steps", "5", "-o", &m];
    fails(
        &run(bin!("fit-classifier"), &args, b""),
        1,
        &["label 1000000000"],
    );
    let args = [
        "--data",
        &x,
        "--labels",
        &y,
        "--num-classes",
        "100000",
        "-o",
        &m,
    ];
    fails(&run(FIT, &args, b""), 2, &["--num-classes 100000"]);
    assert!(!Path::new(&m).exists());
}

// 7. Size flags that cannot fit memory.

#[test]
fn sizes_beyond_memory_are_refused_with_their_flag() {
    let d = tmp();
    let img = path(&d, "img.npy");
    ok(NOISE, &["-n", "2", "--shape", "1,8,8", "-o", &img], b"");
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            NOISE,
            vec!["-n", "1000000000", "--shape", "1000,1000"],
            "-n 1000000000 --shape 1000,1000 needs 4.0 PB",
        ),
        (
            SIM,
            vec!["--x0", "zeros:n=1000000000000,dim=2", "--field", "ou"],
            "n=1000000000000, dim=2 needs",
        ),
        (
            SIM,
            vec![
                "--x0",
                "zeros:n=2,dim=2",
                "--field",
                "ou",
                "--steps",
                "4000000000000000",
            ],
            "--steps 4000000000000000 needs",
        ),
        (
            bin!("eval-field"),
            vec![
                "--model",
                "none.st",
                "--grid",
                "0,1,0,1",
                "--resolution",
                "10000000",
            ],
            "--resolution 10000000 needs",
        ),
        (
            bin!("density"),
            vec![
                "grid",
                "-d",
                "gaussian:mean=0;0",
                "--resolution",
                "100000000",
            ],
            "--resolution 100000000,100000000 needs",
        ),
        (
            bin!("render-grid"),
            vec![&img, "--upscale", "100000"],
            "--upscale 100000 of 2 images 8x8 needs",
        ),
    ];
    for (tool, args, needle) in cases {
        let err = fails(&run(tool, &args, b""), 2, &[needle, "of memory"]);
        one_line(&err);
    }
    assert_eq!(files(d.path()).len(), 1);
}

// 8. Messages.

#[test]
fn messages_blame_the_right_thing() {
    let d = tmp();
    let r = run(
        bin!("eval-field"),
        &["--model", "m.st", "--grid", "0,1,0,1", "--resolution", "0"],
        b"",
    );
    fails(&r, 2, &["--resolution must be at least 1"]);
    let x = path(&d, "x.npy");
    ok(NOISE, &["-n", "8", "-o", &x], b"");
    let err = fails(
        &run(PATHS, &[&x, "-n", "100"], b""),
        1,
        &["-n 100 asks for more samples than the 8 in"],
    );
    one_line(&err);
    // A model whose weight is NaN is refused at load, naming the tensor.
    let nan = path(&d, "nan.st");
    let t = candle_core::Tensor::new(&[1f32, f32::NAN], &candle_core::Device::Cpu).unwrap();
    let config = serde_json::json!({"kind": "velocity"});
    flowpipe::io::model::save(&nan, &config, &[("layers.0.weight".into(), t)]).unwrap();
    let r = run(bin!("eval-field"), &["--model", &nan, &x], b"");
    let err = fails(
        &r,
        1,
        &["tensor 'layers.0.weight' holds a non-finite value (NaN)"],
    );
    one_line(&err);
    // A resumed run whose flags differ shows them as written.
    let ck = path(&d, "ck.st");
    let args = [
        "--data", &x, "--hidden", "8,8", "--steps", "2", "--batch", "4",
    ];
    let mut first: Vec<&str> = args.to_vec();
    first.extend(["--checkpoint", &ck, "-o", "/dev/null", "-q"]);
    ok(FIT, &first, b"");
    let again = [
        "--data",
        &x,
        "--hidden",
        "16,16",
        "--resume",
        &ck,
        "-o",
        "/dev/null",
    ];
    let err = fails(
        &run(FIT, &again, b""),
        2,
        &["--hidden 16,16 differs from the checkpoint's 8,8"],
    );
    one_line(&err);
}

// 10. The build stamp depends on every source file.

#[test]
fn make_rebuilds_on_any_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(out) = Command::new("make")
        .args(["-np", "build"])
        .current_dir(root)
        .output()
    else {
        return; // no make here
    };
    let db = String::from_utf8_lossy(&out.stdout);
    let rule = db
        .lines()
        .find(|l| l.starts_with("target/release/.built:"))
        .expect("the build stamp's rule");
    let deps: Vec<&str> = rule.split_whitespace().collect();
    let mut want = vec![".cargo/config.toml".to_string()];
    let mut stack = vec![root.join("lib"), root.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                want.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(want.iter().any(|w| w.matches('/').count() >= 3));
    for w in want {
        assert!(deps.contains(&w.as_str()), "the build stamp misses {w}");
    }
}
