//! p_init: the simple distribution every flow starts from at t = 0 (notes section 1).
//!
//! Isotropic Gaussian N(0, std^2 I), the course's choice, or uniform on a box. Sample i is
//! drawn from its own stream (seed, Noise, i), so any split of a batch gives the same samples.
//! A trained model's p_init is its path's ([`model_p_init`]): N(0, I), or N(0, sigma_max^2 I)
//! for the variance-exploding path, whose alpha_0 = 1 leaves p_0 as wide as its noise.

use anyhow::bail;
use ndarray::ArrayD;

use crate::io::model::ModelFile;
use crate::io::npy;
use crate::paths::Path;
use crate::rng::{self, Purpose};
use crate::Result;

/// A source distribution p_init (the name of the notes; `discrete::paths::Noise` is its
/// counterpart on tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PInit {
    /// N(0, std^2 I)
    Gaussian { std: f32 },
    /// U[low, high)^d
    Uniform { low: f32, high: f32 },
}

/// The p_init a model's samplers start from, N(0, std^2 I) with std from its path
/// ([`Path::init_std`]), and the shape of one sample. `model` is any file whose config (or a
/// checkpoint's `"model"`) names a `path` and a `data_shape`: a trained, distilled or
/// checkpointed field. A model that starts from a data set (`"source"`) has no noise to draw.
pub fn model_p_init(model: &ModelFile) -> Result<(PInit, Vec<usize>)> {
    let name = &model.name;
    let config = match model.kind() {
        "checkpoint" => model.field("model")?,
        _ => &model.config,
    };
    let Some(path) = config.get("path").filter(|v| !v.is_null()) else {
        bail!(
            "{name}: a {} model has no probability path, so no p_init",
            model.kind()
        );
    };
    let path = Path::from_json(path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    match config["source"].as_str() {
        None | Some("gaussian") | Some("reflow-coupling") => {}
        Some(src) => bail!("{name}: the model starts from the data set {src}, not from noise"),
    }
    let shape: Option<Vec<usize>> = config["data_shape"].as_array().and_then(|a| {
        a.iter()
            .map(|v| v.as_u64().filter(|&d| d > 0).map(|d| d as usize))
            .collect()
    });
    match shape {
        Some(shape) if !shape.is_empty() => Ok((
            PInit::Gaussian {
                std: config_init_std(config, &path) as f32,
            },
            shape,
        )),
        _ => bail!(
            "{name}: bad or missing data_shape {} (a list of sizes)",
            config["data_shape"]
        ),
    }
}

/// The std of a model's p_init from its config: `"init_std"` where a model records it (a
/// reflow student of a VE teacher: its x_0 is the teacher's), else its path's.
pub fn config_init_std(config: &serde_json::Value, path: &Path) -> f64 {
    config["init_std"].as_f64().unwrap_or(path.init_std())
}

/// `n` samples of `shape` from `noise`, samples `first..first + n` of the seed's sequence.
pub fn sample(
    noise: &PInit,
    n: usize,
    shape: &[usize],
    seed: u64,
    first: u64,
) -> Result<ArrayD<f32>> {
    let dim: usize = shape.iter().product();
    let data = match *noise {
        PInit::Gaussian { std } => {
            let mut d = rng::normal_rows(seed, Purpose::Noise, first, n, dim);
            d.iter_mut().for_each(|v| *v *= std);
            d
        }
        PInit::Uniform { low, high } => {
            rng::uniform_rows(seed, Purpose::Noise, first, n, dim, low, high)
        }
    };
    let mut full = vec![n];
    full.extend_from_slice(shape);
    npy::from_vec(&full, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_std_and_prefix_property() {
        let big = sample(&PInit::Gaussian { std: 2.0 }, 5000, &[2], 4, 0).unwrap();
        let small = sample(&PInit::Gaussian { std: 2.0 }, 10, &[2], 4, 0).unwrap();
        assert_eq!(big.as_slice().unwrap()[..20], small.as_slice().unwrap()[..]);
        let var = big.iter().map(|v| v * v).sum::<f32>() / big.len() as f32;
        assert!((var - 4.0).abs() < 0.25, "var {var}");
    }

    /// A VE model starts from N(0, 50^2 I), any other from N(0, I), with the model's shape; a
    /// model without a path, or from a data set, is refused by name.
    #[test]
    fn a_model_names_its_p_init() {
        use crate::paths::GaussianPath;
        use serde_json::json;
        let file = |config: serde_json::Value| ModelFile {
            config,
            tensors: Default::default(),
            name: "m.safetensors".into(),
        };
        let ve = Path::Gaussian(GaussianPath::VE).to_json();
        let m = file(json!({"kind": "velocity", "path": ve, "data_shape": [1, 4, 4]}));
        assert_eq!(
            model_p_init(&m).unwrap(),
            (PInit::Gaussian { std: 50.0 }, vec![1, 4, 4])
        );
        let ck = file(json!({"kind": "checkpoint",
            "model": {"kind": "score", "path": "condot", "data_shape": [2]}}));
        assert_eq!(
            model_p_init(&ck).unwrap(),
            (PInit::Gaussian { std: 1.0 }, vec![2])
        );
        for (bad, why) in [
            (
                json!({"kind": "vae", "data_shape": [2]}),
                "no probability path",
            ),
            (
                json!({"kind": "velocity", "path": "linear-interp", "source": "a.npy",
                       "data_shape": [2]}),
                "from the data set a.npy",
            ),
            (json!({"kind": "velocity", "path": "ve"}), "data_shape"),
        ] {
            let err = format!("{:#}", model_p_init(&file(bad)).unwrap_err());
            assert!(err.contains(why) && err.contains("m.safetensors"), "{err}");
        }
    }

    #[test]
    fn uniform_bounds() {
        let x = sample(
            &PInit::Uniform {
                low: -1.0,
                high: 3.0,
            },
            1000,
            &[3],
            0,
            0,
        )
        .unwrap();
        assert!(x.iter().all(|&v| (-1.0..3.0).contains(&v)));
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        assert!((mean - 1.0).abs() < 0.1, "mean {mean}");
    }
}
