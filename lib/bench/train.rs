//! The training-step figures: each times one conditional flow matching step on a fixed batch
//! (x_t = t x_1 + (1 - t) x_0, target x_1 - x_0, notes eq. 31): forward, backward and the AdamW
//! update; drawing the batch is left out so that the same figure can be measured in PyTorch
//! (`bench/torch_reference.py`). The VAE's step is one of the negative ELBO instead.

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::harness::{line, normal, time_runs};
use super::Settings;
use crate::nn::vae::{Vae, VaeConfig};
use crate::nn::{Activation, Dit, DitConfig, FieldNet, Mlp, MlpConfig, Params, UNet, UNetConfig};
use crate::train::optim::{AdamW, AdamWConfig, Decay, Schedule};
use crate::Result;

/// A fixed flow-matching batch for data of `shape` (B, ...): (x_t, t (B, 1), target, labels
/// (B,) cycling through 0..=classes, the last being the null label).
fn fm_batch(shape: &[usize], classes: usize, device: &Device) -> Result<[Tensor; 4]> {
    let b = shape[0];
    let x1 = normal(shape, 1, device)?;
    let x0 = normal(shape, 2, device)?;
    let tv: Vec<f32> = (0..b).map(|i| (i as f32 + 0.5) / b as f32).collect();
    let t = Tensor::from_vec(tv, (b, 1), device)?;
    let mut tb = vec![b];
    tb.extend(std::iter::repeat_n(1, shape.len() - 1));
    let tt = t.reshape(tb)?;
    let xt = (x1.broadcast_mul(&tt)? + x0.broadcast_mul(&(1.0 - &tt)?)?)?;
    let target = (&x1 - &x0)?;
    let y: Vec<u32> = (0..b).map(|i| (i % (classes + 1)) as u32).collect();
    Ok([xt, t, target, Tensor::from_vec(y, b, device)?])
}

/// The optimiser of every training-step figure: AdamW at a constant 1e-4, no weight decay.
fn bench_optimiser(params: &Params) -> Result<AdamW> {
    let schedule = Schedule {
        lr: 1e-4,
        warmup: 0,
        decay: Decay::Constant,
        total: u64::MAX,
    };
    AdamW::new(params, AdamWConfig::new(schedule, 0.0))
}

/// Times one training step (forward, backward, AdamW) of `net` on a fixed batch.
fn train_step(
    figure: &str,
    config: Value,
    net: &dyn FieldNet,
    params: &Params,
    shape: &[usize],
    (warmup, runs): (usize, usize),
    device: &Device,
) -> Result<Value> {
    let classes = net.num_classes();
    let [xt, t, target, y] = fm_batch(shape, classes, device)?;
    let y = (classes > 0).then_some(y);
    let mut opt = bench_optimiser(params)?;
    let b = shape[0] as f64;
    let times = time_runs(warmup, runs, || {
        let pred = net.forward(&xt, &t, y.as_ref())?;
        let loss = (pred - &target)?.sqr()?.sum_all()?.affine(1.0 / b, 0.0)?;
        opt.step(&loss.backward()?)?;
        // Wait for the device (a no-op on the CPU).
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let mut v = line(figure, config, warmup, &times);
    v["config"]["parameters"] = json!(params.count());
    Ok(v)
}

/// (a) the 2-D MLP of Lab 2: 4 x 256, SiLU, batch 1024.
pub fn mlp2d(s: Settings, device: &Device) -> Result<Value> {
    let (hidden, batch) = if s.tiny { (16, 8) } else { (256, 1024) };
    let cfg = MlpConfig {
        dim: 2,
        hidden: vec![hidden; 4],
        activation: Activation::Silu,
        time_features: 0,
    };
    let params = Params::new(0, device);
    let net = Mlp::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (5, s.runs.unwrap_or(30))
    };
    train_step(
        "train_step_mlp2d",
        config,
        &net,
        &params,
        &[batch, 2],
        reps,
        device,
    )
}

/// The lab's U-Net for 1x28x28 images and 10 classes (tiny: 1x8x8, channels [8, 16]).
pub(super) fn unet_config(tiny: bool) -> UNetConfig {
    if tiny {
        UNetConfig {
            channels: vec![8, 16],
            blocks_per_level: 1,
            time_embed_dim: 8,
            label_embed_dim: 8,
            groups: 4,
            ..UNetConfig::lab([1, 8, 8], 10)
        }
    } else {
        UNetConfig::lab([1, 28, 28], 10)
    }
}

/// (b) the U-Net at the lab 3 default size, batch 128.
pub fn unet(s: Settings, device: &Device) -> Result<Value> {
    let cfg = unet_config(s.tiny);
    let batch = if s.tiny { 2 } else { 128 };
    let params = Params::new(0, device);
    let net = UNet::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    train_step(
        "train_step_unet",
        config,
        &net,
        &params,
        &shape,
        reps,
        device,
    )
}

/// (c) the DiT on 4x8x8 latents (the shape of the lab's VAE latents), batch 256, its default
/// sizes (patch 2, width 256, depth 6, 4 heads).
pub fn dit(s: Settings, device: &Device) -> Result<Value> {
    let mut config = json!({"arch": "dit", "data_shape": [4, 8, 8], "num_classes": 10,
                            "activation": "gelu"});
    if s.tiny {
        config = json!({"arch": "dit", "data_shape": [4, 4, 4], "num_classes": 10,
                        "width": 16, "depth": 1, "heads": 2, "time_features": 8,
                        "activation": "gelu"});
    }
    let cfg = DitConfig::from_json(&config).map_err(anyhow::Error::msg)?;
    let batch = if s.tiny { 2 } else { 256 };
    let params = Params::new(0, device);
    let net = Dit::new(&cfg, &params)?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    train_step(
        "train_step_dit",
        config,
        &net,
        &params,
        &shape,
        reps,
        device,
    )
}

/// (d) the main job's VAE (1x32x32 images, channels 16, 32, 64, 4x8x8 latents), batch 128: one
/// step of the negative ELBO (encode, reparametrised sample, decode, Gaussian NLL + KL).
pub fn vae(s: Settings, device: &Device) -> Result<Value> {
    let mut cfg = VaeConfig::default_for(if s.tiny { [1, 8, 8] } else { [1, 32, 32] });
    cfg.channels = if s.tiny { vec![4, 8] } else { vec![16, 32, 64] };
    cfg.groups = 4;
    let batch = if s.tiny { 2 } else { 128 };
    let params = Params::new(0, device);
    let net = Vae::new(&cfg, &params)?;
    let mut shape = vec![batch];
    shape.extend(cfg.data_shape);
    let x = normal(&shape, 4, device)?;
    let mut latent = vec![batch];
    latent.extend(cfg.latent_shape());
    let eps = normal(&latent, 5, device)?;
    let mut opt = bench_optimiser(&params)?;
    let reps = if s.tiny {
        (1, 2)
    } else {
        (1, s.runs.unwrap_or(5))
    };
    let times = time_runs(reps.0, reps.1, || {
        let post = net.encode(&x)?;
        let recon = net.decode(&post.sample(&eps)?)?;
        let loss = (net.nll(&x, &recon)?.mean_all()? + post.kl()?.mean_all()?)?;
        opt.step(&loss.backward()?)?;
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let mut config = cfg.to_json();
    config["batch"] = json!(batch);
    let mut v = line("train_step_vae", config, reps.0, &times);
    v["config"]["parameters"] = json!(params.count());
    Ok(v)
}
