//! Training state on disk: checkpoints to resume from, and the final model file.
//!
//! A **checkpoint** is a model file ([`crate::io::model`]) of kind `checkpoint` whose config is
//! `{"kind": "checkpoint", "step": s, "model": <the model's own config, with its "train"
//! arguments>}` and whose tensors are
//! - `<name>`: the network's weights (e.g. `layers.0.weight`),
//! - `ema.<name>`: the EMA weights, when training keeps an average,
//! - `adam.m.<name>`, `adam.v.<name>`: the optimiser's moments.
//!
//! Nothing else is needed to resume bit-identically: every random draw of step s comes from
//! streams keyed by (seed, purpose, s) (see [`super::losses`]), so the step count *is* the RNG
//! state. A checkpoint also loads as a model ([`crate::nn::Learned`] reads `"model"`).
//!
//! The **model file** written with `-o` holds the model config and the `<name>` and `ema.<name>`
//! tensors only.

use anyhow::{anyhow, bail};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::ema::Ema;
use super::optim::{AdamW, AdamWConfig};
use crate::io::model::{self, ModelFile};
use crate::nn::Params;
use crate::Result;

/// The kind of a checkpoint file.
pub const KIND: &str = "checkpoint";

/// Everything that changes while training.
pub struct TrainState {
    pub params: Params,
    pub opt: AdamW,
    pub ema: Option<Ema>,
}

impl TrainState {
    /// The state of a run, fresh or resumed: the optimiser `opt` over `params` (already built
    /// into the network, see [`start_params`]), their EMA with decay `ema` when kept, and, when
    /// the run continues the checkpoint `resume`, its optimiser moments, step and EMA restored.
    pub fn fresh_or_resumed(
        params: Params,
        opt: AdamWConfig,
        ema: Option<f64>,
        resume: Option<&ModelFile>,
    ) -> Result<TrainState> {
        let ema = match ema {
            Some(d) => Some(Ema::new(&params, d)?),
            None => None,
        };
        let mut state = TrainState {
            opt: AdamW::new(&params, opt)?,
            params,
            ema,
        };
        if let Some(c) = resume {
            state.restore(c)?;
        }
        Ok(state)
    }

    /// The optimiser steps taken so far.
    pub fn step(&self) -> u64 {
        self.opt.step_count()
    }

    /// The weights and, when kept, their EMA: the tensors of a model file.
    pub fn model_tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = self.params.tensors();
        if let Some(ema) = &self.ema {
            t.extend(ema.tensors());
        }
        t
    }

    /// The model tensors plus the optimiser's moments.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = self.model_tensors();
        t.extend(self.opt.state_tensors());
        t
    }

    /// Restores the optimiser (moments, step) and EMA from a loaded checkpoint; the weights come
    /// from building the network on `Params::from_tensors` of the same file.
    pub fn restore(&mut self, ckpt: &ModelFile) -> Result<()> {
        let step = step_of(ckpt)?;
        self.opt.restore(&ckpt.tensors, step, &ckpt.name)?;
        if let Some(ema) = &mut self.ema {
            ema.restore(&ckpt.tensors, &ckpt.name)?;
        }
        Ok(())
    }
}

/// The weights a run starts from: the checkpoint's when it resumes `resume`, else fresh ones
/// keyed by `seed` (created as the network is built on them).
pub fn start_params(resume: Option<&ModelFile>, seed: u64, device: &Device) -> Params {
    match resume {
        Some(c) => Params::from_tensors(c.tensors.clone(), "", &c.name, device),
        None => Params::new(seed, device),
    }
}

/// What a checkpoint says about the run it continues, checked: the one parser of a resumed
/// run's checkpoint that every trainer starts from.
pub struct Resumed<'a> {
    /// The checkpoint's name, for messages.
    pub name: &'a str,
    /// The config of the model being trained (with its `"train"` arguments).
    pub model: &'a Value,
    /// The step the checkpoint was written at.
    pub step: u64,
}

impl<'a> Resumed<'a> {
    /// Parses `ckpt` as a checkpoint of a model of kind `kind` (`what` names it in the error,
    /// e.g. "a velocity model").
    pub fn parse(ckpt: &'a ModelFile, kind: &str, what: &str) -> Result<Resumed<'a>> {
        let name = ckpt.name.as_str();
        let model = model_config(ckpt)?;
        if model["kind"].as_str() != Some(kind) {
            bail!(
                "{name} is a checkpoint of a {} model, not of {what}",
                model["kind"].as_str().unwrap_or("unknown")
            );
        }
        Ok(Resumed {
            name,
            model,
            step: step_of(ckpt)?,
        })
    }

    /// The error for a config entry `what` that is missing or not what it should be.
    pub fn bad(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{}: the checkpoint's config has a bad or missing {what}",
            self.name
        )
    }

    /// `train.<key>` of the config as a count.
    pub fn train_u64(&self, key: &str) -> Result<u64> {
        self.model["train"][key]
            .as_u64()
            .ok_or_else(|| self.bad(&format!("train.{key}")))
    }

    /// The optimiser settings saved in `train.optimizer`.
    pub fn optimizer(&self) -> Result<AdamWConfig> {
        serde_json::from_value(self.model["train"]["optimizer"].clone())
            .map_err(|_| self.bad("train.optimizer"))
    }

    /// Sets the total steps of the continued run in `opt` to `--steps` when given: a usage
    /// error when it is fewer than the steps done (the saved total stays otherwise).
    pub fn continue_to(&self, steps: Option<u64>, opt: &mut AdamWConfig) -> Result<()> {
        if let Some(total) = steps {
            if total < self.step {
                crate::usage_bail!(
                    "--steps {total} is fewer than the {} steps {} has done",
                    self.step,
                    self.name
                );
            }
            opt.schedule.total = total;
        }
        Ok(())
    }
}

/// The checkpoint's file name for `step`: `{step}` in `pattern` is replaced by the step.
pub fn path_for(pattern: &str, step: u64) -> String {
    pattern.replace("{step}", &step.to_string())
}

/// Writes a checkpoint (atomically) of `state` for the model described by `model_config`.
pub fn save(path: &str, model_config: &Value, state: &TrainState) -> Result<()> {
    let config = json!({"kind": KIND, "step": state.step(), "model": model_config});
    model::save(path, &config, &state.checkpoint_tensors())
}

/// Writes the final model file: the model config with its weights and EMA weights.
pub fn save_model(path: &str, model_config: &Value, state: &TrainState) -> Result<()> {
    model::save(path, model_config, &state.model_tensors())
}

/// Loads a checkpoint file, checking its kind.
pub fn load(path: &str, device: &Device) -> Result<ModelFile> {
    model::load_kind(path, &[KIND], device)
}

/// The step a checkpoint was written at.
pub fn step_of(ckpt: &ModelFile) -> Result<u64> {
    ckpt.field("step")?
        .as_u64()
        .ok_or_else(|| anyhow!("{}: the checkpoint's step is not a count", ckpt.name))
}

/// The config of the model a checkpoint is training.
pub fn model_config(ckpt: &ModelFile) -> Result<&Value> {
    let m = ckpt.field("model")?;
    if !m.is_object() {
        bail!(
            "{}: the checkpoint's model config is not an object",
            ckpt.name
        );
    }
    Ok(m)
}
/// A flag's value as a user writes it on the command line: `16,16`, `cosine`, `0.001`.
pub trait FlagValue {
    fn flag_text(&self) -> String;
}

macro_rules! display_flag {
    ($($t:ty),*) => {$(
        impl FlagValue for $t {
            fn flag_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
display_flag!(usize, u64, u32, f64, bool, str, String);

macro_rules! value_enum_flag {
    ($($t:ty),*) => {$(
        impl FlagValue for $t {
            fn flag_text(&self) -> String {
                clap::ValueEnum::to_possible_value(self)
                    .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
            }
        }
    )*};
}
value_enum_flag!(
    super::optim::Decay,
    crate::nn::vae::LogvarMode,
    crate::nn::vae::DecoderVariance,
    crate::discrete::paths::Noise,
    crate::discrete::schedule::Kappa,
    super::driver::Objective
);

impl<T: FlagValue + ?Sized> FlagValue for &T {
    fn flag_text(&self) -> String {
        (**self).flag_text()
    }
}

impl<T: FlagValue> FlagValue for Option<T> {
    fn flag_text(&self) -> String {
        self.as_ref()
            .map_or_else(|| "none".to_string(), T::flag_text)
    }
}

impl<T: FlagValue> FlagValue for Vec<T> {
    fn flag_text(&self) -> String {
        self.iter().map(T::flag_text).collect::<Vec<_>>().join(",")
    }
}

impl FlagValue for Value {
    fn flag_text(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.flag_text())
                .collect::<Vec<_>>()
                .join(","),
            Value::Null => "none".to_string(),
            v => v.to_string(),
        }
    }
}

/// A usage error when a flag was given with a value other than the checkpoint's: a resumed
/// run keeps its settings, and a contradicting flag is a mistake, not a wish. Both values are
/// shown as a user writes them: `--hidden 16,16 differs from the checkpoint's 8,8`.
pub fn same<T: PartialEq + FlagValue>(
    flag: &str,
    given: &Option<T>,
    saved: &T,
    name: &str,
) -> Result<()> {
    match given {
        Some(g) if g != saved => crate::usage_bail!(
            "{flag} {} differs from the checkpoint's {} in {name}: a resumed run keeps its settings (only --steps may change)",
            g.flag_text(),
            saved.flag_text()
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_flags_are_shown_as_written() {
        let err = same(
            "--hidden",
            &Some(vec![16usize, 16]),
            &vec![8, 8],
            "c.safetensors",
        );
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.starts_with("--hidden 16,16 differs from the checkpoint's 8,8 in c.safetensors"),
            "{msg}"
        );
        let msg = same(
            "--decay",
            &Some(super::super::optim::Decay::Cosine),
            &super::super::optim::Decay::Constant,
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("--decay cosine differs from the checkpoint's constant"),
            "{msg}"
        );
        let msg = same("--ema", &Some(Some(0.99)), &None, "c")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("--ema 0.99 differs from the checkpoint's none"),
            "{msg}"
        );
        let msg = same(
            "--hidden",
            &Some(serde_json::json!([16, 16])),
            &serde_json::json!([8, 8]),
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("--hidden 16,16 differs from the checkpoint's 8,8"),
            "{msg}"
        );
    }
}
