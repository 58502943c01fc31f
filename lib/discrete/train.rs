//! Training a denoiser ([`super::net`]) with the objective of [`super::objective`] in the
//! shared loop ([`crate::train::trainer`]: AdamW, EMA, progress, `--log`, checkpoints), and
//! estimating its ELBO on held-out sequences.
//!
//! Step s draws its minibatch (with replacement) from stream (seed, Shuffle, s), the times from
//! (seed, Time, s) (stratified, [`stratified_times`], then sent through the quantile of
//! `--time-density`, [`TimeDensity::quantile`]: uniform by default; any density with full
//! support keeps the minimiser, the posterior p(z | x_t) at every t, and only reweights the
//! times, as for flow matching in [`crate::paths::TimeDensity`]), the noise of x_t from (seed, Noise, s) and the label
//! dropout from (seed, LabelDropout, s), so a run is reproducible from its seed and a resumed
//! run repeats the uninterrupted one.
//!
//! **ELBO estimate** ([`elbo`]): sequence i gets R stratified times t_r = (r + u_i) / R,
//! u_i ~ U[0, 1) from stream (seed, Time, i), and x_t from stream (seed, Noise, i 2^20 + r); its bound is
//! the mean over r of sum_l kappa'/(1 - kappa) 1[x_t^l masked] (-log p(z^l | x_t)) (nats). The
//! report gives the mean over sequences in bits per token (/ (L ln 2)) and per sequence, with
//! standard errors from the spread over sequences.

use anyhow::bail;
use candle_core::{Device, Tensor};
use rand::Rng;
use serde_json::{json, Value};

use super::net::{Denoiser, DenoiserConfig, KIND};
use super::objective;
use super::paths::Noise;
use crate::paths::TimeDensity;
use crate::rng::{self, Purpose};
use crate::train::checkpoint::{self, TrainState};
use crate::train::optim::AdamWConfig;
use crate::train::trainer::{self, LoopOptions, Summary};
use crate::Result;

/// Token sequences (and optional labels) held as flat ids.
#[derive(Clone, Debug)]
pub struct TokenData {
    /// (n * len) ids in 0..K.
    pub ids: Vec<u32>,
    pub n: usize,
    pub len: usize,
    /// (n,) labels in 0..num_classes.
    pub labels: Option<Vec<u32>>,
    /// The file, for messages and the model config.
    pub name: String,
}

impl TokenData {
    fn rows(&self, idx: &[usize]) -> Vec<u32> {
        idx.iter()
            .flat_map(|&i| self.ids[i * self.len..(i + 1) * self.len].iter().copied())
            .collect()
    }
}

/// How [`fit`] trains.
#[derive(Clone, Debug)]
pub struct FitOptions {
    pub config: DenoiserConfig,
    pub optimizer: AdamWConfig,
    pub batch: usize,
    pub seed: u64,
    pub ema: Option<f64>,
    /// Probability of replacing a label by the null label (classifier-free guidance).
    pub label_dropout: f64,
    /// The density of the training times (stratified through its quantile).
    pub time: TimeDensity,
    pub loop_opts: LoopOptions,
}

impl FitOptions {
    /// The model config: the network, `kind` "denoiser", and the training arguments.
    pub fn model_config(&self, data: &TokenData) -> Value {
        let mut c = self.config.to_json();
        c["kind"] = json!(KIND);
        c["ema"] = json!(self.ema);
        c["train"] = json!({
            "loss": match self.config.noise {
                Noise::Mask => "masked diffusion ELBO (weighted cross-entropy on masked tokens)",
                Noise::Uniform => "denoiser cross-entropy on every token",
            },
            "optimizer": serde_json::to_value(&self.optimizer).unwrap_or(Value::Null),
            "batch": self.batch,
            "seed": self.seed,
            "label_dropout": self.label_dropout,
            "time_density": self.time.name(),
            "data": {"file": data.name, "n": data.n},
        });
        c
    }
}

/// b times (u + i) / b, i = 0..b-1: one per stratum of [0, 1), shifted together by u ~ U[0, 1)
/// (low-discrepancy times, MDLM; Kingma et al. 2021): the minibatch covers the whole path, so
/// the estimate of the weighted loss, whose weight grows as 1/(1 - t), varies much less.
pub fn stratified_times(u: f64, b: usize) -> Vec<f64> {
    (0..b).map(|i| (i as f64 + u) / b as f64).collect()
}

/// The loss of step `step`: a minibatch noised along the path, its weighted cross-entropy.
pub fn step_loss(
    net: &Denoiser,
    data: &TokenData,
    opts: &FitOptions,
    step: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (b, len) = (opts.batch, data.len);
    let mut pick = rng::stream(opts.seed, Purpose::Shuffle, step);
    let idx: Vec<usize> = (0..b).map(|_| pick.random_range(0..data.n)).collect();
    let z = data.rows(&idx);
    let t: Vec<f64> = stratified_times(rng::stream(opts.seed, Purpose::Time, step).random(), b)
        .into_iter()
        .map(|u| opts.time.quantile(u))
        .collect();
    let mut noise = [rng::stream(opts.seed, Purpose::Noise, step)];
    // One stream for the whole batch: sequences are noised in order from it.
    let mut noised = objective::Noised {
        xt: Vec::new(),
        t: Vec::new(),
        weights: Vec::new(),
    };
    for (seq, &ti) in z.chunks(len).zip(&t) {
        let part = objective::noise(&opts.config.path(), seq, len, &[ti], &mut noise);
        noised.xt.extend(part.xt);
        noised.t.extend(part.t);
        noised.weights.extend(part.weights);
    }
    let labels = match &data.labels {
        Some(y) => {
            let mut drop = rng::stream(opts.seed, Purpose::LabelDropout, step);
            let null = opts.config.num_classes as u32;
            let ys: Vec<u32> = idx
                .iter()
                .map(|&i| {
                    if drop.random::<f64>() < opts.label_dropout {
                        null
                    } else {
                        y[i]
                    }
                })
                .collect();
            Some(Tensor::from_vec(ys, b, device)?)
        }
        None => None,
    };
    let x = Tensor::from_vec(noised.xt, (b, len), device)?;
    let tt = Tensor::from_vec(noised.t, (b, 1), device)?;
    let logits = net.forward(&x, &tt, labels.as_ref())?;
    objective::loss(&logits, &z, &noised.weights)
}

/// A trained denoiser: its model config and final state, for `checkpoint::save_model`.
pub struct Fitted {
    pub config: Value,
    pub state: TrainState,
    pub summary: Summary,
}

/// Trains a denoiser on `data`; with `resume` (a loaded checkpoint of the same run) it
/// continues from the checkpoint's weights, moments, EMA and step.
pub fn fit(
    opts: &FitOptions,
    data: &TokenData,
    resume: Option<&crate::io::model::ModelFile>,
    device: &Device,
) -> Result<Fitted> {
    if data.len != opts.config.seq_len {
        bail!(
            "{}: sequences of length {}, but the model has length {}",
            data.name,
            data.len,
            opts.config.seq_len
        );
    }
    let params = checkpoint::start_params(resume, opts.seed, device);
    let net = Denoiser::new(&opts.config, &params)?;
    let config = opts.model_config(data);
    let mut state = TrainState::fresh_or_resumed(params, opts.optimizer.clone(), opts.ema, resume)?;
    let summary = trainer::run(&mut state, &config, &opts.loop_opts, &mut |step| {
        step_loss(&net, data, opts, step, device)
    })?;
    Ok(Fitted {
        config,
        state,
        summary,
    })
}

/// The options of a fresh run stored in a checkpoint's (or model's) config, with a new total.
pub fn resumed_options(
    ckpt: &crate::io::model::ModelFile,
    total_steps: Option<u64>,
    loop_opts: LoopOptions,
) -> Result<FitOptions> {
    let r = checkpoint::Resumed::parse(ckpt, KIND, "a denoiser")?;
    let (name, m) = (r.name, r.model);
    let mut optimizer = r.optimizer()?;
    r.continue_to(total_steps, &mut optimizer)?;
    Ok(FitOptions {
        config: DenoiserConfig::from_json(m, name)?,
        loop_opts: LoopOptions {
            total_steps: optimizer.schedule.total,
            append_log: true,
            ..loop_opts
        },
        optimizer,
        batch: r.train_u64("batch")? as usize,
        seed: r.train_u64("seed")?,
        ema: m["ema"].as_f64(),
        label_dropout: m["train"]["label_dropout"].as_f64().unwrap_or(0.0),
        // Checkpoints from before the flag trained with uniform times.
        time: match m["train"]["time_density"].as_str() {
            None => TimeDensity::Uniform,
            Some(t) => t
                .parse()
                .map_err(|e| anyhow::anyhow!("{name}: train.time_density: {e}"))?,
        },
    })
}

/// The held-out ELBO of a masked denoiser.
#[derive(Clone, Debug, PartialEq)]
pub struct ElboReport {
    pub bits_per_token: f64,
    pub standard_error: f64,
    pub bits_per_sequence: f64,
    pub n_sequences: usize,
    pub draws: usize,
    pub seq_len: usize,
    /// log2 K: a model that predicts uniformly.
    pub uniform_bits_per_token: f64,
    /// The bound estimated, in words.
    pub bound: &'static str,
}

impl ElboReport {
    pub fn to_json(&self) -> Value {
        json!({
            "elbo_bits_per_token": self.bits_per_token,
            "standard_error": self.standard_error,
            "elbo_bits_per_sequence": self.bits_per_sequence,
            "n_sequences": self.n_sequences,
            "draws_per_sequence": self.draws,
            "seq_len": self.seq_len,
            "uniform_bits_per_token": self.uniform_bits_per_token,
            "bound": self.bound,
        })
    }
}

/// Estimates -log2 p(x) per token for `data` under a denoiser: the masked ELBO or the
/// uniform-noise bound of [`objective`] (see its docs).
pub fn elbo(
    net: &Denoiser,
    data: &TokenData,
    draws: usize,
    seed: u64,
    chunk: usize,
    device: &Device,
) -> Result<ElboReport> {
    let path = net.config.path();
    if data.len != net.config.seq_len {
        bail!(
            "{}: sequences of length {}, but the model has length {}",
            data.name,
            data.len,
            net.config.seq_len
        );
    }
    let len = data.len;
    let mut per_seq = Vec::with_capacity(data.n);
    let per_chunk = (chunk / draws.max(1)).max(1);
    for start in (0..data.n).step_by(per_chunk) {
        let idx: Vec<usize> = (start..(start + per_chunk).min(data.n)).collect();
        let mut z = Vec::new();
        let mut t = Vec::new();
        let mut rngs = Vec::new();
        let mut labels = Vec::new();
        for &i in &idx {
            let mut tr = rng::stream(seed, Purpose::Time, i as u64);
            let u: f64 = tr.random();
            for r in 0..draws {
                z.extend(data.rows(&[i]));
                t.push((r as f64 + u) / draws as f64);
                labels.push(
                    data.labels
                        .as_ref()
                        .map_or(net.config.num_classes as u32, |y| y[i]),
                );
                // Draw r of sequence i: its own stream, whatever the chunking.
                rngs.push(rng::stream(
                    seed,
                    Purpose::Noise,
                    ((i as u64) << 20) + r as u64,
                ));
            }
        }
        let b = t.len();
        let noised = objective::noise(&path, &z, len, &t, &mut rngs);
        let x = Tensor::from_vec(noised.xt.clone(), (b, len), device)?;
        let tt = Tensor::from_vec(noised.t, (b, 1), device)?;
        let y = Tensor::from_vec(labels, b, device)?;
        let logits = net.forward(&x, &tt, Some(&y))?;
        let terms = match path.noise {
            Noise::Mask => objective::elbo_terms(&logits, &z, &noised.weights)?,
            Noise::Uniform => {
                let lambda: Vec<f32> = t
                    .iter()
                    .map(|&v| path.kappa.rate(v).min(1e6) as f32)
                    .collect();
                objective::uniform_elbo_terms(&logits, &z, &noised.xt, &lambda)?
            }
        };
        let terms: Vec<f32> = terms.to_vec1()?;
        for seq in terms.chunks(draws) {
            per_seq.push(seq.iter().map(|&v| v as f64).sum::<f64>() / draws as f64);
        }
    }
    let n = per_seq.len() as f64;
    let to_bits = 1.0 / std::f64::consts::LN_2;
    let mean = per_seq.iter().sum::<f64>() / n;
    let var = per_seq.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(ElboReport {
        bits_per_token: mean * to_bits / len as f64,
        standard_error: (var / n).sqrt() * to_bits / len as f64,
        bits_per_sequence: mean * to_bits,
        n_sequences: per_seq.len(),
        draws,
        seq_len: len,
        uniform_bits_per_token: (path.symbols as f64).log2(),
        bound: match path.noise {
            Noise::Mask => "continuous-time masked-diffusion ELBO: -log2 p(x) <= int_0^1 kappa'/(1-kappa) E[sum over masked tokens of -log2 p(x^l | x_t)] dt",
            Noise::Uniform => "CTMC path-measure bound of uniform noise: -log2 p(x) <= int_0^1 kappa'/(1-kappa) E[sum_l 1[x^l != z^l] (-log p(z^l | x_t) - p(x^l | x_t)) + 1[x^l = z^l] (1 - p(x^l | x_t))] dt / ln 2",
        },
    })
}

/// `evaluate --model`: the ELBO report of the tokens file `tokens` under the denoiser `model`,
/// with the file names; reading and checking both (errors name the files).
pub fn evaluate_file(
    tokens: &str,
    model: &str,
    draws: usize,
    seed: u64,
    device: &Device,
) -> Result<Value> {
    let (net, file) = Denoiser::open(model, device)?;
    let cfg = &net.config;
    let arr = super::tokens::read_tokens(tokens, &cfg.vocab, Some(cfg.seq_len), false)?;
    let name = crate::io::display_name(tokens);
    if arr.shape()[0] == 0 {
        bail!("{name} holds no sequences");
    }
    let data = TokenData {
        ids: super::tokens::ids(&arr),
        n: arr.shape()[0],
        len: cfg.seq_len,
        labels: None,
        name: name.clone(),
    };
    let mut report = elbo(&net, &data, draws, seed, 4096, device)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.name))?
        .to_json();
    report["tokens"] = json!(name);
    report["model"] = json!(file.name);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discrete::schedule::Kappa;
    use crate::discrete::tokens::{Unit, Vocab};
    use crate::nn::FfActivation;
    use crate::train::optim::{Decay, Schedule};

    /// A toy language: "ab", "ba", "abab", "baba" padded to 4 (K = 3 with the pad).
    pub fn toy() -> TokenData {
        let vocab = Vocab::from_lines(&["ab"], Unit::Chars);
        let words = ["ab", "ba", "abab", "baba"];
        let ids: Vec<u32> = (0..64)
            .flat_map(|i| vocab.encode(words[i % 4], 4).unwrap())
            .collect();
        TokenData {
            ids,
            n: 64,
            len: 4,
            labels: None,
            name: "toy".into(),
        }
    }

    #[test]
    fn training_on_a_toy_language_beats_the_uniform_elbo() {
        let data = toy();
        let config = DenoiserConfig {
            vocab: Vocab::from_lines(&["ab"], Unit::Chars),
            seq_len: 4,
            width: 32,
            depth: 2,
            heads: 2,
            mlp_ratio: 2,
            time_features: 16,
            num_classes: 0,
            activation: FfActivation::Silu,
            kappa: Kappa::Linear,
            noise: Noise::Mask,
        };
        let steps = 150;
        let opts = FitOptions {
            config,
            optimizer: AdamWConfig::new(
                Schedule {
                    lr: 3e-3,
                    warmup: 10,
                    decay: Decay::Constant,
                    total: steps,
                },
                0.0,
            ),
            batch: 32,
            seed: 0,
            ema: None,
            label_dropout: 0.0,
            time: TimeDensity::Uniform,
            loop_opts: LoopOptions {
                total_steps: steps,
                quiet: true,
                log_every: 50,
                checkpoint_every: steps,
                ..Default::default()
            },
        };
        let fitted = fit(&opts, &data, None, &Device::Cpu).unwrap();
        let net = Denoiser::new(&opts.config, &fitted.state.params).unwrap();
        let report = elbo(&net, &data, 8, 1, 256, &Device::Cpu).unwrap();
        // The toy language has 4 equally likely words: 2 bits per sequence, 0.5 bits per token;
        // uniform is log2 3 = 1.58 bits per token.
        assert!(
            report.bits_per_token < 0.9 * report.uniform_bits_per_token,
            "{report:?}"
        );
        assert!(
            report.bits_per_token > 0.4,
            "below the entropy 0.5: {report:?}"
        );
        assert_eq!(report.n_sequences, 64);
    }
}
