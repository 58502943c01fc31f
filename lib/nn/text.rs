//! Conditioning on a prompt (notes sections 5 and 6): a small text encoder over token ids and
//! the cross-attention by which a generator's image tokens read its output.
//!
//! ```text
//! encoder  e = E[ids] + P[:L]                 ids (N, L), 0 = [PAD]; E (V, Dt), P (1, L_max, Dt)
//!          block: e = e + proj(MaskedAttn(qkv(RMSNorm(e))))
//!                 e = e + fc2(SiLU(fc1(RMSNorm(e))))
//!          out = RMSNorm(e) (gain), keep = [ids != 0]  (N, L) in {0, 1}
//!          pooled = sum_l keep_l out_l / max(1, sum_l keep_l)                (N, Dt)
//! cross    z + proj(MaskedAttn(q(RMSNorm(z)), k(out), v(out)))       z (N, Lz, D) image tokens
//! ```
//!
//! **Masks, not lengths.** A prompt is its non-[PAD] tokens, wherever the padding is: the
//! attention weight of a [PAD] key is zero up to f32 denormals (its score is pushed down by 1e9
//! before the softmax), so the encoder's outputs at real tokens, the pooled embedding and the
//! cross-attention do not change when padding is added (tested, to 1e-6).
//!
//! **The null prompt** is the all-[PAD] one (also `None`, and the empty string): it has no key
//! to attend to, so the cross-attention adds exactly 0 (its output is multiplied by "has a real
//! token") and the pooled embedding is 0. Classifier-free guidance trains it by dropping
//! prompts to it, as labels are dropped to the null label.
//!
//! **Zero start.** The cross-attention's output projection starts at zero, like the adaLN-Zero
//! gates of [`super::dit`]: a generator with text starts as the one without, and learns how
//! much to read.
//!
//! The attention here is composed of candle's ops and [`super::layers::softmax_last_dim`] (which
//! has a gradient); prompts are short (tens of tokens), so it is a small share of a step.

use candle_core::{DType, Tensor, D};
use serde_json::{json, Value};

use super::config::{positive, size, ConfigResult};
use super::init::{linear, Init, Linear, Params};
use super::layers::{softmax_last_dim, RmsNorm};
use super::ops::Activated;
use crate::Result;

/// The [PAD] id: padding and the null prompt.
pub const PAD: u32 = 0;

/// The score added to a [PAD] key before the softmax.
const MASKED: f64 = -1e9;

/// The text encoder's sizes: the `text` object of a generator's config.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    /// V, token ids 0..V (0 = [PAD]).
    pub vocab: usize,
    /// L_max, the longest prompt in tokens (the positional table's length).
    pub max_len: usize,
    /// Dt, the encoder's width.
    pub width: usize,
    /// Encoder blocks (0: embeddings alone).
    pub depth: usize,
    /// Attention heads, dividing the width.
    pub heads: usize,
}

impl TextConfig {
    /// The config fields: `vocab`, `max_len`, `width`, `depth`, `heads`.
    pub fn to_json(&self) -> Value {
        json!({
            "vocab": self.vocab,
            "max_len": self.max_len,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
        })
    }

    /// Reads the `text` object. Defaults: width 64, depth 2, 2 heads; `vocab` and `max_len` are
    /// required (they come from the captions' vocabulary).
    pub fn from_json(config: &Value) -> ConfigResult<TextConfig> {
        for key in ["vocab", "max_len"] {
            if config[key].is_null() {
                return Err(format!("the text config has no '{key}'"));
            }
        }
        let cfg = TextConfig {
            vocab: positive(config, "vocab", 0)?,
            max_len: positive(config, "max_len", 0)?,
            width: positive(config, "width", 64)?,
            depth: size(config, "depth", 2)?,
            heads: positive(config, "heads", 2)?,
        };
        if cfg.vocab < 2 {
            return Err(format!(
                "the text vocabulary needs [PAD] and a symbol, got vocab {}",
                cfg.vocab
            ));
        }
        if !cfg.width.is_multiple_of(cfg.heads) {
            return Err(format!(
                "{} text heads do not divide the text width {}",
                cfg.heads, cfg.width
            ));
        }
        Ok(cfg)
    }
}

/// Multi-head attention of queries q (N, Lq, D) over keys and values k, v (N, Lk, D), where
/// `keep` (N, Lk) is 1 for a real key and 0 for [PAD]: softmax(q k^T / sqrt(D / heads) + mask)
/// v per head, heads concatenated -> (N, Lq, D). A row of `keep` with no real key gives zeros.
pub fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    keep: &Tensor,
    heads: usize,
) -> candle_core::Result<Tensor> {
    let (n, lq, d) = q.dims3()?;
    let lk = k.dim(1)?;
    let dh = d / heads;
    let split = |x: &Tensor, l: usize| -> candle_core::Result<Tensor> {
        x.reshape((n, l, heads, dh))?.transpose(1, 2)?.contiguous() // (N, heads, L, dh)
    };
    let (q, k, v) = (split(q, lq)?, split(k, lk)?, split(v, lk)?);
    let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
    let keep = keep.to_dtype(q.dtype())?;
    let bias = keep.affine(-MASKED, MASKED)?.reshape((n, 1, 1, lk))?;
    let weights = softmax_last_dim(&scores.broadcast_add(&bias)?)?;
    let any = keep.max_keepdim(D::Minus1)?.reshape((n, 1, 1, 1))?;
    weights
        .matmul(&v)?
        .broadcast_mul(&any)?
        .transpose(1, 2)?
        .reshape((n, lq, d))
}

/// The 0/1 mask of real tokens of ids (N, L): (N, L) f32.
pub fn keep_mask(ids: &Tensor) -> candle_core::Result<Tensor> {
    ids.ne(PAD)?.to_dtype(DType::F32)
}

/// Token ids as (N, L) u32, from u32/u8/i64 ids of shape (N, L); checked against the vocabulary
/// and the positional table.
pub fn token_ids(raw: &Tensor, cfg: &TextConfig) -> candle_core::Result<Tensor> {
    let (n, l) = match *raw.dims() {
        [n, l] => (n, l),
        _ => candle_core::bail!("expected prompts as token ids (N, L), got {:?}", raw.dims()),
    };
    if l > cfg.max_len {
        candle_core::bail!(
            "prompts of {l} tokens exceed the model's {} (its positional table)",
            cfg.max_len
        );
    }
    let values: Vec<i64> = match raw.dtype() {
        DType::U32 | DType::U8 | DType::I64 => {
            raw.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?
        }
        other => candle_core::bail!("token ids must be integers, got {other:?}"),
    };
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v >= cfg.vocab as i64) {
        candle_core::bail!(
            "token id {bad} outside the model's vocabulary 0..{}",
            cfg.vocab - 1
        );
    }
    let ids: Vec<u32> = values.into_iter().map(|v| v as u32).collect();
    Tensor::from_vec(ids, (n, l), raw.device())
}

/// One pre-norm transformer block of the encoder, attention masked to real tokens.
#[derive(Clone)]
struct TextBlock {
    norm1: RmsNorm,
    qkv: Linear,
    proj: Linear,
    norm2: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl TextBlock {
    fn new(params: &Params, cfg: &TextConfig) -> Result<TextBlock> {
        let d = cfg.width;
        Ok(TextBlock {
            norm1: RmsNorm::new(params, "norm1", d)?,
            qkv: linear(params, "qkv", d, 3 * d)?,
            proj: linear(params, "proj", d, d)?,
            norm2: RmsNorm::new(params, "norm2", d)?,
            fc1: linear(params, "fc1", d, 4 * d)?,
            fc2: linear(params, "fc2", 4 * d, d)?,
            heads: cfg.heads,
        })
    }

    fn forward(&self, e: &Tensor, keep: &Tensor) -> candle_core::Result<Tensor> {
        let d = e.dim(D::Minus1)?;
        let qkv = self.qkv.forward(&self.norm1.forward(e)?)?;
        let (q, k, v) = (
            qkv.narrow(2, 0, d)?,
            qkv.narrow(2, d, d)?,
            qkv.narrow(2, 2 * d, d)?,
        );
        let a = masked_attention(&q, &k, &v, keep, self.heads)?;
        let e = (e + self.proj.forward(&a)?)?;
        let h = self
            .fc1
            .forward_act(&self.norm2.forward(&e)?, Activated::Silu)?;
        e + self.fc2.forward(&h)?
    }
}

/// What the encoder gives a generator: per-token outputs, their mask and the pooled embedding.
pub struct Encoded {
    /// (N, L, Dt).
    pub tokens: Tensor,
    /// (N, L), 1 for a real token.
    pub keep: Tensor,
    /// (N, Dt), the mean over real tokens (0 for the null prompt).
    pub pooled: Tensor,
}

/// The text encoder (see the module docs).
#[derive(Clone)]
pub struct TextEncoder {
    pub config: TextConfig,
    embed: Tensor,
    pos: Tensor,
    blocks: Vec<TextBlock>,
    norm: RmsNorm,
}

impl TextEncoder {
    /// Names under `params`: `embed`, `pos`, `blocks.<i>.{norm1,qkv,proj,norm2,fc1,fc2}`,
    /// `norm`.
    pub fn new(params: &Params, cfg: &TextConfig) -> Result<TextEncoder> {
        Ok(TextEncoder {
            embed: params.var("embed", &[cfg.vocab, cfg.width], Init::Normal { std: 0.02 })?,
            pos: params.var(
                "pos",
                &[1, cfg.max_len, cfg.width],
                Init::Normal { std: 0.02 },
            )?,
            blocks: (0..cfg.depth)
                .map(|i| TextBlock::new(&params.pp("blocks").pp(i.to_string()), cfg))
                .collect::<Result<_>>()?,
            norm: RmsNorm::new(params, "norm", cfg.width)?,
            config: cfg.clone(),
        })
    }

    /// ids (N, L) integers (L <= max_len), or `None`: the null prompt for `n` samples.
    pub fn forward(&self, ids: Option<&Tensor>, n: usize) -> candle_core::Result<Encoded> {
        let dev = self.embed.device();
        let ids = match ids {
            Some(ids) => token_ids(ids, &self.config)?.to_device(dev)?,
            None => Tensor::full(PAD, (n, 1), dev)?,
        };
        let (n, l) = ids.dims2()?;
        let keep = keep_mask(&ids)?.to_dtype(self.embed.dtype())?;
        let mut e = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, l, self.config.width))?
            .broadcast_add(&self.pos.narrow(1, 0, l)?)?;
        for block in &self.blocks {
            e = block.forward(&e, &keep)?;
        }
        let tokens = self.norm.forward(&e)?;
        let count = keep.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?; // (N, 1)
        let pooled = tokens
            .broadcast_mul(&keep.unsqueeze(2)?)?
            .sum(1)?
            .broadcast_div(&count)?;
        Ok(Encoded {
            tokens,
            keep,
            pooled,
        })
    }
}

/// Cross-attention from a generator's tokens (width D) to the encoder's (width Dt), added as a
/// residual; its output projection starts at zero.
#[derive(Clone)]
pub struct CrossAttention {
    norm: RmsNorm,
    q: Linear,
    kv: Linear,
    proj: Linear,
    heads: usize,
}

impl CrossAttention {
    /// Names under `params`: `q`, `kv`, `proj` (zero-initialised, no bias).
    pub fn new(params: &Params, width: usize, text_width: usize, heads: usize) -> Result<Self> {
        let p = params.pp("proj");
        Ok(CrossAttention {
            norm: RmsNorm::plain(),
            q: linear(params, "q", width, width)?,
            kv: linear(params, "kv", text_width, 2 * width)?,
            // No bias: the null prompt, whose attention output is 0, must add exactly 0.
            proj: Linear {
                weight: p.var("weight", &[width, width], Init::Zeros)?,
                bias: None,
            },
            heads,
        })
    }

    /// z (N, Lz, D) + proj(attention of RMSNorm(z) over the text) -> (N, Lz, D).
    pub fn forward(&self, z: &Tensor, text: &Encoded) -> candle_core::Result<Tensor> {
        let d = z.dim(D::Minus1)?;
        let kv = self.kv.forward(&text.tokens)?;
        let (k, v) = (kv.narrow(2, 0, d)?, kv.narrow(2, d, d)?);
        let q = self.q.forward(&self.norm.forward(z)?)?;
        let a = masked_attention(&q, &k, &v, &text.keep, self.heads)?;
        z + self.proj.forward(&a)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::{max_abs_diff, wobbly};
    use candle_core::{Device, Var};

    fn cfg() -> TextConfig {
        TextConfig {
            vocab: 7,
            max_len: 8,
            width: 8,
            depth: 2,
            heads: 2,
        }
    }

    /// Every parameter drawn at random (the zero-initialised projection included).
    fn randomise(params: &Params) {
        for (i, (_, var)) in params.vars().into_iter().enumerate() {
            var.set(&(wobbly(var.dims(), 100 + i as u64) * 0.5).unwrap())
                .unwrap();
        }
    }

    fn ids(rows: &[&[u32]]) -> Tensor {
        let l = rows[0].len();
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), l), &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_to_one_real_key_returns_its_value() {
        // softmax over one unmasked key is 1: every query gets that key's value, whatever q.
        let (q, k, v) = (
            wobbly(&[2, 3, 4], 1),
            wobbly(&[2, 5, 4], 2),
            wobbly(&[2, 5, 4], 3),
        );
        let keep = Tensor::new(
            &[[0f32, 0., 1., 0., 0.], [1., 0., 0., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let out = masked_attention(&q, &k, &v, &keep, 2).unwrap();
        for (row, key) in [(0, 2), (1, 0)] {
            let want = v
                .get(row)
                .unwrap()
                .get(key)
                .unwrap()
                .unsqueeze(0)
                .unwrap()
                .broadcast_as((3, 4))
                .unwrap();
            assert!(max_abs_diff(&out.get(row).unwrap(), &want) < 1e-6);
        }
    }

    #[test]
    fn cross_attention_to_a_single_token_is_a_linear_map_of_it() {
        // The closed form: with one real text token e, z + proj(W_v e + b_v) for every image
        // token, W_v the value half of kv.
        let params = Params::new(1, &Device::Cpu);
        let cross = CrossAttention::new(&params, 4, 6, 2).unwrap();
        randomise(&params);
        let tokens = wobbly(&[1, 3, 6], 4);
        let text = Encoded {
            tokens: tokens.clone(),
            keep: Tensor::new(&[[0f32, 1., 0.]], &Device::Cpu).unwrap(),
            pooled: wobbly(&[1, 6], 5),
        };
        let z = wobbly(&[1, 5, 4], 6);
        let out = cross.forward(&z, &text).unwrap();
        let e = tokens.get(0).unwrap().get(1).unwrap().unsqueeze(0).unwrap(); // (1, 6)
        let value = cross.kv.forward(&e).unwrap().narrow(1, 4, 4).unwrap();
        let want = z
            .broadcast_add(&cross.proj.forward(&value).unwrap())
            .unwrap();
        assert!(max_abs_diff(&out, &want) < 1e-5);
        // ... and a second real token changes it.
        let two = Encoded {
            keep: Tensor::new(&[[1f32, 1., 0.]], &Device::Cpu).unwrap(),
            ..text
        };
        assert!(max_abs_diff(&cross.forward(&z, &two).unwrap(), &want) > 1e-3);
    }

    #[test]
    fn padding_leaves_the_encoding_unchanged() {
        let params = Params::new(2, &Device::Cpu);
        let enc = TextEncoder::new(&params, &cfg()).unwrap();
        randomise(&params);
        let short = enc
            .forward(Some(&ids(&[&[3, 5, 2], &[4, 1, 0]])), 2)
            .unwrap();
        let long = enc
            .forward(Some(&ids(&[&[3, 5, 2, 0, 0, 0], &[4, 1, 0, 0, 0, 0]])), 2)
            .unwrap();
        let real = |e: &Encoded| e.tokens.narrow(1, 0, 2).unwrap();
        assert!(max_abs_diff(&real(&short), &real(&long)) < 1e-6);
        assert!(max_abs_diff(&short.pooled, &long.pooled) < 1e-6);
        // The pooled embedding is the mean of the real tokens' outputs.
        let want = long
            .tokens
            .get(1)
            .unwrap()
            .narrow(0, 0, 2)
            .unwrap()
            .mean(0)
            .unwrap();
        assert!(max_abs_diff(&long.pooled.get(1).unwrap(), &want) < 1e-6);
        // A cross-attention reading either gives the same result.
        let cross = CrossAttention::new(&params.pp("cross"), 4, 8, 2).unwrap();
        randomise(&params);
        let (short, long) = (
            enc.forward(Some(&ids(&[&[3, 5, 2], &[4, 1, 0]])), 2)
                .unwrap(),
            enc.forward(Some(&ids(&[&[3, 5, 2, 0, 0, 0], &[4, 1, 0, 0, 0, 0]])), 2)
                .unwrap(),
        );
        let z = wobbly(&[2, 5, 4], 7);
        let (a, b) = (
            cross.forward(&z, &short).unwrap(),
            cross.forward(&z, &long).unwrap(),
        );
        assert!(max_abs_diff(&a, &b) < 1e-6);
        assert!(max_abs_diff(&a, &z) > 1e-3, "the text is read");
    }

    #[test]
    fn the_null_prompt_adds_nothing() {
        let params = Params::new(3, &Device::Cpu);
        let enc = TextEncoder::new(&params, &cfg()).unwrap();
        let cross = CrossAttention::new(&params.pp("cross"), 4, 8, 2).unwrap();
        randomise(&params);
        let z = wobbly(&[2, 5, 4], 8);
        for null in [
            enc.forward(None, 2).unwrap(),
            enc.forward(Some(&ids(&[&[0, 0], &[0, 0]])), 2).unwrap(),
        ] {
            assert_eq!(max_abs_diff(&cross.forward(&z, &null).unwrap(), &z), 0.0);
            assert_eq!(
                null.pooled
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }

    #[test]
    fn masked_keys_get_no_gradient() {
        let q = Var::from_tensor(&wobbly(&[1, 3, 4], 9)).unwrap();
        let k = Var::from_tensor(&wobbly(&[1, 4, 4], 10)).unwrap();
        let v = Var::from_tensor(&wobbly(&[1, 4, 4], 11)).unwrap();
        let keep = Tensor::new(&[[1f32, 0., 1., 0.]], &Device::Cpu).unwrap();
        let out = masked_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &keep, 2).unwrap();
        let g = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&k, &v] {
            let grad: Vec<Vec<f32>> = g
                .get(var.as_tensor())
                .unwrap()
                .get(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            // Zero up to the softmax's denormals (its exp of -1e9 is ~1e-40, not 0).
            assert!(
                grad[1].iter().chain(&grad[3]).all(|&x| x.abs() < 1e-30),
                "{grad:?}"
            );
            assert!(grad[0].iter().any(|&x| x != 0.0));
        }
        assert!(g.get(q.as_tensor()).is_some());
    }

    #[test]
    fn ids_are_checked() {
        let params = Params::new(4, &Device::Cpu);
        let enc = TextEncoder::new(&params, &cfg()).unwrap();
        let err = |t: Tensor| enc.forward(Some(&t), 1).err().unwrap().to_string();
        assert!(err(ids(&[&[1, 7]])).contains("token id 7 outside"));
        assert!(err(ids(&[&[1; 9]])).contains("exceed the model's 8"));
        assert!(err(Tensor::new(&[1u32, 2], &Device::Cpu).unwrap()).contains("(N, L)"));
    }

    #[test]
    fn the_config_round_trips_and_is_checked() {
        let c = cfg();
        assert_eq!(TextConfig::from_json(&c.to_json()).unwrap(), c);
        let bad = |v: Value| TextConfig::from_json(&v).unwrap_err();
        assert!(bad(json!({"max_len": 4})).contains("'vocab'"));
        assert!(bad(json!({"vocab": 1, "max_len": 4})).contains("[PAD]"));
        assert!(bad(json!({"vocab": 5, "max_len": 4, "width": 6, "heads": 4})).contains("divide"));
    }
}
