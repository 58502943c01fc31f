//! NumPy reads what we write and we read what NumPy writes; Python's safetensors loads our
//! model files with their config. CI installs numpy and safetensors (.ci/run).

use crate::common::*;
use flowpipe::io::{model, npy};
use ndarray::{ArrayD, IxDyn};
use std::process::Command;

fn python(code: &str) -> String {
    assert!(
        python_with(&["numpy", "safetensors"]),
        "the interop tests need python3 with numpy and safetensors: \
         python3 -m pip install numpy safetensors"
    );
    let out = Command::new("python3").args(["-c", code]).output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn we_read_what_numpy_writes() {
    let dir = tmp();
    let d = dir.path().to_string_lossy().into_owned();
    python(&format!(
        r#"
import numpy as np
np.save("{d}/f1.npy", np.arange(5, dtype=np.float32) * 0.5)
np.save("{d}/f4.npy", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
np.save("{d}/f64.npy", np.array([[1.5, -2.0]]))
np.save("{d}/i64.npy", np.array([3, -1, 7], dtype=np.int64))
np.save("{d}/u8.npy", np.arange(6, dtype=np.uint8).reshape(2, 3))
np.save("{d}/empty.npy", np.zeros((0, 2), dtype=np.float32))
np.save("{d}/fortran.npy", np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
"#
    ));
    let f1 = npy::read_f32(&format!("{d}/f1.npy")).unwrap();
    assert_eq!(f1.as_slice().unwrap(), &[0.0, 0.5, 1.0, 1.5, 2.0]);
    let f4 = npy::read_f32(&format!("{d}/f4.npy")).unwrap();
    assert_eq!(f4.shape(), &[2, 3, 2, 2]);
    assert_eq!(f4[[1, 2, 1, 0]], 22.0);
    let f64 = npy::read_f32(&format!("{d}/f64.npy")).unwrap();
    assert_eq!(f64.as_slice().unwrap(), &[1.5, -2.0]);
    let i = npy::read_i64(&format!("{d}/i64.npy")).unwrap();
    assert_eq!(i.as_slice().unwrap(), &[3, -1, 7]);
    let u = npy::read_u8(&format!("{d}/u8.npy")).unwrap();
    assert_eq!(u[[1, 2]], 5);
    let e = npy::read_f32(&format!("{d}/empty.npy")).unwrap();
    assert_eq!(e.shape(), &[0, 2]);
    let f = npy::read_f32(&format!("{d}/fortran.npy")).unwrap();
    assert_eq!(f.as_slice().unwrap(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn numpy_reads_what_we_write() {
    let dir = tmp();
    let d = dir.path().to_string_lossy().into_owned();
    let f = ArrayD::from_shape_vec(
        IxDyn(&[2, 1, 2, 3]),
        (0..12).map(|v| v as f32 - 3.5).collect(),
    )
    .unwrap();
    npy::write(&format!("{d}/f.npy"), &f).unwrap();
    let i = ArrayD::from_shape_vec(IxDyn(&[3]), vec![9i64, 0, -4]).unwrap();
    npy::write(&format!("{d}/i.npy"), &i).unwrap();
    let u = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0u8, 1, 254, 255]).unwrap();
    npy::write(&format!("{d}/u.npy"), &u).unwrap();
    let e = ArrayD::<f32>::zeros(IxDyn(&[0, 3]));
    npy::write(&format!("{d}/e.npy"), &e).unwrap();
    let out = python(&format!(
        r#"
import numpy as np
f = np.load("{d}/f.npy"); i = np.load("{d}/i.npy"); u = np.load("{d}/u.npy"); e = np.load("{d}/e.npy")
assert f.dtype == np.float32 and f.shape == (2, 1, 2, 3), (f.dtype, f.shape)
assert np.array_equal(f.ravel(), np.arange(12, dtype=np.float32) - 3.5)
assert i.dtype == np.int64 and list(i) == [9, 0, -4]
assert u.dtype == np.uint8 and u.tolist() == [[0, 1], [254, 255]]
assert e.dtype == np.float32 and e.shape == (0, 3)
print("ok")
"#
    ));
    assert_eq!(out.trim(), "ok");
}

#[test]
fn python_safetensors_loads_a_model_file() {
    let dir = tmp();
    let p = path(&dir, "m.safetensors");
    let w =
        candle_core::Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &candle_core::Device::Cpu).unwrap();
    let config = serde_json::json!({"kind": "velocity", "arch": "mlp", "hidden": [64, 64]});
    model::save(&p, &config, &[("net.0.weight".to_string(), w)]).unwrap();
    let out = python(&format!(
        r#"
import json
from safetensors import safe_open
with safe_open("{p}", framework="numpy") as f:
    meta = f.metadata()
    cfg = json.loads(meta["flowpipe"])
    assert cfg["kind"] == "velocity" and cfg["hidden"] == [64, 64]
    assert cfg["format"] == "flowpipe-model/1"
    assert cfg["time_convention"].startswith("t=0 noise")
    w = f.get_tensor("net.0.weight")
    assert w.tolist() == [[1.0, 2.0], [3.0, 4.0]], w
print("ok")
"#
    ));
    assert_eq!(out.trim(), "ok");
}

/// A tiny conditional DiT as a model file written by another program would be: its config and
/// tensors (every weight nudged off its initialisation, so that labels reach the output).
fn dit_file(
    config_edit: impl Fn(&mut serde_json::Value),
    extra: &[&str],
) -> (serde_json::Value, Vec<(String, candle_core::Tensor)>) {
    use flowpipe::nn::{Dit, DitConfig, Params};
    let shape = serde_json::json!({"arch": "dit", "data_shape": [1, 4, 4], "patch_size": 2,
        "width": 8, "depth": 1, "heads": 2, "num_classes": 3, "time_features": 8,
        "activation": "silu"});
    let cfg = DitConfig::from_json(&shape).unwrap();
    let params = Params::new(1, &candle_core::Device::Cpu);
    Dit::new(&cfg, &params).unwrap();
    let mut config = cfg.to_json();
    config["kind"] = "velocity".into();
    config["parametrisation"] = "velocity".into();
    config["path"] = "condot".into();
    config["source"] = "gaussian".into();
    config_edit(&mut config);
    let mut tensors: Vec<(String, candle_core::Tensor)> = params
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t + 0.05).unwrap()))
        .collect();
    for name in extra {
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu);
        tensors.push((name.to_string(), t.unwrap()));
    }
    (config, tensors)
}

#[test]
fn eval_field_takes_images_and_labels_and_model_files_are_not_misread() {
    let d = tmp();
    let save = |name: &str, edit: &dyn Fn(&mut serde_json::Value), extra: &[&str]| {
        let p = path(&d, name);
        let (config, tensors) = dit_file(edit, extra);
        model::save(&p, &config, &tensors).unwrap();
        p
    };
    let good = save("dit.safetensors", &|_| {}, &[]);
    let x = path(&d, "x.npy");
    ok(
        bin!("sample-noise"),
        &["-n", "3", "--shape", "1,4,4", "--seed", "2", "-o", &x],
        b"",
    );
    let y = path(&d, "y.npy");
    npy::write(
        &y,
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 2, 3]).unwrap(),
    )
    .unwrap();
    let field = bin!("eval-field");
    let with = npy_f32(&ok(
        field,
        &[&x, "--model", &good, "--labels", &y, "--t", "0.3"],
        b"",
    ));
    let null = npy_f32(&ok(field, &[&x, "--model", &good, "--t", "0.3"], b""));
    assert_eq!(with.shape(), &[3, 1, 4, 4]);
    // Labels 0 and 2 change the velocity; label 3 is the null label, as no labels are.
    let row = |a: &ArrayD<f32>, i: usize| a.index_axis(ndarray::Axis(0), i).to_owned();
    assert_ne!(row(&with, 0), row(&null, 0));
    assert_ne!(row(&with, 1), row(&null, 1));
    assert_eq!(row(&with, 2), row(&null, 2));
    assert_ne!(row(&with, 0), row(&with, 1));
    // Labels that do not fit the points or the model.
    let short = path(&d, "short.npy");
    npy::write(
        &short,
        &ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 1]).unwrap(),
    )
    .unwrap();
    let err = fails(
        &run(field, &[&x, "--model", &good, "--labels", &short], b""),
        1,
        &["short.npy"],
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let big = path(&d, "big.npy");
    npy::write(
        &big,
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 1, 4]).unwrap(),
    )
    .unwrap();
    fails(
        &run(field, &[&x, "--model", &good, "--labels", &big], b""),
        1,
        &["big.npy", "label 4", "0..=3"],
    );
    // What a hand-written file gets wrong is refused with the field or tensor named.
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            save("typo.safetensors", &|_| {}, &["blocks.0.qkv.wieght"]),
            vec!["typo.safetensors", "does not use: blocks.0.qkv.wieght"],
        ),
        (
            save(
                "noact.safetensors",
                &|c| {
                    c.as_object_mut().unwrap().remove("activation");
                },
                &[],
            ),
            vec!["noact.safetensors", "no 'activation' (gelu or silu"],
        ),
        (
            save(
                "nocls.safetensors",
                &|c| {
                    c.as_object_mut().unwrap().remove("num_classes");
                },
                &[],
            ),
            vec!["nocls.safetensors", "does not use: label_embed"],
        ),
        (
            save(
                "kind.safetensors",
                &|c| c["parametrisation"] = "noise".into(),
                &[],
            ),
            vec![
                "kind.safetensors",
                "a velocity model with parametrisation 'noise'",
            ],
        ),
        (
            save("path.safetensors", &|c| c["path"] = "edm".into(), &[]),
            vec![
                "path.safetensors",
                "unknown path \"edm\"",
                "condot, sqrt, cosine, vp, ve, linear-interp",
            ],
        ),
        (
            save(
                "several.safetensors",
                &|c| {
                    c["path"] = "edm".into();
                    c["parametrisation"] = "noise".into();
                    c.as_object_mut().unwrap().remove("activation");
                },
                &["blocks.0.qkv.wieght"],
            ),
            vec![
                "several.safetensors",
                "parametrisation 'noise'",
                "unknown path",
                "no 'activation'",
                "does not use: blocks.0.qkv.wieght",
            ],
        ),
    ];
    for (file, needles) in cases {
        let err = fails(&run(field, &[&x, "--model", &file], b""), 1, &needles);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A guided field's spec finds its model beside it, read from another folder.
    let sub = d.path().join("run");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(&good, sub.join("flow.safetensors")).unwrap();
    std::fs::write(
        sub.join("guided.json"),
        r#"{"field": "guided", "model": "flow.safetensors", "scale": 2, "labels": [0, 1, 2]}"#,
    )
    .unwrap();
    let out = run_in(
        bin!("simulate-sde"),
        &[
            "x.npy",
            "--field",
            "run/guided.json",
            "--steps",
            "2",
            "-q",
            "-o",
            "s.npy",
        ],
        b"",
        Some(d.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python reference package (python/) computes every architecture's forward as the tools
/// do: its own check script against eval-field, encode-vae, decode-vae and evaluate, to 1e-5.
#[test]
fn the_python_package_forwards_match_the_tools() {
    assert!(
        python_with(&["numpy", "safetensors"]),
        "the interop tests need python3 with numpy and safetensors"
    );
    let bin = std::path::Path::new(bin!("eval-field")).parent().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tests/test_forward.py");
    let out = Command::new("python3")
        .args([script, "--bin", bin.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("all checks passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().filter(|l| l.starts_with("ok")).count() >= 20,
        "{text}"
    );
}
