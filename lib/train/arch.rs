//! Which network a training run fits, from the trainer's flags: the Lab 2 MLP on points, the
//! conditional MLP on labelled points, and Lab 3's U-Net and DiT on images (notes section 5.2;
//! the architectures live in [`crate::nn`]).
//!
//! The result is the architecture's JSON config (`arch`, `data_shape`, sizes, `num_classes`),
//! the part of a model file's config that rebuilds the network ([`crate::nn::build`]). On
//! resume the checkpoint's config wins and [`given`] lists the flags to compare against it.

use crate::cli::{at_least_1, positive_number};
use serde_json::{json, Value};

use crate::nn::{Activation, CmlpConfig, DitConfig, MlpConfig, UNetConfig};
use crate::{usage_bail, Result};

/// The `--arch` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchArg {
    /// MLP on points (N, D) (Lab 2); unconditional
    Mlp,
    /// MLP with a label embedding, on labelled points (N, D)
    Cmlp,
    /// U-Net on images (N, C, H, W)
    Unet,
    /// Diffusion transformer on images (N, C, H, W)
    Dit,
}

impl ArchArg {
    pub fn name(self) -> &'static str {
        match self {
            ArchArg::Mlp => "mlp",
            ArchArg::Cmlp => "cmlp",
            ArchArg::Unet => "unet",
            ArchArg::Dit => "dit",
        }
    }
}

/// Default hidden widths of the MLP.
pub const DEFAULT_HIDDEN: [usize; 4] = [64, 64, 64, 64];

/// The architecture flags (all optional: defaults depend on the data, and a resumed run keeps
/// its checkpoint's).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NetFlags {
    /// Network [default: mlp for points, cmlp for labelled points, unet for images]
    #[arg(long, value_enum)]
    pub arch: Option<ArchArg>,
    /// U-Net channels per level, comma separated; each level after the first halves the
    /// resolution [default: 32,64,128]
    #[arg(long, value_delimiter = ',', value_name = "C,C,...")]
    pub channels: Option<Vec<usize>>,
    /// U-Net residual layers per level [default: 2]
    #[arg(long, value_name = "B")]
    pub blocks: Option<usize>,
    /// DiT patch size, dividing H and W [default: 2]
    #[arg(long, value_name = "P", value_parser = at_least_1::<usize>)]
    pub patch: Option<usize>,
    /// DiT token width [default: 256]
    #[arg(long, value_name = "D", value_parser = at_least_1::<usize>)]
    pub width: Option<usize>,
    /// DiT transformer blocks [default: 6]
    #[arg(long, value_name = "L")]
    pub depth: Option<usize>,
    /// DiT attention heads, dividing the width [default: 4]
    #[arg(long, value_name = "H", value_parser = at_least_1::<usize>)]
    pub heads: Option<usize>,
    /// DiT time scale S of the sinusoidal time features cos/sin(S t omega_k), omega_k <= 1
    /// [default: 1000; 1 with --objective meanflow]
    #[arg(long, value_name = "S", value_parser = positive_number)]
    pub time_scale: Option<f64>,
    /// MLP hidden layer widths, comma separated [default: 64,64,64,64]
    #[arg(long, value_delimiter = ',', value_name = "W,W,...")]
    pub hidden: Option<Vec<usize>>,
    /// MLP: K Fourier features sin/cos(2 pi k t), k = 1..K, appended to [x, t] [default: 0]
    #[arg(long, value_name = "K")]
    pub time_features: Option<usize>,
}

/// Every architecture flag that was given: (flag, config key, value, the architectures it
/// applies to).
pub fn given(n: &NetFlags) -> Vec<(&'static str, &'static str, Value, &'static [ArchArg])> {
    use ArchArg::*;
    let mut v = Vec::new();
    let mut add = |flag, key, val: Option<Value>, archs: &'static [ArchArg]| {
        if let Some(val) = val {
            v.push((flag, key, val, archs));
        }
    };
    add(
        "--arch",
        "arch",
        n.arch.map(|a| json!(a.name())),
        &[Mlp, Cmlp, Unet, Dit],
    );
    add(
        "--hidden",
        "hidden",
        n.hidden.as_ref().map(|h| json!(h)),
        &[Mlp, Cmlp],
    );
    add(
        "--time-features",
        "time_features",
        n.time_features.map(|k| json!(k)),
        &[Mlp, Cmlp],
    );
    add(
        "--channels",
        "channels",
        n.channels.as_ref().map(|c| json!(c)),
        &[Unet],
    );
    add(
        "--blocks",
        "blocks_per_level",
        n.blocks.map(|b| json!(b)),
        &[Unet],
    );
    add("--patch", "patch_size", n.patch.map(|p| json!(p)), &[Dit]);
    add("--width", "width", n.width.map(|w| json!(w)), &[Dit]);
    add("--depth", "depth", n.depth.map(|d| json!(d)), &[Dit]);
    add("--heads", "heads", n.heads.map(|h| json!(h)), &[Dit]);
    add(
        "--time-scale",
        "time_scale",
        n.time_scale.map(|s| json!(s)),
        &[Dit],
    );
    v
}

/// Usage errors in the architecture flags alone: zero sizes.
pub fn check_flags(n: &NetFlags) -> Result<()> {
    if let Some(c) = &n.channels {
        if c.is_empty() || c.contains(&0) {
            usage_bail!("--channels must list positive channel counts, got {c:?}");
        }
    }
    Ok(())
}

/// The architecture config of a fresh run on `n` samples of `shape` from `data` (a file name,
/// for errors) with `num_classes` classes (0: no labels).
pub fn fresh_config(
    f: &NetFlags,
    n: usize,
    shape: &[usize],
    num_classes: usize,
    data: &str,
) -> Result<Value> {
    let arch = match (f.arch, shape.len()) {
        (Some(a), _) => a,
        (None, 1) if num_classes > 0 => ArchArg::Cmlp,
        (None, 1) => ArchArg::Mlp,
        (None, _) => ArchArg::Unet,
    };
    if let Some((flag, ..)) = given(f).iter().find(|g| !g.3.contains(&arch)) {
        usage_bail!("{flag} does not apply to --arch {}", arch.name());
    }
    let points = |what: &str| -> Result<usize> {
        match shape {
            [d] => Ok(*d),
            _ => anyhow::bail!(
                "the {what} takes points (N, D), got {} in {data}: use --arch unet or dit for \
                 images",
                full_shape(n, shape)
            ),
        }
    };
    let image = || -> Result<[usize; 3]> {
        match shape {
            [c, h, w] => Ok([*c, *h, *w]),
            _ => anyhow::bail!(
                "the {} takes images (N, C, H, W), got {} in {data}",
                arch.name(),
                full_shape(n, shape)
            ),
        }
    };
    let mlp = |dim| MlpConfig {
        dim,
        hidden: f.hidden.clone().unwrap_or(DEFAULT_HIDDEN.to_vec()),
        activation: Activation::Silu,
        time_features: f.time_features.unwrap_or(0),
    };
    let config = match arch {
        ArchArg::Mlp if num_classes > 0 => {
            usage_bail!("the mlp is unconditional: with --labels use --arch cmlp, unet or dit")
        }
        ArchArg::Mlp => mlp(points("mlp")?).to_json(),
        ArchArg::Cmlp if num_classes == 0 => {
            usage_bail!("--arch cmlp is conditional: give --labels")
        }
        ArchArg::Cmlp => CmlpConfig {
            mlp: mlp(points("cmlp")?),
            num_classes,
            label_embed_dim: 16,
        }
        .to_json(),
        ArchArg::Unet => {
            let mut c = UNetConfig::lab(image()?, num_classes);
            if let Some(ch) = &f.channels {
                c.channels = ch.clone();
            }
            c.blocks_per_level = f.blocks.unwrap_or(c.blocks_per_level);
            c.groups = [8, 4, 2, 1]
                .into_iter()
                .find(|g| c.channels.iter().all(|ch| ch % g == 0))
                .unwrap_or(1);
            let v = c.to_json();
            UNetConfig::from_json(&v).map_err(|e| crate::UsageError(e.to_string()))?;
            v
        }
        ArchArg::Dit => {
            let n = f;
            let v = DitConfig {
                data_shape: image()?,
                patch_size: n.patch.unwrap_or(2),
                width: n.width.unwrap_or(256),
                depth: n.depth.unwrap_or(6),
                heads: n.heads.unwrap_or(4),
                num_classes,
                mlp_ratio: 4,
                time_features: 256,
                time_scale: n.time_scale.unwrap_or(crate::nn::embed::DEFAULT_TIME_SCALE),
                // SiLU: as good here and much cheaper on CPU than exact (erf) GELU.
                activation: crate::nn::dit::FfActivation::Silu,
                text: None,
            }
            .to_json();
            DitConfig::from_json(&v).map_err(|e| crate::UsageError(e.to_string()))?;
            v
        }
    };
    Ok(config)
}

/// The shape of one sample an architecture config was built for.
pub fn data_shape(config: &Value) -> Option<Vec<usize>> {
    config["data_shape"]
        .as_array()?
        .iter()
        .map(|v| v.as_u64().map(|u| u as usize))
        .collect()
}

/// The number of classes of an architecture config (0: unconditional).
pub fn num_classes(config: &Value) -> usize {
    config["num_classes"].as_u64().unwrap_or(0) as usize
}

/// `(n, 1, 8, 8)` for n samples of shape [1, 8, 8].
fn full_shape(n: usize, shape: &[usize]) -> String {
    crate::io::npy::shape_str(&[&[n][..], shape].concat())
}
