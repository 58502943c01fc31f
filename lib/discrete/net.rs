//! The denoiser network p^theta_{1|t}(. | x_t, y) of discrete diffusion (notes section 8.3): a
//! small bidirectional transformer over token sequences, built from the DiT's layers
//! ([`crate::nn::dit`]).
//!
//! ```text
//! tokens  h = E[x_t] + P                 E: (K + 1, D) token embeddings ([MASK] included),
//!                                        P: (1, L, D) learned positions, both N(0, 0.02^2)
//! cond    c = TimeMlp(t) + E_y(y)        sinusoidal features of t, label embedding with a null row
//! blocks  adaLN-Zero DiT blocks          h = h + g1 Attn(RMSNorm(h)(1 + a1) + s1), then the MLP
//! head    (s, a) = Linear(SiLU(c)) (zero-initialised); logits = Linear(RMSNorm(h)(1 + a) + s)
//! ```
//! Attention is not causal: every position sees the whole sequence. The output is (N, L, K),
//! logits over the K data symbols only: the denoiser never predicts [MASK]. Classifier-free
//! guidance acts on the logits: l~ = (1 - w) l(x | null) + w l(x | y) ([`Denoiser::guided_logits`]).

use anyhow::{anyhow, bail};
use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

use super::paths::{MixturePath, Noise};
use super::schedule::Kappa;
use super::tokens::Vocab;
use crate::io::model::{self, ModelFile};
use crate::nn::config::{positive, size};
use crate::nn::dit::{DitBlock, DitConfig, FfActivation};
use crate::nn::embed::{label_ids, LabelEmbedding, TimeMlp};
use crate::nn::init::{linear, Init, Linear, Params, Weights};
use crate::nn::layers::{softmax_last_dim, RmsNorm};
use crate::nn::time_column;
use crate::Result;

/// The model-file kind of a trained denoiser.
pub const KIND: &str = "denoiser";
pub const ARCH: &str = "token-transformer";

/// The sizes and path of a [`Denoiser`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct DenoiserConfig {
    pub vocab: Vocab,
    /// L, the sequence length.
    pub seq_len: usize,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub time_features: usize,
    /// Classes 0..num_classes plus the null label; 0: unconditional.
    pub num_classes: usize,
    pub activation: FfActivation,
    pub kappa: Kappa,
    pub noise: Noise,
}

impl DenoiserConfig {
    /// The probability path the model was trained on.
    pub fn path(&self) -> MixturePath {
        MixturePath {
            kappa: self.kappa,
            noise: self.noise,
            symbols: self.vocab.data_symbols(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "arch": ARCH,
            "vocab": self.vocab.to_json(),
            "seq_len": self.seq_len,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "time_features": self.time_features,
            "num_classes": self.num_classes,
            "activation": self.activation.name(),
            "kappa": self.kappa.name(),
            "noise": self.noise.name(),
        })
    }

    /// Reads a config (`name` names the file in errors).
    pub fn from_json(c: &Value, name: &str) -> Result<DenoiserConfig> {
        if c["arch"].as_str() != Some(ARCH) {
            bail!("{name}: expected a {ARCH} model, found arch {}", c["arch"]);
        }
        let e = |m: String| anyhow!("{name}: {m}");
        let cfg = DenoiserConfig {
            vocab: Vocab::from_json(&c["vocab"], name)?,
            seq_len: positive(c, "seq_len", 0).map_err(e)?,
            width: positive(c, "width", 128).map_err(e)?,
            depth: size(c, "depth", 4).map_err(e)?,
            heads: positive(c, "heads", 4).map_err(e)?,
            mlp_ratio: positive(c, "mlp_ratio", 4).map_err(e)?,
            time_features: positive(c, "time_features", 64).map_err(e)?,
            num_classes: size(c, "num_classes", 0).map_err(e)?,
            activation: match &c["activation"] {
                Value::Null => bail!(
                    "{name}: the token-transformer config has no 'activation' (gelu or silu; its \
                     tensors cannot tell which)"
                ),
                v => v
                    .as_str()
                    .and_then(FfActivation::parse)
                    .ok_or_else(|| anyhow!("{name}: unknown activation {v} (gelu or silu)"))?,
            },
            kappa: c["kappa"]
                .as_str()
                .and_then(Kappa::parse)
                .ok_or_else(|| anyhow!("{name}: bad kappa {}", c["kappa"]))?,
            noise: c["noise"]
                .as_str()
                .and_then(Noise::parse)
                .ok_or_else(|| anyhow!("{name}: bad noise {}", c["noise"]))?,
        };
        if !cfg.width.is_multiple_of(cfg.heads) {
            bail!(
                "{name}: {} heads do not divide the width {}",
                cfg.heads,
                cfg.width
            );
        }
        Ok(cfg)
    }

    /// The DiT block sizes (its image shape is unused by a block).
    fn block_config(&self) -> DitConfig {
        DitConfig {
            data_shape: [1, 1, 1],
            patch_size: 1,
            width: self.width,
            depth: self.depth,
            heads: self.heads,
            num_classes: self.num_classes,
            mlp_ratio: self.mlp_ratio,
            time_features: self.time_features,
            time_scale: crate::nn::embed::DEFAULT_TIME_SCALE,
            activation: self.activation,
            text: None,
        }
    }
}

/// The token transformer (see the module docs).
#[derive(Clone)]
pub struct Denoiser {
    pub config: DenoiserConfig,
    token_embed: Tensor,
    pos_embed: Tensor,
    time_embed: TimeMlp,
    label_embed: Option<LabelEmbedding>,
    blocks: Vec<DitBlock>,
    final_modulation: Linear,
    head: Linear,
    norm: RmsNorm,
}

impl Denoiser {
    /// Names: `token_embed`, `pos_embed`, `time_embed.{0,1}`, `label_embed`,
    /// `blocks.<i>.{modulation,qkv,proj,fc1,fc2}`, `final.modulation`, `head`.
    pub fn new(cfg: &DenoiserConfig, params: &Params) -> Result<Denoiser> {
        let d = cfg.width;
        let v = cfg.vocab.symbols.len();
        let small = Init::Normal { std: 0.02 };
        let block_cfg = cfg.block_config();
        let fin = params.pp("final").pp("modulation");
        Ok(Denoiser {
            token_embed: params.var("token_embed", &[v, d], small)?,
            pos_embed: params.var("pos_embed", &[1, cfg.seq_len, d], small)?,
            time_embed: TimeMlp::new(
                params,
                "time_embed",
                cfg.time_features,
                crate::nn::embed::DEFAULT_TIME_SCALE,
                d,
            )?,
            label_embed: match cfg.num_classes {
                0 => None,
                k => Some(LabelEmbedding::new(params, "label_embed", k, d)?),
            },
            blocks: (0..cfg.depth)
                .map(|i| DitBlock::new(&block_cfg, &params.pp("blocks").pp(i.to_string())))
                .collect::<Result<_>>()?,
            final_modulation: Linear {
                weight: fin.var("weight", &[2 * d, d], Init::Zeros)?,
                bias: Some(fin.var("bias", &[2 * d], Init::Zeros)?),
            },
            head: linear(params, "head", d, cfg.vocab.data_symbols())?,
            norm: RmsNorm::plain(),
            config: cfg.clone(),
        })
    }

    /// Loads a denoiser (or a checkpoint of one) from a model file, EMA weights when present.
    pub fn open(path: &str, device: &Device) -> Result<(Denoiser, ModelFile)> {
        let file = model::load_kind(path, &[KIND, crate::train::checkpoint::KIND], device)?;
        Ok((Denoiser::from_file(&file, device)?, file))
    }

    /// Whether `file` holds a denoiser (or a checkpoint of one).
    pub fn is_denoiser(file: &ModelFile) -> bool {
        match file.kind() {
            KIND => true,
            crate::train::checkpoint::KIND => crate::train::checkpoint::model_config(file)
                .is_ok_and(|m| m["kind"].as_str() == Some(KIND)),
            _ => false,
        }
    }

    /// The denoiser of a loaded denoiser or checkpoint file, EMA weights when present.
    pub fn from_file(file: &ModelFile, device: &Device) -> Result<Denoiser> {
        let config = match file.kind() {
            KIND => file.config.clone(),
            _ => {
                let m = crate::train::checkpoint::model_config(file)?.clone();
                if m["kind"].as_str() != Some(KIND) {
                    bail!(
                        "{}: a checkpoint of a {} model, not of a denoiser",
                        file.name,
                        m["kind"]
                    );
                }
                m
            }
        };
        let build = |c: &Value, params: &Params| {
            Denoiser::new(&DenoiserConfig::from_json(c, &file.name)?, params)
        };
        crate::nn::open_checked(file, Weights::Auto, device, &config, build)
    }

    /// The raw logits (N, L, K) at token ids `x` (N, L), time `t`, for `labels` (N,) or the
    /// null label, in chunks of 64 sequences: what `eval-field` writes for a denoiser.
    pub fn logits_array(
        &self,
        x: &ArrayD<i64>,
        t: f64,
        labels: Option<&[u32]>,
        device: &Device,
    ) -> Result<ArrayD<f32>> {
        let (n, l, k) = (
            x.shape()[0],
            self.config.seq_len,
            self.config.vocab.data_symbols(),
        );
        let ids: Vec<u32> = x.iter().map(|&v| v as u32).collect();
        let mut out = Vec::with_capacity(n * l * k);
        for start in (0..n).step_by(64) {
            let b = 64.min(n - start);
            let xs = Tensor::from_vec(ids[start * l..(start + b) * l].to_vec(), (b, l), device)?;
            let ts = Tensor::full(t as f32, (b, 1), device)?;
            let ys = match labels {
                Some(y) => Some(Tensor::from_vec(y[start..start + b].to_vec(), b, device)?),
                None => None,
            };
            let logits = self.forward(&xs, &ts, ys.as_ref())?;
            out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(ArrayD::from_shape_vec(IxDyn(&[n, l, k]), out)?)
    }

    /// x: (N, L) token ids (u32) in 0..=K, t: (N, 1) or (N,), y: (N,) labels or None (null)
    /// -> logits (N, L, K).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (n, l) = x.dims2()?;
        if l != self.config.seq_len {
            candle_core::bail!(
                "the denoiser expects sequences of length {}, got {l}",
                self.config.seq_len
            );
        }
        let mut cond = self.time_embed.forward(&time_column(t, n)?)?;
        match &self.label_embed {
            Some(e) => cond = (cond + e.forward(y, n)?)?,
            None => {
                label_ids(y, n, 0, x.device())?;
            }
        }
        let c_act = crate::nn::ops::silu(&cond)?;
        let ids = x.flatten_all()?.to_dtype(DType::U32)?;
        let mut h = self
            .token_embed
            .index_select(&ids, 0)?
            .reshape((n, l, self.config.width))?
            .broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            h = block.forward(&h, &c_act, None)?;
        }
        let m = self
            .final_modulation
            .forward(&c_act)?
            .reshape((n, 2, self.config.width))?;
        let (shift, scale) = (m.narrow(1, 0, 1)?, m.narrow(1, 1, 1)?);
        let h = self
            .norm
            .forward(&h)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        self.head.forward(&h)
    }

    /// Guided logits (1 - w) l(x | null) + w l(x | y); with no labels or w = 1 the plain ones.
    pub fn guided_logits(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
        w: f64,
    ) -> candle_core::Result<Tensor> {
        let cond = self.forward(x, t, y)?;
        if y.is_none() || w == 1.0 || self.config.num_classes == 0 {
            return Ok(cond);
        }
        let null = self.forward(x, t, None)?;
        (null * (1.0 - w))? + (cond * w)?
    }

    /// p_{1|t}(. | x) for (n * L) tokens at time t: softmax(guided logits / temperature), in
    /// chunks of `chunk` sequences -> (n * L * K) probabilities.
    #[allow(clippy::too_many_arguments)]
    pub fn posterior(
        &self,
        x: &[u32],
        t: f64,
        labels: Option<&[u32]>,
        guidance: f64,
        temperature: f64,
        chunk: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<f32>> {
        let l = self.config.seq_len;
        let n = x.len() / l;
        let mut out = Vec::with_capacity(x.len() * self.config.vocab.data_symbols());
        for start in (0..n).step_by(chunk.max(1)) {
            let b = chunk.min(n - start);
            let xs = Tensor::from_vec(x[start * l..(start + b) * l].to_vec(), (b, l), device)?;
            let ts = Tensor::full(t as f32, (b, 1), device)?;
            let ys = match labels {
                Some(y) => Some(Tensor::from_vec(y[start..start + b].to_vec(), b, device)?),
                None => None,
            };
            let logits = self.guided_logits(&xs, &ts, ys.as_ref(), guidance)?;
            let p = softmax_last_dim(&(logits / temperature)?)?;
            out.extend(p.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discrete::tokens::Unit;
    use crate::train::optim::{AdamW, AdamWConfig, Decay, Schedule};
    use crate::train::unmoved_params;

    pub fn tiny(num_classes: usize) -> DenoiserConfig {
        DenoiserConfig {
            vocab: Vocab::from_lines(&["abc"], Unit::Chars),
            seq_len: 5,
            width: 16,
            depth: 2,
            heads: 2,
            mlp_ratio: 2,
            time_features: 8,
            num_classes,
            activation: FfActivation::Silu,
            kappa: Kappa::Linear,
            noise: Noise::Mask,
        }
    }

    fn batch() -> (Tensor, Tensor, Tensor, Vec<u32>) {
        let x: Vec<u32> = (0..20).map(|i| (i * 7 % 5) as u32).collect();
        let z: Vec<u32> = (0..20).map(|i| (i * 3 % 4) as u32).collect();
        let dev = Device::Cpu;
        (
            Tensor::from_vec(x, (4, 5), &dev).unwrap(),
            Tensor::new(&[0.1f32, 0.4, 0.6, 0.9], &dev).unwrap(),
            Tensor::new(&[0u32, 1, 2, 0], &dev).unwrap(),
            z,
        )
    }

    #[test]
    fn shapes_and_config_round_trip() {
        let cfg = tiny(3);
        assert_eq!(DenoiserConfig::from_json(&cfg.to_json(), "m").unwrap(), cfg);
        let p = Params::new(0, &Device::Cpu);
        let net = Denoiser::new(&cfg, &p).unwrap();
        let (x, t, y, _) = batch();
        assert_eq!(net.forward(&x, &t, Some(&y)).unwrap().dims(), &[4, 5, 4]);
        let short = x.narrow(1, 0, 4).unwrap();
        assert!(net.forward(&short, &t, None).is_err());
        let probs = net
            .posterior(&[0, 1, 2, 3, 4], 0.5, None, 1.0, 1.0, 1, &Device::Cpu)
            .unwrap();
        assert_eq!(probs.len(), 20);
        for row in probs.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    /// Every trained parameter moves: one AdamW step opens the adaLN-Zero gates, then a second
    /// step must move every tensor (so none lacks a gradient).
    #[test]
    fn every_parameter_moves_after_two_steps() {
        let p = Params::new(1, &Device::Cpu);
        let net = Denoiser::new(&tiny(3), &p).unwrap();
        let (x, t, y, z) = batch();
        let w = vec![1f32; 20];
        let loss = || {
            super::super::objective::loss(&net.forward(&x, &t, Some(&y)).unwrap(), &z, &w).unwrap()
        };
        let schedule = Schedule {
            lr: 1e-2,
            warmup: 0,
            decay: Decay::Constant,
            total: 1,
        };
        let mut opt = AdamW::new(&p, AdamWConfig::new(schedule, 0.0)).unwrap();
        opt.step(&loss().backward().unwrap()).unwrap();
        assert_eq!(unmoved_params(&p, &loss()).unwrap(), Vec::<String>::new());
    }
}
