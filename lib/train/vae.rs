//! Training the VAE of latent diffusion (notes section 6, Algorithm 6): the driver of `fit-vae`.
//!
//! Step s draws a minibatch x_1..x_B uniformly with replacement (stream (seed, Shuffle, s)) and
//! the reparametrisation noise eps (stream (seed, Noise, s)), and minimises the negative ELBO of
//! [`crate::nn::vae`] averaged over the batch,
//!
//!   L_s = mean_b [ -log p_theta(x_b | mu_b + sigma_b eps_b) + beta_s KL(q(z | x_b) || N(0, I)) ],
//!
//! with the KL warm-up beta_s = beta min(1, (s + 1) / kl_warmup) (Bowman et al. 2016; Sonderby
//! et al. 2016), which lets the decoder learn to use z before the KL term pulls the posterior to
//! the prior. The loss is in nats per image. Every draw is keyed by the step, so a resumed run
//! ends bit-identical to an uninterrupted one.
//!
//! After training, scale_factor = 1 / std(mu(x)) over the first `--scale-samples` training
//! images (with the weights the model file is used with: the EMA when kept) goes into the model
//! config, so that `encode-vae` writes latents of unit variance for the flow model.

use crate::cli::at_least_1;
use anyhow::{anyhow, bail};
use candle_core::{Device, Tensor};
use ndarray::ArrayD;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::checkpoint::{self, TrainState};
use super::flags::{OptimFlags, RunFlags};
use super::losses::Dataset;
use super::optim::{AdamWConfig, Decay, Schedule};
use super::trainer;
use crate::cli::Common;
use crate::io::model::ModelFile;
use crate::io::npy::{self, shape_str};
use crate::nn::init::EMA_PREFIX;
use crate::nn::vae::{self, DecoderVariance, LogvarMode, Vae, VaeConfig};
use crate::nn::Params;
use crate::render::grid::{image_grid, GridOptions};
use crate::rng::{self, Purpose};
use crate::{usage_bail, Result};

pub const KIND: &str = "vae";
pub use super::flags::DEFAULT_LR;
pub const DEFAULT_BATCH: usize = 64;
pub const DEFAULT_STEPS: u64 = 2000;
pub const DEFAULT_BETA: f64 = 1.0;
/// Images per batch when measuring the scale factor and drawing grids.
const EVAL_BATCH: usize = 256;
/// Images in the reconstruction grid (one row of originals, one of reconstructions).
const GRID_IMAGES: usize = 8;

/// The flags of `fit-vae`. Those that shape the run are optional so that a resumed run can tell
/// a contradiction from a default.
#[derive(clap::Args, Clone, Debug)]
pub struct VaeFlags {
    /// Training images (N, C, H, W), .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// Channels per level, comma separated; each level after the first halves the resolution
    /// (rounding up) [default: 32,64,64: 32x32 -> 8x8, 28x28 -> 7x7]
    #[arg(long, value_delimiter = ',', value_name = "C,C,...")]
    pub channels: Option<Vec<usize>>,
    /// Residual blocks per level [default: 1]
    #[arg(long, value_name = "B")]
    pub blocks: Option<usize>,
    /// Latent channels k: latents are (k, H / 2^(L-1), W / 2^(L-1)) [default: 4]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    pub latent_channels: Option<usize>,
    /// Self-attention blocks in the middle of encoder and decoder [default: off]
    #[arg(long)]
    pub attention: bool,
    /// GroupNorm groups [default: the largest of 8, 4, 2, 1 dividing every channel count]
    #[arg(long, value_name = "G", value_parser = at_least_1::<usize>)]
    pub groups: Option<usize>,
    /// Posterior log-variance: a conv head per element, or one learned scalar (the lab's)
    /// [default: per-element]
    #[arg(long, value_enum)]
    pub logvar: Option<LogvarMode>,
    /// Decoder variance sigma^2 of p(x | z) = N(D(z), sigma^2 I) [default: learned]
    #[arg(long, value_enum)]
    pub decoder_variance: Option<DecoderVariance>,
    /// Decoder sigma: its value when fixed, its start when learned [default: 0.1; Adam moves a
    /// log-variance by about --lr per step, so a start near the final error matters]
    #[arg(long, value_name = "SIGMA", allow_hyphen_values = true)]
    pub decoder_std: Option<f64>,
    /// Weight of the KL term (1: the ELBO) [default: 1]
    #[arg(long, allow_hyphen_values = true)]
    pub beta: Option<f64>,
    /// Steps of linear KL warm-up from 0 to beta [default: a tenth of --steps]
    #[arg(long, value_name = "STEPS")]
    pub kl_warmup: Option<u64>,
    #[command(flatten)]
    pub optim: OptimFlags,
    /// Steps of linear learning-rate warm-up [default: 0]
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up: constant, or cosine decay to 0 at the last step
    /// [default: constant]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Minibatch size [default: 64]
    #[arg(long, value_parser = at_least_1::<usize>)]
    pub batch: Option<usize>,
    /// Total optimiser steps [default: 2000, or the checkpoint's when resuming]
    #[arg(long, value_parser = at_least_1::<u64>)]
    pub steps: Option<u64>,
    /// Training images used to measure the latent scale factor (the first N; 0: all)
    #[arg(long, value_name = "N", default_value_t = 10000)]
    pub scale_samples: usize,
    #[command(flatten)]
    pub run: RunFlags,
    /// PNG of the first 8 training images (top row) over their reconstructions D(mu(x)),
    /// drawn every --checkpoint-every steps and at the end; `{step}` is replaced by the step.
    /// Written with the model when the run succeeds (the outputs of a run appear together)
    #[arg(long, value_name = "PATH")]
    pub recon_grid: Option<String>,
}

/// Everything that defines a run, as stored in the model config.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    vae: VaeConfig,
    opt: AdamWConfig,
    batch: usize,
    seed: u64,
    ema: Option<f64>,
    beta: f64,
    kl_warmup: u64,
}

/// The negative ELBO with KL warm-up over a data set of images.
pub struct ElboLoss {
    pub data: Dataset,
    pub batch: usize,
    pub seed: u64,
    pub beta: f64,
    pub kl_warmup: u64,
    pub device: Device,
}

impl ElboLoss {
    /// beta_s = beta min(1, (s + 1) / kl_warmup); beta when there is no warm-up.
    pub fn beta_at(&self, step: u64) -> f64 {
        match self.kl_warmup {
            0 => self.beta,
            w => self.beta * ((step + 1) as f64 / w as f64).min(1.0),
        }
    }

    /// The loss of step `step` (nats per image), see the module docs.
    pub fn loss(&self, vae: &Vae, step: u64) -> candle_core::Result<Tensor> {
        let b = self.batch;
        let mut shuffle = rng::stream(self.seed, Purpose::Shuffle, step);
        let idx: Vec<usize> = (0..b)
            .map(|_| shuffle.random_range(0..self.data.n as u64) as usize)
            .collect();
        let mut shape = vec![b];
        shape.extend_from_slice(&self.data.shape);
        let x = Tensor::from_vec(self.data.gather(&idx), shape.as_slice(), &self.device)?;
        let post = vae.encode(&x)?;
        let [k, h, w] = vae.config.latent_shape();
        let mut eps = vec![0f32; b * k * h * w];
        rng::fill_normal(&mut rng::stream(self.seed, Purpose::Noise, step), &mut eps);
        let eps = Tensor::from_vec(eps, (b, k, h, w), &self.device)?;
        let recon = vae.decode(&post.sample(&eps)?)?;
        let nll = vae.nll(&x, &recon)?.mean_all()?;
        let kl = post.kl()?.mean_all()?;
        nll + (kl * self.beta_at(step))?
    }
}

/// Trains a VAE with `flags`: the body of `fit-vae`.
pub fn run(flags: &VaeFlags, common: &Common) -> Result<()> {
    let device = common.setup()?;
    check_flags(flags)?;
    let name = crate::io::display_name(&flags.data);
    let arr = npy::read_f32(&flags.data)?;
    npy::expect_shape(arr.shape(), "N,C,H,W", "training images", &name)?;
    let data = Dataset::new(arr, &name)?;
    let ckpt = match &flags.run.resume {
        Some(p) => Some(checkpoint::load(p, &device)?),
        None => None,
    };
    let plan = match &ckpt {
        Some(c) => resumed_plan(flags, common, c, &data)?,
        None => fresh_plan(flags, common, &data)?,
    };
    let config = model_config(&plan, &data);
    let params = checkpoint::start_params(ckpt.as_ref(), plan.seed, &device);
    let model = Vae::new(&plan.vae, &params)?;
    let mut state =
        TrainState::fresh_or_resumed(params, plan.opt.clone(), plan.ema, ckpt.as_ref())?;
    let latent = plan.vae.latent_shape();
    common.explain(format!(
        "{} parameters; images {} -> latents {}; {} steps from step {}",
        state.params.count(),
        shape_str(&data.shape),
        shape_str(&latent),
        plan.opt.schedule.total,
        state.step()
    ));
    let first = first_images(&data, GRID_IMAGES)?;
    let loss = ElboLoss {
        data,
        batch: plan.batch,
        seed: plan.seed,
        beta: plan.beta,
        kl_warmup: plan.kl_warmup,
        device: device.clone(),
    };
    let opts = flags
        .run
        .loop_options(plan.opt.schedule.total, common.quiet);
    // The grids are staged and appear with the model: all outputs of a run or none.
    let staged = std::cell::RefCell::new(crate::io::Outputs::new());
    let grid = |step: u64, vae: &Vae| -> Result<()> {
        match &flags.recon_grid {
            Some(p) => staged.borrow_mut().add(
                &checkpoint::path_for(p, step),
                &recon_grid_png(vae, &first, &device)?,
                true,
            ),
            None => Ok(()),
        }
    };
    let summary = trainer::run_with(
        &mut state,
        &config,
        &opts,
        &mut |step| loss.loss(&model, step),
        &mut |_, step| grid(step, &model),
    )?;

    // The weights the model file will be used with, and the scale factor measured with them.
    let tensors: HashMap<String, Tensor> = state.model_tensors().into_iter().collect();
    let prefix = if state.ema.is_some() { EMA_PREFIX } else { "" };
    let used = Params::from_tensors(tensors, prefix, "the trained model", &device);
    let trained = Vae::new(&plan.vae, &used)?;
    let m = match flags.scale_samples {
        0 => loss.data.n,
        s => s.min(loss.data.n),
    };
    let subset = first_images(&loss.data, m)?;
    let std = vae::latent_std(&trained, &subset, EVAL_BATCH, &device)?;
    if !(std > 0.0 && std.is_finite()) {
        bail!("the latent means have standard deviation {std}: cannot scale them to unit variance");
    }
    let stats = vae::recon_stats(
        &trained,
        &first_images(&loss.data, m.min(1000))?,
        EVAL_BATCH,
        &device,
    )?;
    let mut final_config = config.clone();
    final_config["scale_factor"] = json!(1.0 / std);
    final_config["latent_std"] = json!(std);
    final_config["train"]["recon_mse"] = json!(stats.recon_mse);
    let mut outputs = staged.into_inner();
    let model_bytes = crate::io::model::encode(&final_config, &state.model_tensors())?;
    outputs.add(&common.output, &model_bytes, true)?;
    outputs.commit()?;
    if summary.steps > 0 {
        common.say(format!(
            "{} steps in {:.1} s ({:.2} ms/step), final loss {:.2} nats/image; reconstruction MSE {:.4} (mean image {:.4}), KL {:.1}, latent std {:.3}",
            summary.steps,
            summary.seconds,
            1000.0 * summary.seconds / summary.steps as f64,
            summary.last_loss,
            stats.recon_mse,
            stats.mean_image_mse,
            stats.kl,
            std
        ));
    }
    Ok(())
}

/// The first `n` images of a data set as an (n, C, H, W) array.
fn first_images(data: &Dataset, n: usize) -> Result<ArrayD<f32>> {
    let n = n.min(data.n);
    let idx: Vec<usize> = (0..n).collect();
    let mut shape = vec![n];
    shape.extend_from_slice(&data.shape);
    npy::from_vec(&shape, data.gather(&idx))
}

/// `images` (top row) over their reconstructions D(mu(x)) as PNG bytes.
pub fn recon_grid_png(vae: &Vae, images: &ArrayD<f32>, device: &Device) -> Result<Vec<u8>> {
    let n = images.shape()[0];
    let unscaled = ArrayD::clone(images);
    let z = vae::encode_all(vae, &unscaled, EVAL_BATCH, vae::Encoding::Mean, device)?;
    let rec = vae::decode_all(vae, &z, EVAL_BATCH, device)?;
    let both = ndarray::concatenate(ndarray::Axis(0), &[images.view(), rec.view()])?;
    let opts = GridOptions {
        cols: Some(n),
        upscale: 2,
        ..GridOptions::default()
    };
    crate::render::png_bytes(&image_grid(&both, &opts)?)
}

/// Usage errors (exit 2): values no run can use.
fn check_flags(f: &VaeFlags) -> Result<()> {
    let positive = |flag: &str, v: Option<f64>| -> Result<()> {
        match v {
            Some(x) if !(x > 0.0 && x.is_finite()) => {
                usage_bail!("{flag} must be positive, got {x}")
            }
            _ => Ok(()),
        }
    };
    f.optim.check()?;
    f.run.check()?;
    if let Some(p) = &f.recon_grid {
        crate::io::check_output(&checkpoint::path_for(p, 0), true)?;
    }
    positive("--decoder-std", f.decoder_std)?;
    if let Some(b) = f.beta {
        if !(b >= 0.0 && b.is_finite()) {
            usage_bail!("--beta must be zero or positive, got {b}");
        }
    }
    if let Some(c) = &f.channels {
        if c.is_empty() || c.contains(&0) {
            usage_bail!("--channels must list positive channel counts, got {c:?}");
        }
        let g = f.groups.unwrap_or(vae::default_groups(c));
        if let Some(bad) = c.iter().find(|&&x| x % g != 0) {
            usage_bail!("--groups {g} does not divide {bad} channels");
        }
    }
    Ok(())
}

fn fresh_plan(f: &VaeFlags, common: &Common, data: &Dataset) -> Result<Plan> {
    let data_shape: [usize; 3] = data.shape.clone().try_into().expect("checked N,C,H,W");
    let d = VaeConfig::default_for(data_shape);
    let channels = f.channels.clone().unwrap_or(d.channels);
    let cfg = VaeConfig {
        groups: f.groups.unwrap_or(vae::default_groups(&channels)),
        channels,
        blocks_per_level: f.blocks.unwrap_or(d.blocks_per_level),
        latent_channels: f.latent_channels.unwrap_or(d.latent_channels),
        attention: f.attention,
        logvar: f.logvar.unwrap_or(d.logvar),
        decoder_variance: f.decoder_variance.unwrap_or(d.decoder_variance),
        decoder_std: f.decoder_std.unwrap_or(d.decoder_std),
        ..d
    };
    cfg.check()
        .map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
    let total = f.steps.unwrap_or(DEFAULT_STEPS);
    let schedule = Schedule {
        lr: f.optim.lr.unwrap_or(DEFAULT_LR),
        warmup: f.warmup.unwrap_or(0),
        decay: f.decay.unwrap_or(Decay::Constant),
        total,
    };
    Ok(Plan {
        vae: cfg,
        opt: AdamWConfig::new(schedule, f.optim.weight_decay.unwrap_or(0.0)),
        batch: f.batch.unwrap_or(DEFAULT_BATCH),
        seed: common.seed,
        ema: f.optim.ema,
        beta: f.beta.unwrap_or(DEFAULT_BETA),
        kl_warmup: f.kl_warmup.unwrap_or(total / 10),
    })
}

/// The model config: the VAE's sizes, `kind` "vae", `ema`, and the training arguments.
fn model_config(plan: &Plan, data: &Dataset) -> Value {
    let mut c = plan.vae.to_json();
    c["kind"] = json!(KIND);
    c["ema"] = json!(plan.ema);
    c["train"] = json!({
        "loss": "negative ELBO: Gaussian NLL + beta KL, linear KL warm-up",
        "optimizer": serde_json::to_value(&plan.opt).unwrap_or(Value::Null),
        "batch": plan.batch,
        "seed": plan.seed,
        "beta": plan.beta,
        "kl_warmup": plan.kl_warmup,
        "data": {"file": data.name, "n": data.n, "fingerprint": data.fingerprint()},
    });
    c
}

/// The plan stored in a checkpoint, after checking the command line and data against it.
fn resumed_plan(f: &VaeFlags, common: &Common, ckpt: &ModelFile, data: &Dataset) -> Result<Plan> {
    let r = checkpoint::Resumed::parse(ckpt, KIND, "a vae")?;
    let (name, m) = (r.name, r.model);
    let bad = |what: &str| r.bad(what);
    let t = &m["train"];
    let mut plan = Plan {
        vae: VaeConfig::from_json(m).map_err(|e| anyhow!("{name}: {e}"))?,
        opt: r.optimizer()?,
        batch: r.train_u64("batch")? as usize,
        seed: r.train_u64("seed")?,
        ema: m["ema"].as_f64(),
        beta: t["beta"].as_f64().ok_or_else(|| bad("train.beta"))?,
        kl_warmup: t["kl_warmup"]
            .as_u64()
            .ok_or_else(|| bad("train.kl_warmup"))?,
    };
    let v = &plan.vae;
    let s = &plan.opt.schedule;
    checkpoint::same("--channels", &f.channels, &v.channels, name)?;
    checkpoint::same("--blocks", &f.blocks, &v.blocks_per_level, name)?;
    checkpoint::same(
        "--latent-channels",
        &f.latent_channels,
        &v.latent_channels,
        name,
    )?;
    checkpoint::same(
        "--attention",
        &f.attention.then_some(true),
        &v.attention,
        name,
    )?;
    checkpoint::same("--groups", &f.groups, &v.groups, name)?;
    checkpoint::same("--logvar", &f.logvar, &v.logvar, name)?;
    checkpoint::same(
        "--decoder-variance",
        &f.decoder_variance,
        &v.decoder_variance,
        name,
    )?;
    checkpoint::same("--decoder-std", &f.decoder_std, &v.decoder_std, name)?;
    checkpoint::same("--beta", &f.beta, &plan.beta, name)?;
    checkpoint::same("--kl-warmup", &f.kl_warmup, &plan.kl_warmup, name)?;
    f.optim
        .check_resumed(s.lr, plan.opt.weight_decay, plan.ema, name)?;
    checkpoint::same("--warmup", &f.warmup, &s.warmup, name)?;
    checkpoint::same("--decay", &f.decay, &s.decay, name)?;
    checkpoint::same("--batch", &f.batch, &plan.batch, name)?;
    // --seed 0 is the default: only another seed contradicts the checkpoint.
    let seed = (common.seed != 0).then_some(common.seed);
    checkpoint::same("--seed", &seed, &plan.seed, name)?;
    r.continue_to(f.steps, &mut plan.opt)?;
    if data.shape != plan.vae.data_shape {
        bail!(
            "expected training images (N, {}) for the checkpoint {name}, got {} in {}",
            plan.vae.data_shape.map(|d| d.to_string()).join(", "),
            shape_str(&[&[data.n][..], &data.shape].concat()),
            data.name
        );
    }
    if t["data"]["fingerprint"].as_str() != Some(&data.fingerprint()) {
        common.say(format!(
            "warning: {} differs from the data {name} was trained on; the run continues on the new data",
            data.name
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_weight_warms_up_linearly() {
        let arr = npy::from_vec(&[1, 1, 2, 2], vec![0.0; 4]).unwrap();
        let mut loss = ElboLoss {
            data: Dataset::new(arr, "x").unwrap(),
            batch: 1,
            seed: 0,
            beta: 0.5,
            kl_warmup: 4,
            device: Device::Cpu,
        };
        let b: Vec<f64> = (0..6).map(|s| loss.beta_at(s)).collect();
        assert_eq!(b, [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]);
        loss.kl_warmup = 0;
        assert_eq!(loss.beta_at(0), 0.5);
    }
}
