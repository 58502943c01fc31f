//! Training: the losses of flow and score matching, an optimiser with saveable state, an EMA of
//! the weights, checkpoints, and the loop they share (notes sections 3.2 and 4.1, Algorithm 3).
//!
//! A trainer builds a network on [`crate::nn::Params`], a [`checkpoint::TrainState`] (params,
//! [`optim::AdamW`], optional [`ema::Ema`]) and a loss closure `step -> loss`, then calls
//! [`trainer::run`]. Resuming rebuilds the same state from a checkpoint: weights via
//! `Params::from_model`, moments, EMA and step via `TrainState::restore`. Every random draw of
//! step s is keyed by s, so a resumed run ends bit-identical to an uninterrupted one.
//! [`driver`] is the work of the `fit-velocity` and `fit-score` tools; besides flow matching,
//! fit-velocity trains few-step models from data with the losses of [`shortcut`] and
//! [`meanflow`]. Every module that trains names its files alike: `driver.rs` for a tool's order
//! of work (flags, inputs, train, write; here, [`crate::discrete::driver`],
//! [`crate::distill::driver`]) and `train.rs` or the shared [`trainer`] for the training itself.
//! A driver that outgrows one file becomes a folder of files of one idea: `mod.rs` the order of
//! work, `flags.rs` the flags and their usage errors, `plan.rs` the run's plan, fresh or resumed
//! (here [`driver`] and [`vae`]).

pub mod arch;
pub mod checkpoint;
pub mod classify;
pub mod consistency;
pub mod coupling;
pub mod driver;
pub mod ema;
pub mod flags;
pub mod losses;
pub mod meanflow;
pub mod noisy;
pub mod optim;
pub mod preview;
pub mod shortcut;
pub mod trainer;
pub mod vae;

use candle_core::Tensor;

/// The most classes a conditional model may have. Every trainer sizes a label embedding (and
/// the samplers a table) by the largest label, so one label of 10^9 in a file would ask for
/// tens of gigabytes: labels are refused beyond this bound, with the file named.
pub const MAX_CLASSES: usize = 65_536;

/// Fails unless every label in `labels` (read from `name`) is in 0..MAX_CLASSES.
pub fn check_labels<'a>(labels: impl IntoIterator<Item = &'a i64>, name: &str) -> Result<()> {
    if let Some(bad) = labels
        .into_iter()
        .find(|&&y| !(0..MAX_CLASSES as i64).contains(&y))
    {
        anyhow::bail!(
            "{name} holds the label {bad}: labels must be class numbers in 0..{}",
            MAX_CLASSES - 1
        );
    }
    Ok(())
}

/// A usage error (exit 2) when a class-count flag asks for more than [`MAX_CLASSES`].
pub fn check_num_classes(flag: &str, k: Option<usize>) -> Result<()> {
    match k {
        Some(k) if k > MAX_CLASSES => {
            crate::usage_bail!("{flag} {k} is more than the {MAX_CLASSES} classes a model may have")
        }
        _ => Ok(()),
    }
}

use crate::nn::Params;
use crate::Result;

/// The names of the parameters one AdamW step on `loss` leaves unchanged: those its gradient
/// does not reach. A check for every new network, since candle 0.11 silently lacks a backward
/// pass for some fused ops (`layer_norm`, `rms_norm`, `softmax_last_dim`); an empty list is
/// what a test wants.
pub fn unmoved_params(params: &Params, loss: &Tensor) -> Result<Vec<String>> {
    let before = params.snapshot()?;
    let schedule = optim::Schedule {
        lr: 1e-2,
        warmup: 0,
        decay: optim::Decay::Constant,
        total: 1,
    };
    let mut opt = optim::AdamW::new(params, optim::AdamWConfig::new(schedule, 0.0))?;
    opt.step(&loss.backward()?)?;
    let mut unmoved = Vec::new();
    for ((name, old), (_, new)) in before.iter().zip(params.tensors()) {
        let diff = (old - &new)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        if diff == 0.0 {
            unmoved.push(name.clone());
        }
    }
    Ok(unmoved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{build, time_column, Init, MlpConfig};
    use candle_core::Device;

    #[test]
    fn every_mlp_parameter_moves_after_one_step() {
        let cfg = MlpConfig {
            dim: 3,
            hidden: vec![16, 16, 16],
            activation: crate::nn::Activation::Silu,
            time_features: 2,
        };
        let params = Params::new(0, &Device::Cpu);
        let mut config = cfg.to_json();
        config["kind"] = "velocity".into();
        let net = build(&config, &params).unwrap();
        let x = Tensor::from_vec(
            crate::rng::normal_rows(0, crate::rng::Purpose::Misc, 0, 8, 3),
            (8, 3),
            &Device::Cpu,
        )
        .unwrap();
        let t = time_column(&Tensor::new(0.4f32, &Device::Cpu).unwrap(), 8).unwrap();
        let loss = net
            .forward(&x, &t, None)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(
            unmoved_params(&params, &loss).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_parameter_the_loss_does_not_reach_is_reported() {
        let params = Params::new(0, &Device::Cpu);
        let a = params.var("a", &[2], Init::Ones).unwrap();
        params.var("unused", &[2], Init::Ones).unwrap();
        let loss = a.sqr().unwrap().sum_all().unwrap();
        assert_eq!(unmoved_params(&params, &loss).unwrap(), vec!["unused"]);
    }
}

/// What the tests of the few-step objectives trained from data share: the Gaussian problem
/// whose flow map is known in closed form ([`crate::distill::tests::gaussian_flow_map`]) and a
/// quiet training run.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};
    use serde_json::Value;

    use super::checkpoint::TrainState;
    use super::coupling::Coupling;
    use super::losses::{ConditionalLoss, Dataset, Source};
    use super::optim::{AdamWConfig, Decay, Schedule};
    use super::trainer::{self, LoopOptions};
    use crate::nn::Params;
    use crate::paths::{GaussianPath, Param, Path, TimeDensity};
    use crate::rng::{self, Purpose};

    /// CondOT flow matching's draws from 8,192 samples of N((2, -1), 0.5^2 I), batch 256.
    pub fn gaussian_problem() -> ConditionalLoss {
        let n = 8192;
        let raw = rng::normal_rows(4, Purpose::Data, 0, n, 2);
        let z: Vec<f32> = raw
            .chunks(2)
            .flat_map(|p| {
                [
                    (2.0 + 0.5 * p[0] as f64) as f32,
                    (-1.0 + 0.5 * p[1] as f64) as f32,
                ]
            })
            .collect();
        let data = Dataset::new(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, 2]), z).unwrap(),
            "z.npy",
        )
        .unwrap();
        ConditionalLoss {
            path: Path::Gaussian(GaussianPath::CONDOT),
            target: Param::Velocity,
            data,
            source: Source::Gaussian,
            batch: 256,
            seed: 6,
            device: Device::Cpu,
            labels: None,
            label_dropout: 0.0,
            time: TimeDensity::Uniform,
            coupling: Coupling::Independent,
            interpolant_noise: 0.0,
        }
    }

    /// The config of an MLP 64 x 64 (SiLU) on 2D points, and its fresh weights.
    pub fn small_mlp() -> (Value, Params) {
        let mlp = crate::nn::MlpConfig {
            dim: 2,
            hidden: vec![64, 64],
            activation: crate::nn::Activation::Silu,
            time_features: 0,
        };
        (mlp.to_json(), Params::new(6, &Device::Cpu))
    }

    /// Trains `params` for `steps` steps of `loss` (AdamW at `lr`, cosine decay), quietly.
    pub fn train(
        params: Params,
        config: &Value,
        steps: u64,
        lr: f64,
        loss: &mut dyn FnMut(u64) -> candle_core::Result<Tensor>,
    ) {
        let schedule = Schedule {
            lr,
            warmup: 0,
            decay: Decay::Cosine,
            total: steps,
        };
        let mut state =
            TrainState::fresh_or_resumed(params, AdamWConfig::new(schedule, 0.0), None, None)
                .unwrap();
        let opts = LoopOptions {
            total_steps: steps,
            log: None,
            log_every: steps,
            append_log: false,
            checkpoint: None,
            checkpoint_every: steps,
            quiet: true,
        };
        trainer::run(&mut state, config, &opts, loss).unwrap();
    }
}
