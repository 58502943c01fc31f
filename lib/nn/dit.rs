//! The diffusion transformer (DiT, Peebles & Xie 2023) of Lab 3 (2026; notes section 5.2): a
//! conditional vector field u_t^theta(x | y) on images or latents x (N, C, H, W).
//!
//! ```text
//! tokens  z = patchify(x) + P          conv with kernel = stride = p: (N, L = HW/p^2, D),
//!                                      P learned positional embeddings (1, L, D)
//! cond    c = TimeMlp(t) + E(y)        sinusoidal features -> Linear -> SiLU -> Linear, plus
//!                                      a label embedding with a null row
//! block   (s1, a1, g1, s2, a2, g2) = Linear(SiLU(c))          zero-initialised (adaLN-Zero)
//!         z = z + g1 * Attn(RMSNorm(z) (1 + a1) + s1)
//!         z = z + g2 * FF(RMSNorm(z) (1 + a2) + s2)           FF: D -> 4D -> act -> D
//!                                      (act: the config's `activation`, required: exact
//!                                      GELU or SiLU, ~1.6x cheaper per element on the CPU)
//! final   (s, a) = Linear(SiLU(c)) (zero-initialised); h = RMSNorm(z) (1 + a) + s
//!         h -> Linear -> act -> Linear to p p C per token -> rearranged to (N, H, W, C)
//!         -> conv3x3 (smooths the seams between patches)
//! ```
//! Attention is multi-head with one fused QKV projection: softmax(q k^T / sqrt(d_head)) v per
//! head, then an output projection. Because every modulation is zero at initialisation, each
//! block starts as the identity (its gates g are 0), which is what makes deep DiTs train stably.
//! Normalisations and the softmax are our own ([`super::layers`]), which have gradients.

use candle_core::Tensor;
use serde_json::{json, Value};

use super::config::{image_shape, positive, size, ConfigResult};
use super::embed::{label_ids, LabelEmbedding, TimeMlp};
use super::init::{linear, Init, Linear, Params};
use super::layers::{
    gelu, self_attention, to_channels_first, Conv2d, GatherCache, Geometry, RmsNorm,
};
use super::ops::{gated_residual, norm_modulate, silu, Activated};
use super::text::{CrossAttention, Encoded, TextConfig, TextEncoder};

/// The feed-forward nonlinearity of a [`Dit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfActivation {
    /// Exact GELU, x Phi(x) (erf form).
    Gelu,
    Silu,
}

impl FfActivation {
    pub fn name(self) -> &'static str {
        match self {
            FfActivation::Gelu => "gelu",
            FfActivation::Silu => "silu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FfActivation::Gelu, FfActivation::Silu]
            .into_iter()
            .find(|a| a.name() == s)
    }

    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FfActivation::Gelu => gelu(x),
            FfActivation::Silu => silu(x),
        }
    }

    /// act(layer(x)) as one fused op where one serves.
    pub fn after(self, layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        let act = match self {
            FfActivation::Gelu => Activated::Gelu,
            FfActivation::Silu => Activated::Silu,
        };
        layer.forward_act(x, act)
    }
}
use super::{time_column, FieldNet};
use crate::Result;

/// The sizes of a [`Dit`], as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    /// [C, H, W] of one sample; p must divide H and W.
    pub data_shape: [usize; 3],
    pub patch_size: usize,
    /// D, the token width.
    pub width: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; must divide the width.
    pub heads: usize,
    /// Classes 0..num_classes, plus the null label num_classes; 0: unconditional.
    pub num_classes: usize,
    /// Hidden width of the feed-forward layers, in multiples of D.
    pub mlp_ratio: usize,
    /// Sinusoidal features of t fed to the time MLP.
    pub time_features: usize,
    /// Their time scale S: features cos/sin(S t omega_k), omega_k <= 1 ([`super::embed`]).
    pub time_scale: f64,
    /// The nonlinearity of the feed-forward layers and of the final MLP.
    pub activation: FfActivation,
    /// Conditioning on a prompt: a text encoder of these sizes, read by cross-attention in
    /// every block ([`super::text`]); replaces the labels (`num_classes` must be 0).
    pub text: Option<TextConfig>,
}

impl DitConfig {
    /// The config fields: `arch` ("dit"), `data_shape`, `patch_size`, `width`, `depth`,
    /// `heads`, `num_classes`, `mlp_ratio`, `time_features`, `time_scale`, `activation`
    /// ("gelu" | "silu"), and `text` when it reads prompts.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "arch": "dit",
            "data_shape": self.data_shape,
            "patch_size": self.patch_size,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
            "num_classes": self.num_classes,
            "mlp_ratio": self.mlp_ratio,
            "time_features": self.time_features,
            "time_scale": self.time_scale,
            "activation": self.activation.name(),
        });
        if let Some(text) = &self.text {
            v["text"] = text.to_json();
        }
        v
    }

    /// Reads a config. Defaults: patch 2, width 256, depth 6, 4 heads, unconditional, mlp_ratio
    /// 4, 256 time features of time scale 1000 (files written before the key existed have
    /// that scale); `activation` has none (required).
    pub fn from_json(config: &Value) -> ConfigResult<DitConfig> {
        let data_shape = image_shape(config, "dit")?;
        let cfg = DitConfig {
            data_shape,
            patch_size: positive(config, "patch_size", 2)?,
            width: positive(config, "width", 256)?,
            depth: size(config, "depth", 6)?,
            heads: positive(config, "heads", 4)?,
            num_classes: size(config, "num_classes", 0)?,
            mlp_ratio: positive(config, "mlp_ratio", 4)?,
            time_features: positive(config, "time_features", 256)?,
            time_scale: match &config["time_scale"] {
                Value::Null => super::embed::DEFAULT_TIME_SCALE,
                v => v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| format!("dit time_scale must be a positive number, got {v}"))?,
            },
            // Required: GELU and SiLU networks have the same tensors, so a default would load
            // a file written with the other one without a word.
            activation: match &config["activation"] {
                Value::Null => {
                    return Err(
                        "the dit config has no 'activation' (gelu or silu; its tensors cannot \
                         tell which)"
                            .into(),
                    )
                }
                v => v
                    .as_str()
                    .and_then(FfActivation::parse)
                    .ok_or_else(|| format!("unknown dit activation {v} (gelu or silu)"))?,
            },
            text: match &config["text"] {
                Value::Null => None,
                v => Some(TextConfig::from_json(v)?),
            },
        };
        if cfg.text.is_some() && cfg.num_classes > 0 {
            return Err(format!(
                "a dit reads prompts or labels, not both: it has a text encoder and num_classes {}",
                cfg.num_classes
            ));
        }
        let [_, h, w] = data_shape;
        if h % cfg.patch_size != 0 || w % cfg.patch_size != 0 {
            return Err(format!(
                "patch size {} does not divide the image size {h}x{w}",
                cfg.patch_size
            ));
        }
        if !cfg.width.is_multiple_of(cfg.heads) {
            return Err(format!(
                "{} heads do not divide the width {}",
                cfg.heads, cfg.width
            ));
        }
        Ok(cfg)
    }

    /// L, the number of tokens.
    pub fn tokens(&self) -> usize {
        let [_, h, w] = self.data_shape;
        (h / self.patch_size) * (w / self.patch_size)
    }
}

/// A linear layer with zero weights and bias (adaLN-Zero modulations).
fn zero_linear(params: &Params, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
    let p = params.pp(name);
    Ok(Linear {
        weight: p.var("weight", &[d_out, d_in], Init::Zeros)?,
        bias: Some(p.var("bias", &[d_out], Init::Zeros)?),
    })
}

/// Multi-head self-attention with a fused QKV projection.
#[derive(Clone)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    /// Names under `params`: `qkv`, `proj`.
    pub fn new(params: &Params, width: usize, heads: usize) -> Result<Attention> {
        Ok(Attention {
            qkv: linear(params, "qkv", width, 3 * width)?,
            proj: linear(params, "proj", width, width)?,
            heads,
        })
    }

    /// x: (N, L, D) -> (N, L, D).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.proj
            .forward(&self_attention(&self.qkv.forward(x)?, self.heads)?)
    }
}

/// A DiT block with adaLN-Zero conditioning.
#[derive(Clone)]
pub struct DitBlock {
    modulation: Linear,
    attn: Attention,
    /// Reads the prompt, after the self-attention (text models only).
    cross: Option<CrossAttention>,
    fc1: Linear,
    fc2: Linear,
    norm: RmsNorm,
    activation: FfActivation,
}

impl DitBlock {
    /// Names under `params`: `modulation`, `qkv`, `proj`, `fc1`, `fc2`, and
    /// `cross.{q,kv,proj}` with text.
    pub fn new(cfg: &DitConfig, params: &Params) -> Result<DitBlock> {
        let d = cfg.width;
        Ok(DitBlock {
            modulation: zero_linear(params, "modulation", d, 6 * d)?,
            attn: Attention::new(params, d, cfg.heads)?,
            cross: match &cfg.text {
                Some(t) => Some(CrossAttention::new(
                    &params.pp("cross"),
                    d,
                    t.width,
                    cfg.heads,
                )?),
                None => None,
            },
            fc1: linear(params, "fc1", d, cfg.mlp_ratio * d)?,
            fc2: linear(params, "fc2", cfg.mlp_ratio * d, d)?,
            norm: RmsNorm::plain(),
            activation: cfg.activation,
        })
    }

    /// z: (N, L, D), c_act = SiLU(c): (N, D), the encoded prompt with text -> (N, L, D).
    pub fn forward(
        &self,
        z: &Tensor,
        c_act: &Tensor,
        text: Option<&Encoded>,
    ) -> candle_core::Result<Tensor> {
        // Six vectors (N, D) side by side: shift, scale, gate of the attention, then of the MLP.
        let m = self.modulation.forward(c_act)?;
        let h = norm_modulate(z, &m, 0, self.norm.eps)?;
        let mut z = gated_residual(z, &self.attn.forward(&h)?, &m, 2)?;
        if let (Some(cross), Some(text)) = (&self.cross, text) {
            z = cross.forward(&z, text)?;
        }
        let h = norm_modulate(&z, &m, 3, self.norm.eps)?;
        let ff = self.fc2.forward(&self.activation.after(&self.fc1, &h)?)?;
        gated_residual(&z, &ff, &m, 5)
    }
}

/// The Lab 3 diffusion transformer (see the module docs).
#[derive(Clone)]
pub struct Dit {
    pub config: DitConfig,
    patchify: Conv2d,
    pos_embed: Tensor,
    time_embed: TimeMlp,
    label_embed: Option<LabelEmbedding>,
    /// The prompt's encoder and the pooled embedding's map into the conditioning (text only).
    text: Option<(TextEncoder, Linear)>,
    blocks: Vec<DitBlock>,
    final_modulation: Linear,
    final_fc1: Linear,
    final_fc2: Linear,
    final_conv: Conv2d,
    norm: RmsNorm,
}

impl Dit {
    /// Builds the layers from `params`. Names: `patchify`, `pos_embed`, `time_embed.{0,1}`,
    /// `label_embed`, `blocks.<i>.{modulation,qkv,proj,fc1,fc2}`,
    /// `final.{modulation,fc1,fc2}`, `final_conv`; with text also `text.*` (the encoder),
    /// `text_pool` and `blocks.<i>.cross.{q,kv,proj}`.
    pub fn new(cfg: &DitConfig, params: &Params) -> Result<Dit> {
        let cache = GatherCache::default();
        let [c, _, _] = cfg.data_shape;
        let (p, d) = (cfg.patch_size, cfg.width);
        let patch = Geometry {
            kernel: p,
            stride: p,
            padding: 0,
            upsample: 1,
        };
        let fin = params.pp("final");
        Ok(Dit {
            patchify: Conv2d::new(params, "patchify", c, d, patch, &cache)?,
            pos_embed: params.var(
                "pos_embed",
                &[1, cfg.tokens(), d],
                Init::Normal { std: 0.02 },
            )?,
            time_embed: TimeMlp::new(params, "time_embed", cfg.time_features, cfg.time_scale, d)?,
            label_embed: match cfg.num_classes {
                0 => None,
                k => Some(LabelEmbedding::new(params, "label_embed", k, d)?),
            },
            text: match &cfg.text {
                Some(t) => Some((
                    TextEncoder::new(&params.pp("text"), t)?,
                    linear(params, "text_pool", t.width, d)?,
                )),
                None => None,
            },
            blocks: (0..cfg.depth)
                .map(|i| DitBlock::new(cfg, &params.pp("blocks").pp(i.to_string())))
                .collect::<Result<_>>()?,
            final_modulation: zero_linear(&fin, "modulation", d, 2 * d)?,
            final_fc1: linear(&fin, "fc1", d, d)?,
            final_fc2: linear(&fin, "fc2", d, p * p * c)?,
            final_conv: Conv2d::new(params, "final_conv", c, c, Geometry::SAME3, &cache)?,
            norm: RmsNorm::plain(),
            config: cfg.clone(),
        })
    }

    /// The blocks, for tests and inspection.
    pub fn blocks(&self) -> &[DitBlock] {
        &self.blocks
    }
}

impl FieldNet for Dit {
    /// x: (N, C, H, W) of the configured size, t: (N, 1), y: (N,) or None -> (N, C, H, W).
    fn forward(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let [c, h, w] = cfg.data_shape;
        let (n, p) = (x.dim(0)?, cfg.patch_size);
        if x.dims() != [n, c, h, w] {
            candle_core::bail!(
                "the dit expects x of shape (N, {c}, {h}, {w}), got {:?}",
                x.dims()
            );
        }
        let mut cond = self.time_embed.forward(&time_column(t, n)?)?;
        let mut prompt = None;
        match (&self.label_embed, &self.text) {
            (Some(e), _) => cond = (cond + e.forward(y, n)?)?,
            (None, Some((encoder, pool))) => {
                // y holds the prompts' token ids (N, L); None is the null prompt.
                let encoded = encoder.forward(y, n)?;
                cond = (cond + pool.forward(&encoded.pooled)?)?;
                prompt = Some(encoded);
            }
            (None, None) => {
                label_ids(y, n, 0, x.device())?;
            }
        }
        let c_act = silu(&cond)?;
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let mut z = self
            .patchify
            .forward(&x, None)?
            .reshape((n, cfg.tokens(), cfg.width))?
            .broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            z = block.forward(&z, &c_act, prompt.as_ref())?;
        }
        let m = self.final_modulation.forward(&c_act)?; // shift, scale
        let z = norm_modulate(&z, &m, 0, self.norm.eps)?;
        let patches = self
            .final_fc2
            .forward(&cfg.activation.after(&self.final_fc1, &z)?)?; // (N, L, p p C)
        let img = patches
            .reshape((n, h / p, w / p, p, p, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((n, h, w, c))?;
        to_channels_first(&self.final_conv.forward(&img, None)?)
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::layers::tests::{max_abs_diff, wobbly};
    use crate::nn::testing::{every_parameter_moves, loss_falls, times};
    use candle_core::Device;

    fn tiny(data_shape: [usize; 3], patch_size: usize, num_classes: usize) -> DitConfig {
        DitConfig {
            data_shape,
            patch_size,
            width: 16,
            depth: 2,
            heads: 2,
            num_classes,
            mlp_ratio: 4,
            time_features: 8,
            time_scale: 1000.0,
            activation: FfActivation::Gelu,
            text: None,
        }
    }

    fn labels(v: &[u32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn output_has_the_input_shape() {
        for (shape, patch) in [
            ([1, 28, 28], 4),
            ([1, 32, 32], 4),
            ([4, 8, 8], 1),
            ([4, 8, 8], 2),
            ([3, 6, 4], 2),
        ] {
            let p = Params::new(0, &Device::Cpu);
            let net = Dit::new(&tiny(shape, patch, 10), &p).unwrap();
            for n in [1, 3] {
                let x = wobbly(&[n, shape[0], shape[1], shape[2]], 1);
                let y = labels(&[3, 10, 0][..n]);
                let out = net.forward(&x, &times(n), Some(&y)).unwrap();
                assert_eq!(out.dims(), x.dims(), "{shape:?} patch {patch}, batch {n}");
            }
            let wrong = wobbly(&[1, shape[0], shape[1] + patch, shape[2]], 1);
            assert!(net.forward(&wrong, &times(1), None).is_err());
        }
    }

    #[test]
    fn adaln_zero_blocks_are_the_identity_at_init() {
        let p = Params::new(1, &Device::Cpu);
        let net = Dit::new(&tiny([4, 8, 8], 2, 3), &p).unwrap();
        let z = wobbly(&[3, 16, 16], 2);
        let c = wobbly(&[3, 16], 3);
        for block in net.blocks() {
            assert_eq!(max_abs_diff(&block.forward(&z, &c, None).unwrap(), &z), 0.0);
        }
        // The attention and feed-forward inside are not trivial: with the gates opened the
        // block changes its input.
        let mut open = net.blocks()[0].clone();
        open.modulation.bias =
            Some(Tensor::ones(96, candle_core::DType::F32, &Device::Cpu).unwrap());
        assert!(max_abs_diff(&open.forward(&z, &c, None).unwrap(), &z) > 1e-3);
    }

    #[test]
    fn attention_rows_mix_tokens_with_softmax_weights() {
        // One head, identity projections: out_i = sum_j softmax_j(x_i . x_j / sqrt d) x_j.
        let p = Params::new(0, &Device::Cpu);
        let mut a = Attention::new(&p, 2, 1).unwrap();
        let eye = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu).unwrap();
        a.qkv.weight = Tensor::cat(&[&eye, &eye, &eye], 0).unwrap();
        a.qkv.bias = None;
        a.proj.weight = eye;
        a.proj.bias = None;
        let x = Tensor::new(&[[[1f32, 0.], [0., 2.]]], &Device::Cpu).unwrap();
        let out: Vec<Vec<f32>> = a.forward(&x).unwrap().get(0).unwrap().to_vec2().unwrap();
        let s = 1.0 / 2f32.sqrt();
        // Row 0: scores (1, 0) s; row 1: scores (0, 4) s.
        let w0 = 1.0 / (1.0 + (-s).exp());
        let w1 = 1.0 / (1.0 + (-4.0 * s).exp());
        let want = [[w0, 2.0 * (1.0 - w0)], [1.0 - w1, 2.0 * w1]];
        for i in 0..2 {
            for j in 0..2 {
                assert!((out[i][j] - want[i][j]).abs() < 1e-5, "{out:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn every_parameter_moves_within_two_steps_and_labels_then_matter() {
        // At init the zero modulations stop the gradient to the blocks' inner layers and to the
        // conditioning; after one step the gates are open, so two steps move everything.
        let p = Params::new(2, &Device::Cpu);
        let net = Dit::new(&tiny([1, 8, 8], 2, 3), &p).unwrap();
        let x = wobbly(&[4, 1, 8, 8], 4);
        let y = labels(&[0, 1, 2, 3]);
        let t = times(2);
        let x2 = x.narrow(0, 0, 2).unwrap();
        let at_init = [
            net.forward(&x2, &t, None).unwrap(),
            net.forward(&x2, &t, Some(&labels(&[0, 1]))).unwrap(),
        ];
        assert_eq!(max_abs_diff(&at_init[0], &at_init[1]), 0.0);
        // The keys' bias adds q . b_k to every logit of a query's row, which the softmax
        // ignores: its gradient is zero in exact arithmetic (rows 16..32 of qkv.bias, width 16).
        let keys = [("blocks.0.qkv.bias", 16..32), ("blocks.1.qkv.bias", 16..32)];
        every_parameter_moves(&net, &p, &x, Some(&y), 2, &keys);
        let null = net.forward(&x2, &t, None).unwrap();
        let real = net.forward(&x2, &t, Some(&labels(&[0, 1]))).unwrap();
        assert!(max_abs_diff(&null, &real) > 1e-5);
    }

    #[test]
    fn a_dit_reads_prompts_and_padding_and_the_null_prompt_behave() {
        let text = TextConfig {
            vocab: 6,
            max_len: 5,
            width: 8,
            depth: 1,
            heads: 2,
        };
        let cfg = DitConfig {
            text: Some(text),
            ..tiny([1, 8, 8], 2, 0)
        };
        assert_eq!(DitConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let mut both = cfg.to_json();
        both["num_classes"] = json!(3);
        assert!(DitConfig::from_json(&both)
            .unwrap_err()
            .contains("not both"));

        let p = Params::new(5, &Device::Cpu);
        let net = Dit::new(&cfg, &p).unwrap();
        let x = wobbly(&[4, 1, 8, 8], 4);
        let ids = |rows: &[[u32; 5]], l: usize| {
            let flat: Vec<u32> = rows.iter().flat_map(|r| r[..l].to_vec()).collect();
            Tensor::from_vec(flat, (rows.len(), l), &Device::Cpu).unwrap()
        };
        let rows = [[1, 2, 0, 0, 0], [3, 0, 0, 0, 0], [4, 5, 1, 0, 0], [0; 5]];
        // Exempt, zero in exact arithmetic: the [PAD] embedding (masked everywhere) and the
        // keys' biases, which add a constant to each query's scores (width 16, text width 8).
        let keys = [
            ("text.embed", 0..1),
            ("text.blocks.0.qkv.bias", 8..16),
            ("blocks.0.qkv.bias", 16..32),
            ("blocks.1.qkv.bias", 16..32),
            ("blocks.0.cross.kv.bias", 0..16),
            ("blocks.1.cross.kv.bias", 0..16),
        ];
        // The cross-attention's projection opened by hand (it starts at zero, which would
        // keep the gradients of its q and kv below f32 resolution for several steps).
        for (i, (name, var)) in p.vars().into_iter().enumerate() {
            if name.ends_with("cross.proj.weight") {
                var.set(&wobbly(var.dims(), 50 + i as u64)).unwrap();
            }
        }
        every_parameter_moves(&net, &p, &x, Some(&ids(&rows, 3)), 3, &keys);

        let t = times(4);
        let short = net.forward(&x, &t, Some(&ids(&rows, 3))).unwrap();
        let padded = net.forward(&x, &t, Some(&ids(&rows, 5))).unwrap();
        assert!(max_abs_diff(&short, &padded) < 1e-5);
        let null = net.forward(&x, &t, None).unwrap();
        let all_pad = net.forward(&x, &t, Some(&ids(&[[0; 5]; 4], 2))).unwrap();
        assert_eq!(max_abs_diff(&null, &all_pad), 0.0);
        // The last prompt is the null one; the others are read.
        let row = |a: &Tensor, i| a.narrow(0, i, 1).unwrap();
        assert!(max_abs_diff(&row(&short, 3), &row(&null, 3)) < 1e-6);
        for i in 0..3 {
            assert!(
                max_abs_diff(&row(&short, i), &row(&null, i)) > 1e-4,
                "prompt {i}"
            );
        }
    }

    #[test]
    fn loss_falls_on_a_tiny_fixed_batch() {
        let p = Params::new(3, &Device::Cpu);
        let cfg = DitConfig {
            activation: FfActivation::Silu, // the GELU path is trained in the test above
            ..tiny([1, 8, 8], 2, 3)
        };
        let net = Dit::new(&cfg, &p).unwrap();
        let x = wobbly(&[8, 1, 8, 8], 5);
        let y = labels(&[0, 1, 2, 3, 0, 1, 2, 3]);
        loss_falls(&net, &p, &x, Some(&y), 80, 0.2);
    }

    #[test]
    fn config_round_trips_validates_and_rebuilds() {
        let cfg = tiny([4, 8, 8], 2, 10);
        assert_eq!(DitConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        let mut bad = cfg.to_json();
        bad["patch_size"] = json!(3);
        assert!(DitConfig::from_json(&bad)
            .unwrap_err()
            .contains("does not divide"));
        bad["patch_size"] = json!(2);
        bad["heads"] = json!(3);
        assert!(DitConfig::from_json(&bad).unwrap_err().contains("heads"));
        bad["heads"] = json!(2);
        bad["activation"] = json!("relu");
        assert!(DitConfig::from_json(&bad)
            .unwrap_err()
            .contains("activation"));
        let silu = DitConfig {
            activation: FfActivation::Silu,
            ..cfg.clone()
        };
        assert_eq!(DitConfig::from_json(&silu.to_json()).unwrap(), silu);
        let p = Params::new(4, &Device::Cpu);
        let net = Dit::new(&cfg, &p).unwrap();
        let loaded = Params::from_tensors(p.tensors().into_iter().collect(), "", "m", &Device::Cpu);
        let rebuilt = crate::nn::build(&cfg.to_json(), &loaded).unwrap();
        let x = wobbly(&[2, 4, 8, 8], 6);
        let y = labels(&[1, 10]);
        let a = net.forward(&x, &times(2), Some(&y)).unwrap();
        let b = rebuilt.forward(&x, &times(2), Some(&y)).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0);
        assert_eq!(p.count(), loaded.count());
    }
}
