//! The sizes and options of a VAE ([`VaeConfig`]) and their JSON form in a model file's config.

use serde_json::{json, Value};

use crate::nn::config::{groups, image_shape, positive, size, sizes, ConfigResult};

/// How the encoder's posterior variance is parametrised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogvarMode {
    /// A conv head: one log-variance per latent element.
    PerElement,
    /// One learned scalar shared by every element and image (the lab's).
    Scalar,
}

impl LogvarMode {
    pub fn name(self) -> &'static str {
        match self {
            LogvarMode::PerElement => "per-element",
            LogvarMode::Scalar => "scalar",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [LogvarMode::PerElement, LogvarMode::Scalar]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// Whether the decoder's variance sigma_dec^2 is learned or fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderVariance {
    /// A learned scalar log-variance, started at log(decoder_std^2).
    Learned,
    /// sigma_dec = decoder_std throughout.
    Fixed,
}

impl DecoderVariance {
    pub fn name(self) -> &'static str {
        match self {
            DecoderVariance::Learned => "learned",
            DecoderVariance::Fixed => "fixed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [DecoderVariance::Learned, DecoderVariance::Fixed]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// The sizes of a [`Vae`](super::Vae), as stored in a model file's config.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// [C, H, W] of one image.
    pub data_shape: [usize; 3],
    /// Channels per level; len - 1 stride-2 downsamplings.
    pub channels: Vec<usize>,
    /// Residual blocks per level (encoder and decoder alike).
    pub blocks_per_level: usize,
    /// k, the latent channels.
    pub latent_channels: usize,
    /// Self-attention in the middle of encoder and decoder.
    pub attention: bool,
    /// GroupNorm groups; divides every channel count.
    pub groups: usize,
    pub logvar: LogvarMode,
    pub decoder_variance: DecoderVariance,
    /// sigma_dec when fixed; its starting value when learned.
    pub decoder_std: f64,
    /// Latents on the wire are scale_factor * z (1 until training has measured it).
    pub scale_factor: f64,
}

impl VaeConfig {
    /// Defaults for images of `data_shape`: channels [32, 64, 64] (32x32 -> 8x8), one block per
    /// level, 4 latent channels, no attention, per-element log-variance, learned decoder variance
    /// started at sigma = 0.1 (pixels in [-1, 1]; Adam moves its log by about lr per step).
    pub fn default_for(data_shape: [usize; 3]) -> VaeConfig {
        VaeConfig {
            data_shape,
            channels: vec![32, 64, 64],
            blocks_per_level: 1,
            latent_channels: 4,
            attention: false,
            groups: 8,
            logvar: LogvarMode::PerElement,
            decoder_variance: DecoderVariance::Learned,
            decoder_std: 0.1,
            scale_factor: 1.0,
        }
    }

    /// The spatial sizes at each level: sizes[0] = (H, W), then halved rounding up.
    pub fn level_sizes(&self) -> Vec<(usize, usize)> {
        let [_, h, w] = self.data_shape;
        let mut s = vec![(h, w)];
        for _ in 1..self.channels.len() {
            let (a, b) = *s.last().unwrap();
            s.push((a.div_ceil(2), b.div_ceil(2)));
        }
        s
    }

    /// [k, h, w] of one latent.
    pub fn latent_shape(&self) -> [usize; 3] {
        let (h, w) = *self.level_sizes().last().unwrap();
        [self.latent_channels, h, w]
    }

    /// The config fields: `arch` ("vae"), `data_shape`, `latent_shape` (derived, for readers),
    /// `channels`, `blocks_per_level`, `latent_channels`, `attention`, `groups`, `logvar`
    /// ("per-element" | "scalar"), `decoder_variance` ("learned" | "fixed"), `decoder_std`,
    /// `scale_factor`.
    pub fn to_json(&self) -> Value {
        json!({
            "arch": "vae",
            "data_shape": self.data_shape,
            "latent_shape": self.latent_shape(),
            "channels": self.channels,
            "blocks_per_level": self.blocks_per_level,
            "latent_channels": self.latent_channels,
            "attention": self.attention,
            "groups": self.groups,
            "logvar": self.logvar.name(),
            "decoder_variance": self.decoder_variance.name(),
            "decoder_std": self.decoder_std,
            "scale_factor": self.scale_factor,
        })
    }

    /// Reads a config; absent keys take [`VaeConfig::default_for`]'s values, but `groups` is
    /// required (the tensors cannot tell it).
    pub fn from_json(config: &Value) -> ConfigResult<VaeConfig> {
        let d = VaeConfig::default_for(image_shape(config, "vae")?);
        let channels = sizes(config, "channels")?.unwrap_or(d.channels.clone());
        let groups = groups(config, "vae", &channels)?;
        let text = |key: &str, default: &'static str| match &config[key] {
            Value::Null => Ok(default.to_string()),
            Value::String(s) => Ok(s.clone()),
            v => Err(format!("'{key}' must be a string, found {v}")),
        };
        let number = |key: &str, default: f64| match &config[key] {
            Value::Null => Ok(default),
            v => v
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or_else(|| format!("'{key}' must be a positive number, found {v}")),
        };
        let logvar = text("logvar", "per-element")?;
        let dec = text("decoder_variance", "learned")?;
        let cfg = VaeConfig {
            data_shape: d.data_shape,
            channels,
            blocks_per_level: size(config, "blocks_per_level", d.blocks_per_level)?,
            latent_channels: positive(config, "latent_channels", d.latent_channels)?,
            attention: config["attention"].as_bool().unwrap_or(false),
            groups,
            logvar: LogvarMode::parse(&logvar).ok_or_else(|| {
                format!("'logvar' must be \"per-element\" or \"scalar\", found \"{logvar}\"")
            })?,
            decoder_variance: DecoderVariance::parse(&dec).ok_or_else(|| {
                format!("'decoder_variance' must be \"learned\" or \"fixed\", found \"{dec}\"")
            })?,
            decoder_std: number("decoder_std", d.decoder_std)?,
            scale_factor: number("scale_factor", d.scale_factor)?,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks that the sizes go together (channels positive, groups divide them).
    pub fn check(&self) -> ConfigResult<()> {
        if self.channels.is_empty() || self.channels.contains(&0) {
            return Err(format!(
                "vae channels must be positive, found {:?}",
                self.channels
            ));
        }
        if let Some(c) = self.channels.iter().find(|&&c| c % self.groups != 0) {
            return Err(format!(
                "{} GroupNorm groups do not divide {c} channels",
                self.groups
            ));
        }
        if self.latent_channels == 0 {
            return Err("latent_channels must be positive".into());
        }
        Ok(())
    }
}

/// The largest of 8, 4, 2, 1 dividing every channel count.
pub fn default_groups(channels: &[usize]) -> usize {
    [8, 4, 2, 1]
        .into_iter()
        .find(|g| channels.iter().all(|c| c % g == 0))
        .unwrap_or(1)
}
