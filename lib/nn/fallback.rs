//! The fused CPU kernels against their fallbacks (issue 31): every architecture's outputs and
//! the gradients of all its parameters, computed once through `ops` and once inside
//! [`ops::composed`], where each fused op hands its work to candle's own operations, the code
//! that runs on CUDA. They must agree to rounding; one AdamW step must too.

use candle_core::{backprop::GradStore, DType, Device, Tensor};
use serde_json::json;

use super::classifier::{Classifier, ClassifierConfig};
use super::layers::tests::{max_abs_diff, wobbly};
use super::ops;
use super::vae::{Vae, VaeConfig};
use super::{build, Params};
use crate::discrete::net::{Denoiser, DenoiserConfig};
use crate::discrete::tokens::{Unit, Vocab};
use crate::train::optim::{AdamW, AdamWConfig, Decay, Schedule};

fn times(n: usize) -> Tensor {
    let t: Vec<f32> = (0..n).map(|i| 0.05 + 0.9 * i as f32 / n as f32).collect();
    Tensor::from_vec(t, (n, 1), &Device::Cpu).unwrap()
}

fn labels(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// sum(out * w) for fixed wobbly weights w: a loss whose gradient differs from entry to entry.
fn loss(out: &Tensor) -> Tensor {
    let w = wobbly(out.dims(), 5);
    (out.to_dtype(DType::F32).unwrap() * w)
        .unwrap()
        .sum_all()
        .unwrap()
}

/// `a` and `b` agree to 2e-5 of b's largest value (or absolutely, below 1).
fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let scale = max_abs_diff(b, &b.zeros_like().unwrap()).max(1.0);
    let diff = max_abs_diff(a, b);
    assert!(
        diff <= 2e-5 * scale,
        "{what}: fused and composed differ by {diff} (largest value {scale})"
    );
}

/// Runs `forward` fused and composed; compares the outputs and every parameter's gradient, and
/// asserts that the fused path was not the composed one after all (the outputs differ in some
/// bit somewhere, or the test would prove nothing).
fn compare(what: &str, params: &Params, forward: impl Fn() -> Tensor) {
    let run = || {
        let out = forward();
        let grads = loss(&out).backward().unwrap();
        (out, grads)
    };
    let (fused, fused_grads) = run();
    let (composed, composed_grads) = ops::composed(run);
    assert_close(&format!("{what} output"), &fused, &composed);
    let mut bitwise_same = fused.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        == composed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, var) in params.vars() {
        let g = |store: &GradStore| {
            store
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{what}: {name} has no gradient"))
                .clone()
        };
        let (a, b) = (g(&fused_grads), g(&composed_grads));
        assert_close(&format!("{what}: gradient of {name}"), &a, &b);
        bitwise_same &= a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    }
    assert!(
        !bitwise_same,
        "{what}: the composed path ran the fused kernels"
    );
}

#[test]
fn every_field_network_computes_the_same_fused_and_composed() {
    let nets = [
        json!({"arch": "mlp", "data_shape": [2], "hidden": [16, 16], "activation": "silu",
               "time_features": 4}),
        json!({"arch": "mlp", "data_shape": [2], "hidden": [16], "activation": "tanh",
               "time_features": 4}),
        json!({"arch": "cmlp", "data_shape": [2], "hidden": [16], "activation": "silu",
               "time_features": 4, "num_classes": 3, "label_embed_dim": 4}),
        json!({"arch": "unet", "data_shape": [1, 8, 8], "channels": [4, 8],
               "blocks_per_level": 1, "num_classes": 3, "time_embed_dim": 4,
               "label_embed_dim": 4, "groups": 2}),
        json!({"arch": "dit", "data_shape": [2, 4, 4], "patch_size": 2, "width": 16,
               "depth": 2, "heads": 2, "num_classes": 3, "time_features": 8,
               "activation": "gelu"}),
        json!({"arch": "dit", "data_shape": [1, 4, 4], "patch_size": 1, "width": 8,
               "depth": 1, "heads": 2, "time_features": 8, "activation": "silu"}),
    ];
    for config in nets {
        let params = Params::new(3, &Device::Cpu);
        let net = build(&config, &params).unwrap();
        let shape: Vec<usize> = serde_json::from_value(config["data_shape"].clone()).unwrap();
        let n = 5;
        let x = wobbly(&[[n].as_slice(), &shape].concat(), 10);
        let conditional = net.num_classes() > 0;
        let y = labels(&[0, 1, 2, 3, 1]);
        let what = format!("{}", config["arch"]);
        // Two SGD-free passes: the zero-started adaLN gates of the DiT would stop most
        // gradients, so the parameters are nudged off their init first (same nudge both ways).
        for (name, var) in params.vars() {
            let bump = wobbly(var.dims(), name.len() as u64);
            var.set(&(var.as_tensor() + (bump * 0.05).unwrap()).unwrap())
                .unwrap();
        }
        compare(&what, &params, || {
            net.forward(&x, &times(n), conditional.then_some(&y))
                .unwrap()
        });
    }
}

#[test]
fn the_vae_classifier_and_token_transformer_compute_the_same_fused_and_composed() {
    let dev = Device::Cpu;
    let x = wobbly(&[3, 1, 8, 8], 20);
    for extra in [json!({}), json!({"attention": true})] {
        let mut c = json!({"arch": "vae", "data_shape": [1, 8, 8], "channels": [4, 8],
                           "blocks_per_level": 1, "latent_channels": 2, "groups": 2});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let params = Params::new(4, &dev);
        let vae = Vae::new(&VaeConfig::from_json(&c).unwrap(), &params).unwrap();
        compare("vae", &params, || {
            let post = vae.encode(&x).unwrap();
            let z = post.sample(&wobbly(post.mean.dims(), 30)).unwrap();
            let recon = vae.decode(&z).unwrap();
            let nll = vae.nll(&x, &recon).unwrap();
            let parts = [recon, post.kl().unwrap(), nll].map(|t| t.flatten_all().unwrap());
            Tensor::cat(&parts, 0).unwrap()
        });
    }
    let cfg = ClassifierConfig::from_json(
        &json!({"data_shape": [1, 8, 8], "channels": [4, 8], "num_classes": 3, "groups": 2}),
    )
    .unwrap();
    let params = Params::new(5, &dev);
    let cnn = Classifier::new(&cfg, &params).unwrap();
    compare("classifier", &params, || cnn.logits(&x).unwrap());

    let vocab = Vocab::from_lines(&["ab", "ba"], Unit::Chars);
    let c = json!({"arch": "token-transformer", "vocab": vocab.to_json(), "seq_len": 3,
                   "width": 8, "depth": 1, "heads": 2, "time_features": 8, "num_classes": 2,
                   "activation": "silu", "kappa": "linear", "noise": "mask"});
    let params = Params::new(6, &dev);
    let net = Denoiser::new(&DenoiserConfig::from_json(&c, "m").unwrap(), &params).unwrap();
    for (name, var) in params.vars() {
        let bump = wobbly(var.dims(), name.len() as u64);
        var.set(&(var.as_tensor() + (bump * 0.05).unwrap()).unwrap())
            .unwrap();
    }
    let tokens = Tensor::new(&[[0u32, 1, 3], [2, 3, 1]], &dev).unwrap();
    let y = labels(&[1, 0]);
    compare("token-transformer", &params, || {
        net.forward(&tokens, &times(2), Some(&y)).unwrap()
    });
}

#[test]
fn an_adamw_step_is_the_same_in_place_and_composed() {
    let config = json!({"arch": "mlp", "data_shape": [2], "hidden": [8], "activation": "silu",
                        "time_features": 2});
    let x = wobbly(&[6, 2], 40);
    let step = |composed: bool| {
        let params = Params::new(7, &Device::Cpu);
        let net = build(&config, &params).unwrap();
        let schedule = Schedule {
            lr: 1e-2,
            warmup: 0,
            decay: Decay::Constant,
            total: 2,
        };
        let mut opt = AdamW::new(&params, AdamWConfig::new(schedule, 0.01)).unwrap();
        let mut go = || {
            for _ in 0..2 {
                let grads = loss(&net.forward(&x, &times(6), None).unwrap())
                    .backward()
                    .unwrap();
                opt.step(&grads).unwrap();
            }
        };
        match composed {
            true => ops::composed(go),
            false => go(),
        }
        params.vars()
    };
    for ((name, a), (_, b)) in step(false).into_iter().zip(step(true)) {
        assert_close(&format!("AdamW: {name}"), a.as_tensor(), b.as_tensor());
    }
}
