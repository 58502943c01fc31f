//! likelihood (issue 27): a trained 2-D flow's NLL on held-out points of a mixture is close to
//! the mixture's own entropy, Hutchinson agrees with the exact divergence within its standard
//! error, and bad input is refused with nothing written.

use crate::common::*;
use serde_json::Value;

const DATA: &str = bin!("sample-data");
const FIT_V: &str = bin!("fit-velocity");
const LIK: &str = bin!("likelihood");

const MIXTURE: &str = "symmetric_2d:nmodes=3,std=0.6,scale=3";

fn report(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("one JSON object")
}

fn num(v: &Value, key: &str) -> f64 {
    v.pointer(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn a_trained_flows_nll_is_close_to_the_mixtures_entropy() {
    let dir = tmp();
    let (data, held, m) = (path(&dir, "d.npy"), path(&dir, "h.npy"), path(&dir, "m.st"));
    ok(
        DATA,
        &[MIXTURE, "-n", "4000", "--seed", "1", "-o", &data],
        b"",
    );
    ok(
        DATA,
        &[MIXTURE, "-n", "400", "--seed", "2", "-o", &held],
        b"",
    );
    let fit = [
        "--data",
        &data,
        "--path",
        "condot",
        "--hidden",
        "64,64",
        "--steps",
        "1500",
        "--batch",
        "256",
        "--lr",
        "3e-3",
        "--decay",
        "cosine",
        "--threads",
        "1",
        "--seed",
        "3",
        "-q",
        "-o",
        &m,
    ];
    ok(FIT_V, &fit, b"");
    let common = ["--model", &m, "--threads", "1"];
    let exact = report(&ok(
        LIK,
        &[&[held.as_str(), "--density", MIXTURE][..], &common].concat(),
        b"",
    ));
    assert_eq!(exact["divergence"], "exact");
    let (nll, entropy) = (num(&exact, "/nll"), num(&exact, "/density/nll"));
    // E[-log q] = H(p) + KL(p || q) >= H(p); a trained flow comes within a tenth of a nat or
    // two (here 0.07). The per-point differences are paired, so the bound is tight.
    assert!(
        nll > entropy - 0.02 && nll < entropy + 0.25,
        "NLL {nll} against the mixture's entropy {entropy}"
    );
    assert!((num(&exact, "/bpd") - nll / (2.0 * std::f64::consts::LN_2)).abs() < 1e-9);
    // Hutchinson: unbiased, so within a few of its own standard errors of the exact value.
    let per = path(&dir, "p.npy");
    let hutch = report(&ok(
        LIK,
        &[
            &[held.as_str(), "--divergence", "hutchinson", "--probes", "8"][..],
            &common,
            &["--per-sample", &per],
        ]
        .concat(),
        b"",
    ));
    let (h, se) = (num(&hutch, "/nll"), num(&hutch, "/se_probes"));
    assert!(se > 0.0 && se < 0.05, "se_probes {se}");
    assert!(
        (h - nll).abs() < 4.0 * se + 0.01,
        "{h} +- {se} vs exact {nll}"
    );
    assert_eq!(npy_f32(&std::fs::read(&per).unwrap()).shape(), &[400, 8]);
    // The bridge from a data set has no Gaussian p_init: refused.
    let circles = path(&dir, "c.npy");
    ok(
        DATA,
        &["circles", "-n", "500", "--seed", "4", "-o", &circles],
        b"",
    );
    let bridge = path(&dir, "b.st");
    let fit_b = [
        "--data",
        &data,
        "--source",
        &circles,
        "--hidden",
        "16",
        "--steps",
        "5",
        "--threads",
        "1",
        "-q",
        "-o",
        &bridge,
    ];
    ok(FIT_V, &fit_b, b"");
    let out = path(&dir, "r.json");
    let r = run(LIK, &[&held, "--model", &bridge, "-o", &out], b"");
    fails(&r, 1, &["Gaussian"]);
    // Points of the wrong dimension: the file and both shapes named.
    let three = path(&dir, "x3.npy");
    ok(
        bin!("sample-noise"),
        &["-n", "5", "--shape", "3", "-o", &three],
        b"",
    );
    let r = run(LIK, &[&three, "--model", &m, "-o", &out], b"");
    fails(&r, 1, &["x3.npy", "(N, 2)", "(5, 3)"]);
    // An SDE, and a solver that is not an ODE rule.
    let sde = format!("learned:model={m},sigma=1");
    let r = run(LIK, &[&held, "--model", &sde, "-o", &out], b"");
    fails(&r, 1, &["sigma 0"]);
    let r = run(
        LIK,
        &[&held, "--model", &m, "--solver", "ddim", "-o", &out],
        b"",
    );
    fails(&r, 2, &["--solver ddim"]);
    assert!(
        !std::path::Path::new(&out).exists(),
        "nothing written on failure"
    );
}
