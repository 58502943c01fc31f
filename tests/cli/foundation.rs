//! The shared conventions, checked on sample-noise: reproducible bytes, pipes equal files,
//! batching-independent seeding, exit codes, atomic outputs with the normal mode.

use crate::common::*;

const NOISE: &str = bin!("sample-noise");

#[test]
fn same_seed_same_bytes_and_pipe_equals_file() {
    let a = ok(NOISE, &["-n", "50", "--shape", "1,4,4", "--seed", "3"], b"");
    let b = ok(NOISE, &["-n", "50", "--shape", "1,4,4", "--seed", "3"], b"");
    assert_eq!(a, b);
    let c = ok(NOISE, &["-n", "50", "--shape", "1,4,4", "--seed", "4"], b"");
    assert_ne!(a, c);
    let dir = tmp();
    let p = path(&dir, "x.npy");
    ok(
        NOISE,
        &["-n", "50", "--shape", "1,4,4", "--seed", "3", "-o", &p],
        b"",
    );
    assert_eq!(std::fs::read(&p).unwrap(), a);
    assert_eq!(npy_f32(&a).shape(), &[50, 1, 4, 4]);
}

#[test]
fn seeding_does_not_depend_on_batching_or_threads() {
    let whole = npy_f32(&ok(
        NOISE,
        &["-n", "20", "--shape", "3", "--threads", "2"],
        b"",
    ));
    let mut parts = Vec::new();
    for first in (0..20).step_by(7) {
        let n = 7.min(20 - first).to_string();
        let f = first.to_string();
        let part = npy_f32(&ok(
            NOISE,
            &["-n", &n, "--shape", "3", "--first", &f, "--threads", "1"],
            b"",
        ));
        parts.extend(part.iter().copied());
    }
    assert_eq!(whole.iter().copied().collect::<Vec<_>>(), parts);
}

#[test]
fn uniform_noise_stays_in_range() {
    let x = npy_f32(&ok(
        NOISE,
        &["-n", "500", "--dist", "uniform", "--range", "0,2"],
        b"",
    ));
    assert!(x.iter().all(|&v| (0.0..2.0).contains(&v)));
}

#[test]
fn bad_flags_exit_2_and_write_nothing() {
    let dir = tmp();
    let p = path(&dir, "x.npy");
    let out = run(NOISE, &["--no-such-flag", "-o", &p], b"");
    assert_eq!(out.status.code(), Some(2));
    let out = run(NOISE, &["--shape", "0,3", "-o", &p], b"");
    fails(&out, 2, &["sample-noise: error:", "--shape"]);
    let out = run(NOISE, &["--std", "-1", "-o", &p], b"");
    fails(&out, 2, &["--std"]);
    assert!(
        files(dir.path()).is_empty(),
        "a failed run left files behind"
    );
}

#[test]
fn existing_output_is_untouched_after_a_failure() {
    let dir = tmp();
    let p = path(&dir, "x.npy");
    std::fs::write(&p, b"precious").unwrap();
    let out = run(NOISE, &["--std", "0", "-o", &p], b"");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    assert_eq!(files(dir.path()).len(), 1);
}

#[cfg(unix)]
#[test]
fn output_files_get_the_normal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let p = path(&dir, "x.npy");
    ok(NOISE, &["-n", "3", "-o", &p], b"");
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}

#[test]
fn help_shows_an_example() {
    let help = String::from_utf8(ok(NOISE, &["--help"], b"")).unwrap();
    assert!(
        help.contains("Example:") && help.contains("| render-grid"),
        "{help}"
    );
    assert!(
        help.contains("--seed") && help.contains("[default: 0]"),
        "{help}"
    );
}
