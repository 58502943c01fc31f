//! Training the VAE of latent diffusion (notes section 6, Algorithm 6): the driver of `fit-vae`.
//! This file holds its order of work ([`run`]: flags, data, checkpoint, train, write) and the
//! reconstruction grid; the flags and their usage errors are in `flags.rs`, the run's plan
//! (fresh, or resumed from a checkpoint) with the model config in `plan.rs`, and the loss, the
//! negative ELBO with KL warm-up, in `loss.rs`.
//!
//! After training, scale_factor = 1 / std(mu(x)) over the first `--scale-samples` training
//! images (with the weights the model file is used with: the EMA when kept) goes into the model
//! config, so that `encode-vae` writes latents of unit variance for the flow model.

mod flags;
mod loss;
mod plan;

use anyhow::bail;
use candle_core::{Device, Tensor};
use ndarray::ArrayD;
use serde_json::json;
use std::collections::HashMap;

use crate::cli::Common;
use crate::io::npy::{self, shape_str};
use crate::nn::init::EMA_PREFIX;
use crate::nn::vae::{self, Vae};
use crate::nn::Params;
use crate::render::grid::{image_grid, GridOptions};
use crate::train::checkpoint::{self, TrainState};
use crate::train::losses::Dataset;
use crate::train::trainer;
use crate::Result;

use flags::check_flags;
pub use flags::{VaeFlags, DEFAULT_BATCH, DEFAULT_BETA, DEFAULT_LR, DEFAULT_STEPS};
pub use loss::ElboLoss;
use plan::{fresh_plan, model_config, resumed_plan};

pub const KIND: &str = "vae";
/// Images per batch when measuring the scale factor and drawing grids.
const EVAL_BATCH: usize = 256;
/// Images in the reconstruction grid (one row of originals, one of reconstructions).
const GRID_IMAGES: usize = 8;

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
