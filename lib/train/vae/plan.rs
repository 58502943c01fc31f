//! The plan of a `fit-vae` run: everything that defines it, as stored in the model config, from
//! the flags of a fresh run or from the checkpoint of a resumed one (whose config a flag may not
//! contradict; only `--steps`, the outputs and the data come from the command line).

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use super::flags::{VaeFlags, DEFAULT_BATCH, DEFAULT_BETA, DEFAULT_LR, DEFAULT_STEPS};
use super::KIND;
use crate::cli::Common;
use crate::io::model::ModelFile;
use crate::io::npy::shape_str;
use crate::nn::vae::{self, VaeConfig};
use crate::train::checkpoint;
use crate::train::losses::Dataset;
use crate::train::optim::{AdamWConfig, Decay, Schedule};
use crate::Result;

/// Everything that defines a run, as stored in the model config.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Plan {
    pub(super) vae: VaeConfig,
    pub(super) opt: AdamWConfig,
    pub(super) batch: usize,
    pub(super) seed: u64,
    pub(super) ema: Option<f64>,
    pub(super) beta: f64,
    pub(super) kl_warmup: u64,
}

pub(super) fn fresh_plan(f: &VaeFlags, common: &Common, data: &Dataset) -> Result<Plan> {
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
pub(super) fn model_config(plan: &Plan, data: &Dataset) -> Value {
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
pub(super) fn resumed_plan(
    f: &VaeFlags,
    common: &Common,
    ckpt: &ModelFile,
    data: &Dataset,
) -> Result<Plan> {
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
