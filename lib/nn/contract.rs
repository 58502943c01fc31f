//! docs/model-format.md against the code: every architecture is built from a config here, and
//! each tensor name it asks for (indices as `<i>`) and each config field its `to_json` writes
//! must appear on that page between backticks. A layer renamed or a field added without the
//! page fails this test, which names everything missing at once.

use candle_core::Device;
use serde_json::{json, Value};
use std::collections::BTreeSet;

use super::classifier::{Classifier, ClassifierConfig};
use super::noisy::{NoisyClassifier, NoisyConfig};
use super::vae::{Vae, VaeConfig};
use super::{build, Params};
use crate::discrete::net::{Denoiser, DenoiserConfig};
use crate::discrete::tokens::{Unit, Vocab};

const PAGE: &str = include_str!("../../docs/model-format.md");

/// Every `...` span of the page.
fn quoted() -> BTreeSet<&'static str> {
    PAGE.split('`').skip(1).step_by(2).collect()
}

/// `blocks.0.qkv.weight` -> `blocks.<i>.qkv.weight`.
fn pattern(name: &str) -> String {
    name.split('.')
        .map(|s| match s.bytes().all(|b| b.is_ascii_digit()) {
            true => "<i>",
            false => s,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// (architecture, its config as written, the tensor names it asks for).
fn networks() -> Vec<(String, Value, Vec<String>)> {
    let dev = Device::Cpu;
    let mut out = Vec::new();
    let mut add = |what: &str, config: Value, params: &Params| {
        let names = params.vars().into_iter().map(|(n, _)| n).collect();
        out.push((what.to_string(), config, names));
    };
    let field_nets = [
        json!({"arch": "mlp", "data_shape": [2], "hidden": [8, 8], "activation": "silu",
               "time_features": 2}),
        json!({"arch": "cmlp", "data_shape": [2], "hidden": [8], "activation": "relu",
               "time_features": 1, "num_classes": 3, "label_embed_dim": 4}),
        json!({"arch": "unet", "data_shape": [1, 8, 8], "channels": [4, 8],
               "blocks_per_level": 1, "num_classes": 3, "time_embed_dim": 4,
               "label_embed_dim": 4, "groups": 2}),
        json!({"arch": "dit", "data_shape": [1, 4, 4], "patch_size": 2, "width": 8, "depth": 2,
               "heads": 2, "num_classes": 3, "time_features": 8, "activation": "gelu"}),
        json!({"arch": "dit", "data_shape": [1, 4, 4], "patch_size": 2, "width": 8, "depth": 2,
               "heads": 2, "time_features": 8, "activation": "silu",
               "text": {"vocab": 5, "max_len": 4, "width": 8, "depth": 1, "heads": 2}}),
    ];
    for config in field_nets {
        let params = Params::new(0, &dev);
        build(&config, &params).unwrap();
        let arch = config["arch"].as_str().unwrap().to_string();
        add(&arch, config, &params);
    }
    for extra in [
        json!({}),
        json!({"attention": true, "logvar": "scalar", "decoder_variance": "fixed"}),
    ] {
        let mut c = json!({"arch": "vae", "data_shape": [1, 8, 8], "channels": [4, 8],
                           "blocks_per_level": 1, "latent_channels": 2, "groups": 2});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let cfg = VaeConfig::from_json(&c).unwrap();
        let params = Params::new(0, &dev);
        Vae::new(&cfg, &params).unwrap();
        add("vae", cfg.to_json(), &params);
    }
    let cfg = ClassifierConfig::from_json(
        &json!({"data_shape": [1, 8, 8], "channels": [4, 8], "num_classes": 3, "groups": 2}),
    )
    .unwrap();
    let params = Params::new(0, &dev);
    Classifier::new(&cfg, &params).unwrap();
    add("cnn", cfg.to_json(), &params);
    for c in [
        json!({"arch": "tmlp", "data_shape": [2], "hidden": [8, 8], "time_features": 2,
               "num_classes": 3, "path": "condot"}),
        json!({"arch": "tcnn", "data_shape": [1, 8, 8], "channels": [4, 8], "features": 6,
               "groups": 2, "time_features": 1, "num_classes": 3, "path": "condot"}),
    ] {
        let cfg = NoisyConfig::from_json(&c).unwrap();
        let params = Params::new(0, &dev);
        NoisyClassifier::new(&cfg, &params).unwrap();
        let arch = c["arch"].as_str().unwrap();
        add(arch, cfg.to_json(), &params);
    }
    let vocab = Vocab::from_lines(&["ab", "ba"], Unit::Chars);
    let c = json!({"arch": "token-transformer", "vocab": vocab.to_json(), "seq_len": 3,
                   "width": 8, "depth": 1, "heads": 2, "time_features": 8, "num_classes": 2,
                   "activation": "silu", "kappa": "linear", "noise": "mask"});
    let cfg = DenoiserConfig::from_json(&c, "m").unwrap();
    let params = Params::new(0, &dev);
    Denoiser::new(&cfg, &params).unwrap();
    add("token-transformer", cfg.to_json(), &params);
    out
}

#[test]
fn the_model_format_page_names_every_tensor_and_field_the_code_uses() {
    let quoted = quoted();
    let mut missing = BTreeSet::new();
    // The fields the trainers add to every model of a field, and a checkpoint's.
    let common = [
        "format",
        "kind",
        "arch",
        "data_shape",
        "flowpipe_version",
        "time_convention",
        "train",
        "ema",
        "parametrisation",
        "path",
        "source",
        "num_classes",
        "step",
        "model",
        "ema.<name>",
        "adam.m.<name>",
        "adam.v.<name>",
    ];
    for key in common {
        if !quoted.contains(key) {
            missing.insert(format!("config field {key}"));
        }
    }
    let nets = networks();
    assert!(nets.len() >= 8);
    for (arch, config, names) in &nets {
        assert!(quoted.contains(arch.as_str()), "architecture {arch}");
        for key in config.as_object().unwrap().keys() {
            if !quoted.contains(key.as_str()) {
                missing.insert(format!("{arch} config field {key}"));
            }
        }
        for name in names {
            if !quoted.contains(pattern(name).as_str()) {
                missing.insert(format!("{arch} tensor {}", pattern(name)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/model-format.md lacks:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_page_s_patterns_are_checked_against_real_names() {
    // The check above is not vacuous: a DiT's block tensors are found by their patterns.
    assert_eq!(pattern("blocks.12.qkv.weight"), "blocks.<i>.qkv.weight");
    assert_eq!(
        pattern("encoder.mid.res0.conv1.bias"),
        "encoder.mid.res0.conv1.bias"
    );
    let (_, _, names) = networks().into_iter().find(|n| n.0 == "dit").unwrap();
    assert!(
        names.iter().any(|n| n == "blocks.1.qkv.weight"),
        "{names:?}"
    );
}
