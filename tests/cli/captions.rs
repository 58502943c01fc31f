//! make-captions (issue 30): one caption per label, the same bytes however a run is split by
//! --first, the phrasing list, and bad labels refused without writing anything.

use crate::common::*;
use flowpipe::io::npy;
use ndarray::ArrayD;
use std::collections::HashSet;

const CAPTIONS: &str = bin!("make-captions");

/// Writes `values` as an (N,) int64 .npy at `dir/name` and returns its path.
fn labels(dir: &tempfile::TempDir, name: &str, values: Vec<i64>) -> String {
    let p = path(dir, name);
    let arr = ArrayD::from_shape_vec(vec![values.len()], values).unwrap();
    std::fs::write(&p, npy::encode(&arr).unwrap()).unwrap();
    p
}

#[test]
fn one_caption_per_label_and_the_same_bytes_in_parts() {
    let dir = tmp();
    let all: Vec<i64> = (0..50).map(|i| (i * 3) % 10).collect();
    let y = labels(&dir, "y.npy", all.clone());
    let (head, tail) = (
        labels(&dir, "a.npy", all[..20].to_vec()),
        labels(&dir, "b.npy", all[20..].to_vec()),
    );
    for classes in ["fashion-mnist", "mnist"] {
        let run = |input: &str, extra: &[&str]| {
            let mut a = vec![input, "--classes", classes, "--seed", "4"];
            a.extend_from_slice(extra);
            ok(CAPTIONS, &a, b"")
        };
        let whole = run(&y, &["--phrasings", "all"]);
        let text = String::from_utf8(whole.clone()).unwrap();
        assert_eq!(text.lines().count(), 50);
        assert!(text.ends_with('\n'));
        let mut parts = run(&head, &["--phrasings", "all"]);
        parts.extend(run(&tail, &["--phrasings", "all", "--first", "20"]));
        assert_eq!(whole, parts, "{classes}");
        // Stdin and -o give the same bytes as stdout.
        let out = path(&dir, "c.txt");
        let bytes = std::fs::read(&y).unwrap();
        let a = [
            "--classes",
            classes,
            "--seed",
            "4",
            "--phrasings",
            "all",
            "-o",
            &out,
        ];
        assert!(ok(CAPTIONS, &a, &bytes).is_empty());
        assert_eq!(std::fs::read(&out).unwrap(), whole);
        assert_ne!(run(&y, &[]), whole, "train and all phrasings drew alike");
    }
}

#[test]
fn the_list_covers_every_class_in_both_splits() {
    for classes in ["fashion-mnist", "mnist"] {
        let out = ok(CAPTIONS, &["--classes", classes, "--list"], b"");
        let mut seen = HashSet::new();
        for line in String::from_utf8(out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let k = v["class"].as_u64().unwrap();
            assert!(v["name"].is_string() && v["phrasing"].is_string(), "{line}");
            seen.insert((k, v["split"].as_str().unwrap().to_string()));
        }
        for k in 0..10 {
            for split in ["train", "heldout"] {
                assert!(
                    seen.contains(&(k, split.to_string())),
                    "{classes} {k} {split}"
                );
            }
        }
        assert_eq!(seen.len(), 20);
    }
    let fashion = ok(CAPTIONS, &["--classes", "fashion-mnist", "--list"], b"");
    assert!(String::from_utf8(fashion)
        .unwrap()
        .contains(r#""name":"Ankle boot""#));
    // --list reads no labels, so an input beside it is a usage error.
    let o = run(CAPTIONS, &["y.npy", "--classes", "mnist", "--list"], b"");
    fails(&o, 2, &["--list"]);
}

#[test]
fn bad_labels_are_refused_and_nothing_is_written() {
    let dir = tmp();
    let out = path(&dir, "c.txt");
    let check = |input: &str, needles: &[&str]| {
        let a = [input, "--classes", "fashion-mnist", "-o", &out];
        fails(&run(CAPTIONS, &a, b""), 1, needles);
        assert!(!std::path::Path::new(&out).exists());
    };
    let big = labels(&dir, "big.npy", vec![1, 2, 10]);
    check(
        &big,
        &[
            "big.npy",
            "label 10 (sample 2)",
            "expected fashion-mnist classes 0..=9",
        ],
    );
    let neg = labels(&dir, "neg.npy", vec![-1]);
    check(&neg, &["neg.npy", "label -1"]);
    let floats = path(&dir, "f.npy");
    let arr = ArrayD::from_shape_vec(vec![2], vec![0f32, 1.0]).unwrap();
    std::fs::write(&floats, npy::encode(&arr).unwrap()).unwrap();
    check(&floats, &["f.npy", "expected int64 labels", "float32"]);
    let square = path(&dir, "sq.npy");
    let arr = ArrayD::from_shape_vec(vec![2, 2], vec![0i64; 4]).unwrap();
    std::fs::write(&square, npy::encode(&arr).unwrap()).unwrap();
    check(&square, &["sq.npy", "expected labels (N), got (2, 2)"]);
    check(&path(&dir, "missing.npy"), &["missing.npy"]);
    // An existing output is untouched by a failure.
    std::fs::write(&out, b"old\n").unwrap();
    let a = [big.as_str(), "--classes", "mnist", "-o", &out];
    fails(&run(CAPTIONS, &a, b""), 1, &["big.npy"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old\n");
    // An unknown class set is a usage error.
    let o = run(CAPTIONS, &[big.as_str(), "--classes", "cifar"], b"");
    fails(&o, 2, &["--classes"]);
}
