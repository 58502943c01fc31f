//! Training the noisy classifier p_phi(y | x_t, t) of classifier guidance
//! ([`crate::nn::noisy`], notes section 5): cross-entropy on samples of the flow model's
//! probability path, L = -E_{(z, y), t, eps} log p_phi(y | alpha_t z + beta_t eps, t), with t
//! from the same time densities as flow matching ([`crate::paths::TimeDensity`]).
//!
//! Draws of step s, as in [`super::losses`]: data rows from (seed, Shuffle, s), eps from
//! (seed, Noise, s), times from (seed, Time, s); so a run is reproducible by seed and step count.
//! Held-out accuracy is measured at fixed times, the noise of test sample i from (seed, Misc, i).

use candle_core::{Device, Tensor};
use rand::Rng;
use serde_json::{json, Value};

use super::checkpoint::TrainState;
use super::classify::Labelled;
use super::optim::AdamWConfig;
use super::trainer::{self, LoopOptions};
use crate::nn::classifier::{cross_entropy, predictions};
use crate::nn::noisy::{NoisyClassifier, NoisyConfig};
use crate::nn::Params;
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::Result;

/// The times at which held-out accuracy is reported.
pub const TEST_TIMES: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

/// How [`fit`] trains.
#[derive(Clone, Debug)]
pub struct NoisyFit {
    pub config: NoisyConfig,
    pub optimizer: AdamWConfig,
    pub time: TimeDensity,
    pub batch: usize,
    pub seed: u64,
    pub loop_opts: LoopOptions,
}

/// x_t = alpha_t z + beta_t eps of `data`'s samples `idx` at times `ts`, with eps `eps`.
fn noised(
    cfg: &NoisyConfig,
    data: &Labelled,
    idx: &[usize],
    eps: Vec<f32>,
    ts: &[f64],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let (z, y) = data.batch(idx, device)?;
    let eps = Tensor::from_vec(eps, z.shape(), device)?;
    let x = cfg.path.sample_xt_at(&z, &eps, ts)?;
    let t32: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
    Ok((x, Tensor::from_vec(t32, (idx.len(), 1), device)?, y))
}

/// The cross-entropy of step `step`'s minibatch.
pub fn loss(
    net: &NoisyClassifier,
    opts: &NoisyFit,
    data: &Labelled,
    step: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut shuffle = rng::stream(opts.seed, Purpose::Shuffle, step);
    let idx: Vec<usize> = (0..opts.batch)
        .map(|_| shuffle.random_range(0..data.images.n as u64) as usize)
        .collect();
    let mut eps = vec![0f32; opts.batch * data.images.dim()];
    rng::fill_normal(&mut rng::stream(opts.seed, Purpose::Noise, step), &mut eps);
    let mut t32 = vec![0f32; opts.batch];
    opts.time
        .fill(&mut rng::stream(opts.seed, Purpose::Time, step), &mut t32);
    let ts: Vec<f64> = t32.iter().map(|&t| t as f64).collect();
    let (x, t, y) = noised(&opts.config, data, &idx, eps, &ts, device)?;
    cross_entropy(&net.logits(&x, &t)?, &y)
}

/// The accuracy of `net` on `test` noised to time `t` (sample i's noise from (seed, Misc, i)).
pub fn accuracy_at(
    net: &NoisyClassifier,
    test: &Labelled,
    t: f64,
    seed: u64,
    device: &Device,
) -> candle_core::Result<f64> {
    let (n, d) = (test.images.n, test.images.dim());
    let mut right = 0;
    for start in (0..n).step_by(500) {
        let idx: Vec<usize> = (start..(start + 500).min(n)).collect();
        let eps = rng::normal_rows(seed, Purpose::Misc, start as u64, idx.len(), d);
        let (x, tt, y) = noised(&net.config, test, &idx, eps, &vec![t; idx.len()], device)?;
        let pred = predictions(&net.logits(&x, &tt)?)?;
        let y = y.to_vec1::<u32>()?;
        right += pred.iter().zip(&y).filter(|(p, y)| p == y).count();
    }
    Ok(right as f64 / n.max(1) as f64)
}

/// What [`fit`] returns: the model config (training arguments and test accuracies in it) and
/// the final state, ready for [`super::checkpoint::save_model`].
pub struct NoisyFitted {
    pub config: Value,
    pub state: TrainState,
    pub summary: trainer::Summary,
    /// {"t": accuracy} at [`TEST_TIMES`], when a test set was given.
    pub test_accuracy: Option<Value>,
}

/// Trains a noisy classifier on `train` and measures it on `test` at [`TEST_TIMES`].
pub fn fit(
    opts: &NoisyFit,
    train: &Labelled,
    test: Option<&Labelled>,
    device: &Device,
) -> Result<NoisyFitted> {
    let params = Params::new(opts.seed, device);
    let net = NoisyClassifier::new(&opts.config, &params)?;
    let mut config = opts.config.to_json();
    config["train"] = json!({
        "loss": "cross-entropy on x_t",
        "time_density": opts.time.name(),
        "optimizer": serde_json::to_value(&opts.optimizer)?,
        "batch": opts.batch,
        "seed": opts.seed,
        "data": {"file": train.images.name, "n": train.images.n,
                 "fingerprint": train.images.fingerprint()},
    });
    let mut state = TrainState::fresh_or_resumed(params, opts.optimizer.clone(), None, None)?;
    let summary = trainer::run(&mut state, &config, &opts.loop_opts, &mut |step| {
        loss(&net, opts, train, step, device)
    })?;
    let test_accuracy = match test {
        Some(t) => {
            let mut acc = serde_json::Map::new();
            for time in TEST_TIMES {
                let a = accuracy_at(&net, t, time, opts.seed, device)?;
                acc.insert(time.to_string(), json!((a * 1e4).round() / 1e4));
            }
            config["test"] = json!({"file": t.images.name, "n": t.images.n, "accuracy": acc});
            Some(Value::Object(acc))
        }
        None => None,
    };
    Ok(NoisyFitted {
        config,
        state,
        summary,
        test_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::noisy::NoisyArch;
    use crate::paths::GaussianPath;
    use crate::train::losses::Dataset;
    use crate::train::optim::{Decay, Schedule};
    use ndarray::ArrayD;

    /// Two well-separated classes in 2D: N((-3, 0), 0.3^2) and N((3, 0), 0.3^2).
    fn two_blobs(n: usize, seed: u64) -> Labelled {
        let noise = rng::normal_rows(seed, Purpose::Data, 0, n, 2);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = (i % 2) as i64;
            x.push(if c == 0 { -3.0 } else { 3.0 } + 0.3 * noise[2 * i]);
            x.push(0.3 * noise[2 * i + 1]);
            y.push(c);
        }
        let x = ArrayD::from_shape_vec(vec![n, 2], x).unwrap();
        let y = ArrayD::from_shape_vec(vec![n], y).unwrap();
        Labelled::new(Dataset::new(x, "blobs").unwrap(), &y, "labels").unwrap()
    }

    #[test]
    fn learns_the_classes_near_the_data_and_not_in_the_noise() {
        let dev = Device::Cpu;
        let opts = NoisyFit {
            config: NoisyConfig {
                data_shape: vec![2],
                arch: NoisyArch::Mlp {
                    hidden: vec![32, 32],
                },
                time_features: 2,
                num_classes: 2,
                path: GaussianPath::CONDOT,
            },
            optimizer: AdamWConfig::new(
                Schedule {
                    lr: 1e-2,
                    warmup: 0,
                    decay: Decay::Constant,
                    total: 150,
                },
                0.0,
            ),
            time: TimeDensity::Uniform,
            batch: 64,
            seed: 1,
            loop_opts: LoopOptions {
                total_steps: 150,
                quiet: true,
                ..Default::default()
            },
        };
        let fitted = fit(&opts, &two_blobs(200, 1), Some(&two_blobs(400, 2)), &dev).unwrap();
        let acc = fitted.test_accuracy.unwrap();
        // At t = 1 the blobs are 20 standard deviations apart; at t = 0.25, x_t = t z +
        // (1 - t) eps puts them +-0.75 apart under noise of std 0.75: Bayes accuracy
        // Phi(0.75 / 0.76) = 0.84.
        assert!(acc["1"].as_f64().unwrap() > 0.99, "{acc}");
        let a = acc["0.25"].as_f64().unwrap();
        assert!(a > 0.7 && a < 0.92, "{acc}");
        assert_eq!(fitted.config["train"]["time_density"], "uniform");
        assert_eq!(fitted.config["kind"], "noisy-classifier");
    }
}
