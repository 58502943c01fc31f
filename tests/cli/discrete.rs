//! Discrete diffusion tools (notes section 8): import-text / render-text round trips,
//! fit-denoiser -> simulate-ctmc -> evaluate on a toy language (its ELBO beats the uniform
//! baseline), infilling, same seed same bytes, bad input refused before anything is written,
//! and `make discrete SMALL=1` on a stand-in word list.

use crate::common::*;
use flowpipe::io::npy;
use ndarray::{ArrayD, IxDyn};

const IMPORT: &str = bin!("import-text");
const RENDER: &str = bin!("render-text");
const FIT: &str = bin!("fit-denoiser");
const SIM: &str = bin!("simulate-ctmc");
const EVAL: &str = bin!("evaluate");

/// A toy language: four words over {a, b}, repeated.
fn toy_text(n: usize) -> String {
    let words = ["ab", "ba", "abab", "bba"];
    (0..n).map(|i| format!("{}\n", words[i % 4])).collect()
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Imports the toy text and trains a tiny masked denoiser on it: (dir, tokens, vocab, model).
fn trained() -> (tempfile::TempDir, String, String, String) {
    let d = tmp();
    let (tokens, vocab, model) = (
        path(&d, "toy.npy"),
        path(&d, "vocab.json"),
        path(&d, "toy.safetensors"),
    );
    ok(
        IMPORT,
        &["--vocab-out", &vocab, "-o", &tokens],
        toy_text(64).as_bytes(),
    );
    ok(
        FIT,
        &[
            "--data",
            &tokens,
            "--vocab",
            &vocab,
            "--width",
            "32",
            "--depth",
            "1",
            "--heads",
            "2",
            "--steps",
            "60",
            "--batch",
            "32",
            "--lr",
            "3e-3",
            "--warmup",
            "5",
            "--threads",
            "1",
            "-q",
            "-o",
            &model,
        ],
        b"",
    );
    (d, tokens, vocab, model)
}

#[test]
fn import_and_render_round_trip_with_holdout() {
    let d = tmp();
    let text = "cab\na\nbead\n\nzebra\n";
    let (tokens, vocab) = (path(&d, "t.npy"), path(&d, "v.json"));
    ok(
        IMPORT,
        &["--vocab-out", &vocab, "-o", &tokens],
        text.as_bytes(),
    );
    let arr = npy::read_i64(&tokens).unwrap();
    assert_eq!(arr.shape(), &[4, 5]);
    let back = ok(
        RENDER,
        &["--vocab", &vocab],
        &std::fs::read(&tokens).unwrap(),
    );
    assert_eq!(String::from_utf8(back).unwrap(), "cab\na\nbead\nzebra\n");
    // --max-len drops longer lines; --holdout splits the rest, seeded.
    let (a, b) = (path(&d, "a.npy"), path(&d, "b.npy"));
    let text: String = (0..40)
        .map(|i| format!("w{}\n", "x".repeat(i % 5)))
        .collect();
    ok(
        IMPORT,
        &[
            "--max-len",
            "4",
            "--holdout",
            "0.25",
            "--holdout-out",
            &b,
            "-o",
            &a,
        ],
        text.as_bytes(),
    );
    let (ta, tb) = (npy::read_i64(&a).unwrap(), npy::read_i64(&b).unwrap());
    assert_eq!((ta.shape(), tb.shape()), (&[24, 4][..], &[8, 4][..]));
}

#[test]
fn toy_language_trains_samples_and_beats_the_uniform_elbo() {
    let (d, tokens, vocab, model) = trained();
    let report = json(&ok(
        EVAL,
        &[&tokens, "--model", &model, "--draws", "8"],
        b"",
    ));
    let bits = report["elbo_bits_per_token"].as_f64().unwrap();
    let uniform = report["uniform_bits_per_token"].as_f64().unwrap();
    assert!((uniform - 3f64.log2()).abs() < 1e-9, "{report}");
    assert!(
        bits < 0.85 * uniform,
        "ELBO {bits} bits/token vs uniform {uniform}: {report}"
    );
    assert_eq!(report["n_sequences"], 64);
    // Same seed, same bytes, however the batch is split; a file equals stdout.
    let out = path(&d, "s.npy");
    let args = [
        "--model", &model, "-n", "30", "--steps", "20", "--seed", "4",
    ];
    let piped = ok(SIM, &args, b"");
    let mut more = args.to_vec();
    more.extend(["--batch", "7", "-o", &out]);
    ok(SIM, &more, b"");
    assert_eq!(std::fs::read(&out).unwrap(), piped);
    let mut other = args.to_vec();
    other[7] = "5";
    assert_ne!(ok(SIM, &other, b""), piped);
    let text = String::from_utf8(ok(RENDER, &["--vocab", &vocab], &piped)).unwrap();
    assert_eq!(text.lines().count(), 30);
    // Tau-leaping also runs; prompts are kept (infilling from text on stdin).
    let filled = ok(
        SIM,
        &[
            "--model",
            &model,
            "--prompt",
            "-",
            "-n",
            "6",
            "--solver",
            "tau-leaping",
        ],
        b"b_\n",
    );
    let text = String::from_utf8(ok(RENDER, &["--vocab", &model], &filled)).unwrap();
    assert!(text.lines().all(|l| l.starts_with('b')), "{text}");
}

#[test]
fn bad_inputs_are_refused_before_writing() {
    let (d, tokens, vocab, model) = trained();
    let out = path(&d, "out.npy");
    // float tokens
    let f = path(&d, "f.npy");
    npy::write(&f, &ArrayD::<f32>::zeros(IxDyn(&[3, 4]))).unwrap();
    fails(
        &flowpipe_run(EVAL, &[&f, "--model", &model, "-o", &out]),
        1,
        &["f.npy", "int64", "float32"],
    );
    fails(
        &flowpipe_run(FIT, &["--data", &f, "--vocab", &vocab, "-o", &out]),
        1,
        &["f.npy", "int64"],
    );
    // out of the vocabulary
    let big = path(&d, "big.npy");
    npy::write(&big, &ArrayD::from_elem(IxDyn(&[2, 4]), 7i64)).unwrap();
    fails(
        &flowpipe_run(FIT, &["--data", &big, "--vocab", &vocab, "-o", &out]),
        1,
        &["big.npy", "token 7", "0..=2"],
    );
    fails(
        &flowpipe_run(RENDER, &[&big, "--vocab", &vocab, "-o", &out]),
        1,
        &["big.npy", "token 7"],
    );
    // wrong shape: the model's length is 4
    let long = path(&d, "long.npy");
    npy::write(&long, &ArrayD::from_elem(IxDyn(&[2, 5]), 1i64)).unwrap();
    fails(
        &flowpipe_run(EVAL, &[&long, "--model", &model, "-o", &out]),
        1,
        &["expected tokens (N, 4), got (2, 5) in", "long.npy"],
    );
    // a vocabulary that is not one; a tokens file given as the model
    fails(
        &flowpipe_run(SIM, &["--model", &tokens, "-o", &out]),
        1,
        &["toy.npy", "safetensors"],
    );
    // usage errors
    fails(
        &flowpipe_run(SIM, &["--model", &model, "--temperature", "0", "-o", &out]),
        2,
        &["--temperature"],
    );
    fails(
        &flowpipe_run(
            FIT,
            &[
                "--data", &tokens, "--vocab", &vocab, "--steps", "0", "-o", &out,
            ],
        ),
        2,
        &["--steps"],
    );
    fails(
        &flowpipe_run(
            IMPORT,
            &["--holdout", "1.5", "--holdout-out", &out, "-o", &out],
        ),
        2,
        &["--holdout"],
    );
    assert!(
        !std::path::Path::new(&out).exists(),
        "an output was written after a failure"
    );
}

/// eval-field at token ids gives the denoiser's logits (N, L, K) over the data symbols; on the
/// all-[MASK] sequence the trained model puts position 0 on 'a' or 'b' (every toy word starts
/// with one), not on [PAD]. Flags for vector fields are refused.
#[test]
fn eval_field_gives_a_denoisers_logits() {
    let (d, _, vocab, model) = trained();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vocab).unwrap()).unwrap();
    let symbols = v["symbols"].as_array().unwrap().len();
    let (k, l) = (symbols - 1, 4);
    let masked = path(&d, "masked.npy");
    npy::write(&masked, &ArrayD::from_elem(IxDyn(&[3, l]), k as i64)).unwrap();
    let out = path(&d, "logits.npy");
    let field = bin!("eval-field");
    ok(
        field,
        &[&masked, "--model", &model, "--t", "0", "-q", "-o", &out],
        b"",
    );
    let logits = npy::read_f32(&out).unwrap();
    assert_eq!(logits.shape(), &[3, l, k]);
    let row: Vec<f64> = (0..k).map(|j| logits[[0, 0, j]] as f64).collect();
    let z: f64 = row.iter().map(|v| v.exp()).sum();
    let p = |s: &str| {
        let j = v["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .position(|x| x == s)
            .unwrap();
        row[j].exp() / z
    };
    assert!(
        p("a") + p("b") > 0.9,
        "p(a) + p(b) at position 0: {}",
        p("a") + p("b")
    );
    std::fs::remove_file(&out).unwrap();
    let g = ["--model", &model, "--grid", "0,1,0,1", "-o", &out];
    fails(
        &flowpipe_run(field, &g),
        2,
        &["toy.safetensors", "token ids"],
    );
    let w = [&masked, "--model", &model, "--what", "velocity", "-o", &out];
    fails(&flowpipe_run(field, &w), 2, &["logits", "velocity"]);
    let short = path(&d, "short.npy");
    npy::write(&short, &ArrayD::from_elem(IxDyn(&[2, 3]), 0i64)).unwrap();
    let s = [&short, "--model", &model, "-o", &out];
    fails(
        &flowpipe_run(field, &s),
        1,
        &["short.npy", "(N, 4)", "(2, 3)"],
    );
    assert!(!std::path::Path::new(&out).exists());
}

fn flowpipe_run(exe: &str, args: &[&str]) -> std::process::Output {
    run(exe, args, b"")
}

/// `make discrete SMALL=1` on a 300-word stand-in list: every stage runs and
/// reports, and the sweep has one consistent record per (temperature, steps).
#[test]
fn make_discrete_small_runs_every_stage() {
    let d = tmp();
    let dict = path(&d, "words");
    let words: String = (0..300)
        .map(|i| {
            let a = ["ca", "do", "ra", "mi", "ba", "lo"][i % 6];
            let b = ["t", "g", "n", "ts", "ll", "p", "Xx", "e's"][i / 6 % 8];
            format!("{a}{b}{}\n", "s".repeat(i / 48))
        })
        .collect();
    std::fs::write(&dict, words).unwrap();
    let out = tmp();
    make_small(&["discrete"], out.path(), &[format!("WORDS_DICT={dict}")]);
    let ds = out.path().join("discrete");
    let samples = std::fs::read_to_string(ds.join("samples.txt")).unwrap();
    assert_eq!(samples.lines().count(), 50);
    let m = json(&std::fs::read(ds.join("metrics.json")).unwrap());
    assert!(
        m["heldout"]["elbo_bits_per_token"]
            .as_f64()
            .unwrap()
            .is_finite(),
        "{m}"
    );
    let fraction = |m: &serde_json::Value, k: &str| {
        let f = m[k].as_f64().unwrap_or_else(|| panic!("no {k}: {m}"));
        assert!((0.0..=1.0).contains(&f), "{k}: {m}");
        f
    };
    let real_is_novel_plus_training = |m: &serde_json::Value| {
        let (real, novel) = (
            fraction(m, "fraction_real_words"),
            fraction(m, "fraction_novel_real_words"),
        );
        let training = fraction(m, "fraction_training_words");
        assert!((real - novel - training).abs() < 2e-4, "{m}");
    };
    real_is_novel_plus_training(&m);
    assert_eq!(m["sampling"]["steps"], 10, "{m}");
    let sweep = std::fs::read_to_string(ds.join("sweep.jsonl")).unwrap();
    let records: Vec<_> = sweep.lines().map(|l| json(l.as_bytes())).collect();
    let points: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["temperature"].as_f64().unwrap(),
                r["steps"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(points, [(0.5, 2), (0.5, 5), (1.0, 2), (1.0, 5)], "{sweep}");
    for r in &records {
        real_is_novel_plus_training(r);
        assert_eq!(r["n_samples"], 50, "{r}");
    }
    for f in ["sweep.png", "words-loss.png"] {
        let png = std::fs::read(ds.join(f)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{f} is not a PNG");
    }
    // Capitals and apostrophes were filtered out of the word list.
    let words = std::fs::read_to_string(ds.join("words.txt")).unwrap();
    assert!(words
        .lines()
        .all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
}

/// A run resumed from its checkpoint (to the total it stores) ends with the same bytes as an
/// uninterrupted one.
#[test]
fn resuming_repeats_the_uninterrupted_run() {
    let d = tmp();
    let (tokens, vocab) = (path(&d, "toy.npy"), path(&d, "vocab.json"));
    ok(
        IMPORT,
        &["--vocab-out", &vocab, "-o", &tokens],
        toy_text(32).as_bytes(),
    );
    let base = [
        "--data",
        &tokens,
        "--vocab",
        &vocab,
        "--width",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--batch",
        "8",
        "--ema",
        "0.9",
        "--threads",
        "1",
        "-q",
    ];
    let (whole, half, ckpt, resumed) = (
        path(&d, "whole.safetensors"),
        path(&d, "half.safetensors"),
        path(&d, "ckpt-{step}.safetensors"),
        path(&d, "resumed.safetensors"),
    );
    ok(
        FIT,
        &[&base[..], &["--steps", "20", "-o", &whole]].concat(),
        b"",
    );
    let ck = [
        "--steps",
        "20",
        "--checkpoint",
        &ckpt,
        "--checkpoint-every",
        "10",
        "-o",
        &half,
    ];
    ok(FIT, &[&base[..], &ck[..]].concat(), b"");
    let c10 = path(&d, "ckpt-10.safetensors");
    // Without --steps the run goes on to the checkpoint's total (20), not to a fresh default.
    ok(
        FIT,
        &[
            "--data",
            &tokens,
            "--resume",
            &c10,
            "--threads",
            "1",
            "-q",
            "-o",
            &resumed,
        ],
        b"",
    );
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap()
    );
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&half).unwrap()
    );
    // A flag that contradicts the checkpoint is refused, not silently ignored.
    let other = path(&d, "other.safetensors");
    let r = flowpipe_run(
        FIT,
        &[
            "--data", &tokens, "--resume", &c10, "--width", "32", "--steps", "20", "-q", "-o",
            &other,
        ],
    );
    fails(&r, 2, &["--width 32 differs from the checkpoint's 16"]);
    assert!(!std::path::Path::new(&other).exists());
    // --time-density (uniform unless asked) is recorded and kept on resume.
    let m = flowpipe::io::model::load(&whole, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.config["train"]["time_density"], "uniform");
    let r = flowpipe_run(
        FIT,
        &[
            "--data",
            &tokens,
            "--resume",
            &c10,
            "--time-density",
            "logit-normal",
            "-q",
            "-o",
            &other,
        ],
    );
    fails(
        &r,
        2,
        &["--time-density logit-normal:0,1 differs", "uniform"],
    );
    // Another density draws other times: another model from the same seed.
    let (mode, uniform) = (path(&d, "mode.safetensors"), path(&d, "u.safetensors"));
    for (density, out) in [("mode:1", &mode), ("uniform", &uniform)] {
        let args = [
            &base[..],
            &["--steps", "5", "--time-density", density, "-o", out],
        ]
        .concat();
        ok(FIT, &args, b"");
    }
    let m = flowpipe::io::model::load(&mode, &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.config["train"]["time_density"], "mode:1");
    let (a, b) = (
        std::fs::read(&mode).unwrap(),
        std::fs::read(&uniform).unwrap(),
    );
    assert_ne!(a, b);
}

/// Labels train a conditional model; simulate-ctmc takes labels and a guidance scale, and an
/// unconditional model refuses labels.
#[test]
fn labels_and_guidance() {
    let (d, tokens, vocab, model) = trained();
    let labels = path(&d, "y.npy");
    let y: Vec<i64> = (0..64).map(|i| (i % 2) as i64).collect();
    npy::write(&labels, &ArrayD::from_shape_vec(IxDyn(&[64]), y).unwrap()).unwrap();
    let ask = path(&d, "ask.npy");
    npy::write(
        &ask,
        &ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i64, 1, 2, 1]).unwrap(),
    )
    .unwrap();
    let out = path(&d, "s.npy");
    fails(
        &flowpipe_run(SIM, &["--model", &model, "--labels", &ask, "-o", &out]),
        1,
        &["without labels"],
    );
    let cond = path(&d, "cond.safetensors");
    ok(
        FIT,
        &[
            "--data",
            &tokens,
            "--vocab",
            &vocab,
            "--labels",
            &labels,
            "--width",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--steps",
            "5",
            "--batch",
            "8",
            "--threads",
            "1",
            "-q",
            "-o",
            &cond,
        ],
        b"",
    );
    let s = ok(
        SIM,
        &[
            "--model",
            &cond,
            "--labels",
            &ask,
            "--guidance",
            "2",
            "--steps",
            "5",
        ],
        b"",
    );
    assert_eq!(npy::decode_i64(&s, "s").unwrap().shape(), &[4, 4]);
    let bad = path(&d, "bad.npy");
    npy::write(
        &bad,
        &ArrayD::from_shape_vec(IxDyn(&[1]), vec![3i64]).unwrap(),
    )
    .unwrap();
    fails(
        &flowpipe_run(SIM, &["--model", &cond, "--labels", &bad, "-o", &out]),
        1,
        &["bad.npy", "label 3", "0..=2"],
    );
    assert!(!std::path::Path::new(&out).exists());
}

/// Uniform noise trains and samples too, and evaluate reports its bound (the CTMC path bound,
/// not the masked ELBO).
#[test]
fn uniform_noise_trains_and_samples() {
    let d = tmp();
    let (tokens, vocab, model) = (
        path(&d, "t.npy"),
        path(&d, "v.json"),
        path(&d, "u.safetensors"),
    );
    ok(
        IMPORT,
        &["--vocab-out", &vocab, "-o", &tokens],
        toy_text(32).as_bytes(),
    );
    ok(
        FIT,
        &[
            "--data",
            &tokens,
            "--vocab",
            &vocab,
            "--noise",
            "uniform",
            "--kappa",
            "cosine",
            "--width",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--steps",
            "10",
            "--batch",
            "8",
            "--threads",
            "1",
            "-q",
            "-o",
            &model,
        ],
        b"",
    );
    let s = ok(SIM, &["--model", &model, "-n", "5", "--steps", "10"], b"");
    let arr = npy::decode_i64(&s, "s").unwrap();
    assert_eq!(arr.shape(), &[5, 4]);
    assert!(
        arr.iter().all(|&v| (0..3).contains(&v)),
        "no [MASK] left: {arr}"
    );
    let report = json(&ok(
        EVAL,
        &[&tokens, "--model", &model, "--draws", "4"],
        b"",
    ));
    let bits = report["elbo_bits_per_token"].as_f64().unwrap();
    assert!(bits.is_finite() && bits > 0.0, "{report}");
    assert!(
        report["bound"].as_str().unwrap().contains("uniform"),
        "{report}"
    );
}
