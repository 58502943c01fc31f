//! Training the image classifier p_phi(y | x) of [`crate::nn::classifier`]: minibatch
//! cross-entropy L = -E log p_phi(y | x) with AdamW, in the shared loop ([`super::trainer`]:
//! progress, `--log`, checkpoints), then its accuracy on a held-out set.
//!
//! The minibatch of step s is drawn uniformly with replacement from stream (seed, Shuffle, s),
//! like every trainer's, so a run is reproducible by its seed and step count.

use anyhow::bail;
use candle_core::{Device, Tensor};
use ndarray::ArrayD;
use rand::Rng;

use serde_json::{json, Value};

use super::checkpoint::TrainState;
use super::flags::{CheckpointFlags, LogFlags};
use super::losses::Dataset;
use super::optim::{AdamWConfig, Decay, Schedule};
use super::trainer::{self, LoopOptions};
use crate::io::npy::shape_str;
use crate::nn::classifier::{self, Classifier, ClassifierConfig};
use crate::nn::Params;
use crate::rng::{self, Purpose};
use crate::Result;

/// Images with one class label each.
pub struct Labelled {
    pub images: Dataset,
    /// (N,) labels in 0..num_classes.
    pub labels: Vec<u32>,
}

impl Labelled {
    /// Checks that `images` (N, C, H, W) and `labels` (N,) go together: the same N, labels in
    /// 0..=i32::MAX. `labels_name` names the labels file in errors.
    pub fn new(images: Dataset, labels: &ArrayD<i64>, labels_name: &str) -> Result<Labelled> {
        if labels.ndim() != 1 || labels.len() != images.n {
            bail!(
                "expected labels ({},) for the {} images of {}, got {} in {labels_name}",
                images.n,
                images.n,
                images.name,
                shape_str(labels.shape())
            );
        }
        super::check_labels(labels.iter().filter(|&&v| v >= 0), labels_name)?;
        let labels = labels
            .iter()
            .map(|&v| match u32::try_from(v) {
                Ok(u) if u < i32::MAX as u32 => Ok(u),
                _ => bail!("{labels_name} holds the label {v}: labels must be 0 or more"),
            })
            .collect::<Result<_>>()?;
        Ok(Labelled { images, labels })
    }

    /// The number of classes the labels need: 1 + the largest label.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// The images and labels at `idx`: ((B, C, H, W), (B,) u32).
    pub fn batch(&self, idx: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let mut shape = vec![idx.len()];
        shape.extend_from_slice(&self.images.shape);
        let x = Tensor::from_vec(self.images.gather(idx), shape, device)?;
        let y: Vec<u32> = idx.iter().map(|&i| self.labels[i]).collect();
        Ok((x, Tensor::from_vec(y, idx.len(), device)?))
    }
}

/// The cross-entropy of step `step`'s minibatch of `batch` examples.
pub fn loss(
    net: &Classifier,
    data: &Labelled,
    batch: usize,
    seed: u64,
    step: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut rng = rng::stream(seed, Purpose::Shuffle, step);
    let idx: Vec<usize> = (0..batch)
        .map(|_| rng.random_range(0..data.images.n as u64) as usize)
        .collect();
    let (x, y) = data.batch(&idx, device)?;
    classifier::cross_entropy(&net.logits(&x)?, &y)
}

/// Predicted classes of every image of `images`, in chunks of `chunk`.
pub fn predict(
    net: &Classifier,
    images: &Dataset,
    chunk: usize,
    device: &Device,
) -> candle_core::Result<Vec<u32>> {
    let mut out = Vec::with_capacity(images.n);
    for start in (0..images.n).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk).min(images.n)).collect();
        let mut shape = vec![idx.len()];
        shape.extend_from_slice(&images.shape);
        let x = Tensor::from_vec(images.gather(&idx), shape, device)?;
        out.extend(classifier::predictions(&net.logits(&x)?)?);
    }
    Ok(out)
}

/// The fraction of `predicted` equal to `labels` (0 for no labels).
pub fn accuracy(predicted: &[u32], labels: &[u32]) -> f64 {
    let right = predicted.iter().zip(labels).filter(|(p, y)| p == y).count();
    right as f64 / labels.len().max(1) as f64
}

/// The class count of a classifier tool's run: `classes` (`--classes`), or 1 + the largest
/// training label, at least 2; refused (exit 2) when a set holds a larger label, and an error
/// when the held-out samples differ in shape from the training ones.
pub fn class_count(
    train: &Labelled,
    test: Option<&Labelled>,
    classes: Option<usize>,
) -> Result<usize> {
    let classes = classes.unwrap_or(train.classes()).max(2);
    for set in std::iter::once(train).chain(test) {
        if set.classes() > classes {
            crate::usage_bail!(
                "--classes {classes} is too few: {} holds the label {}",
                set.images.name,
                set.classes() - 1
            );
        }
        if set.images.shape != train.images.shape {
            bail!(
                "the test samples {} are {:?} each but the training samples {:?}",
                set.images.name,
                set.images.shape,
                train.images.shape
            );
        }
    }
    Ok(classes)
}

/// The classifier tools' optimiser: AdamW at `lr` with a cosine decay to 0 over `steps`.
pub fn cosine_adamw(lr: f64, steps: u64, weight_decay: f64) -> AdamWConfig {
    let schedule = Schedule {
        lr,
        warmup: 0,
        decay: Decay::Cosine,
        total: steps,
    };
    AdamWConfig::new(schedule, weight_decay)
}

/// The classifier tools' loop settings from their shared flags.
pub fn loop_options(
    steps: u64,
    logging: &LogFlags,
    checkpoints: &CheckpointFlags,
    quiet: bool,
) -> LoopOptions {
    LoopOptions {
        total_steps: steps,
        log: logging.log.clone(),
        log_every: logging.log_every,
        checkpoint: checkpoints.checkpoint.clone(),
        checkpoint_every: checkpoints.checkpoint_every,
        quiet,
        ..Default::default()
    }
}

/// The classifier tools' closing report (one JSON line on stderr).
pub fn report(summary: &trainer::Summary, test_accuracy: Value, n_test: Option<usize>) -> Value {
    json!({
        "steps": summary.steps,
        "seconds": (summary.seconds * 100.0).round() / 100.0,
        "final_loss": summary.last_loss,
        "test_accuracy": test_accuracy,
        "n_test": n_test,
    })
}

/// How [`fit`] trains.
#[derive(Clone, Debug)]
pub struct FitOptions {
    pub config: ClassifierConfig,
    pub optimizer: AdamWConfig,
    pub batch: usize,
    pub seed: u64,
    /// Loop settings (total steps, log, checkpoints, quiet).
    pub loop_opts: LoopOptions,
}

/// What [`fit`] returns: the model config (with its training arguments and test accuracy) and
/// the final state, ready for [`super::checkpoint::save_model`].
pub struct Fitted {
    pub config: Value,
    pub state: TrainState,
    pub summary: trainer::Summary,
    /// Accuracy on the test set, when one was given.
    pub test_accuracy: Option<f64>,
}

/// Trains a classifier on `train` and measures it on `test`.
pub fn fit(
    opts: &FitOptions,
    train: &Labelled,
    test: Option<&Labelled>,
    device: &Device,
) -> Result<Fitted> {
    let params = Params::new(opts.seed, device);
    let net = Classifier::new(&opts.config, &params)?;
    let mut config = opts.config.to_json();
    config["train"] = json!({
        "loss": "cross-entropy",
        "optimizer": serde_json::to_value(&opts.optimizer)?,
        "batch": opts.batch,
        "seed": opts.seed,
        "data": {"file": train.images.name, "n": train.images.n,
                 "fingerprint": train.images.fingerprint()},
    });
    let mut state = TrainState::fresh_or_resumed(params, opts.optimizer.clone(), None, None)?;
    let summary = trainer::run(&mut state, &config, &opts.loop_opts, &mut |step| {
        loss(&net, train, opts.batch, opts.seed, step, device)
    })?;
    let test_accuracy = match test {
        Some(t) => {
            let pred = predict(&net, &t.images, 500, device)?;
            let acc = accuracy(&pred, &t.labels);
            config["test"] = json!({"file": t.images.name, "n": t.images.n, "accuracy": acc});
            Some(acc)
        }
        None => None,
    };
    Ok(Fitted {
        config,
        state,
        summary,
        test_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::{AdamW, Decay, Schedule};

    /// Two classes of 1x8x8 images: a bright left half or a bright top half, plus noise.
    pub fn two_patterns(n: usize, seed: u64) -> (ArrayD<f32>, ArrayD<i64>) {
        let noise = rng::normal_rows(seed, Purpose::Data, 0, n, 64);
        let mut x = vec![0f32; n * 64];
        let mut y = vec![0i64; n];
        for i in 0..n {
            y[i] = (i % 2) as i64;
            for p in 0..64 {
                let (r, c) = (p / 8, p % 8);
                let on = if i % 2 == 0 { c < 4 } else { r < 4 };
                x[i * 64 + p] = if on { 0.8 } else { -0.8 } + 0.3 * noise[i * 64 + p];
            }
        }
        (
            ArrayD::from_shape_vec(vec![n, 1, 8, 8], x).unwrap(),
            ArrayD::from_shape_vec(vec![n], y).unwrap(),
        )
    }

    #[test]
    fn learns_two_patterns_to_full_accuracy() {
        let dev = Device::Cpu;
        let (x, y) = two_patterns(64, 1);
        let data = Labelled::new(Dataset::new(x, "train").unwrap(), &y, "labels").unwrap();
        assert_eq!(data.classes(), 2);
        let cfg = ClassifierConfig {
            channels: vec![8, 8],
            features: 16,
            groups: 4,
            ..ClassifierConfig::small([1, 8, 8], 2)
        };
        let params = Params::new(0, &dev);
        let net = Classifier::new(&cfg, &params).unwrap();
        let schedule = Schedule {
            lr: 1e-2,
            warmup: 0,
            decay: Decay::Constant,
            total: 30,
        };
        let mut opt = AdamW::new(&params, AdamWConfig::new(schedule, 0.0)).unwrap();
        for step in 0..30 {
            let l = loss(&net, &data, 16, 0, step, &dev).unwrap();
            opt.step(&l.backward().unwrap()).unwrap();
        }
        let (tx, ty) = two_patterns(40, 2);
        let test = Labelled::new(Dataset::new(tx, "test").unwrap(), &ty, "labels").unwrap();
        let pred = predict(&net, &test.images, 16, &dev).unwrap();
        assert_eq!(accuracy(&pred, &test.labels), 1.0);
    }

    #[test]
    fn labels_must_match_the_images() {
        let (x, _) = two_patterns(4, 1);
        let y = ArrayD::from_shape_vec(vec![3], vec![0i64, 1, 0]).unwrap();
        let err = Labelled::new(Dataset::new(x.clone(), "im.npy").unwrap(), &y, "lab.npy")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("expected labels (4,)") && err.contains("(3,) in lab.npy"));
        let y = ArrayD::from_shape_vec(vec![4], vec![0i64, 1, -1, 0]).unwrap();
        let err = Labelled::new(Dataset::new(x, "im.npy").unwrap(), &y, "lab.npy")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("label -1"), "{err}");
    }
}
