//! Trained models as the fields the samplers integrate: the learned marginal vector field
//! u_t^theta(x) (flow matching, notes eq. 26) and the learned score s_t^theta(x) (score
//! matching, Theorem 22).
//!
//! A model file says what its network predicts (`"parametrisation"`: velocity, score, noise or
//! denoiser) and along which path it was trained (`"path"`). A [`LearnedVelocity`] or
//! [`LearnedScore`] turns any of these into what it is asked for with the path's conversions
//! (Proposition 1, Remark 16; see [`crate::paths`]): a noise predictor gives the score
//! -eps_theta / beta_t, a score model gives the velocity of Proposition 1, and so on. Conversions
//! need a Gaussian path: the linear interpolant from a data source has a velocity but no score.
//!
//! Both accept `velocity`, `score` and `checkpoint` files (a checkpoint's config holds the model's
//! under `"model"`), use the EMA weights when the file has them ([`Weights::Auto`]), check that x
//! has the model's data shape, and name the file in every error.

use anyhow::{anyhow, bail};
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::init::Weights;
use super::{build, build_from_file, time_column, FieldNet};
use crate::io::model::{self, ModelFile};
use crate::io::npy::shape_str;
use crate::paths::{GaussianPath, Param, Path};
use crate::Result;

/// The model kinds a learned field loads from.
pub const KINDS: [&str; 3] = ["velocity", "score", "checkpoint"];

/// A loaded network with what it predicts and along which path.
pub struct Learned {
    net: Box<dyn FieldNet>,
    /// What the network outputs.
    pub param: Param,
    pub path: Path,
    /// Whether p_init is N(0, I) (`"source": "gaussian"`) rather than a data set.
    pub gaussian_source: bool,
    /// The shape of one sample, e.g. [2].
    pub data_shape: Vec<usize>,
    /// The file, for error messages.
    pub name: String,
    /// The model's config (a checkpoint's `"model"`).
    pub config: Value,
}

impl Learned {
    /// Builds the network of a `velocity`, `score` or `checkpoint` model file.
    pub fn load(model: &ModelFile, weights: Weights, device: &Device) -> Result<Learned> {
        model.expect_kind(&KINDS)?;
        let name = model.name.clone();
        let config = match model.kind() {
            "checkpoint" => model.field("model")?.clone(),
            _ => model.config.clone(),
        };
        // Every problem of the file is collected and reported in one message, not one per try.
        let mut problems: Vec<String> = Vec::new();
        let mut field = |key: &str, valid: &str| -> Option<Value> {
            match config.get(key) {
                Some(v) if !v.is_null() => Some(v.clone()),
                _ => {
                    problems.push(format!("the model config has no '{key}' ({valid})"));
                    None
                }
            }
        };
        const PARAMS: &str = "velocity, score, noise or denoiser";
        let param_field = field("parametrisation", PARAMS);
        let path_field = field("path", "see docs/model-format.md");
        let shape_field = field("data_shape", "the shape of one sample");
        let param = param_field.and_then(|v| {
            let p = v.as_str().and_then(Param::parse);
            if p.is_none() {
                problems.push(format!("unknown parametrisation {v} ({PARAMS})"));
            }
            p
        });
        let kind = config["kind"].as_str().unwrap_or("unknown");
        let agree = match kind {
            "velocity" => &[Param::Velocity][..],
            "score" => &[Param::Score, Param::Noise, Param::Denoiser][..],
            _ => &[][..],
        };
        if let Some(p) = param.filter(|p| !agree.contains(p)) {
            let names: Vec<&str> = agree.iter().map(|p| p.name()).collect();
            problems.push(format!(
                "a {kind} model with parametrisation '{}' (a {kind} model predicts {})",
                p.name(),
                if names.is_empty() {
                    "nothing a field samples".to_string()
                } else {
                    names.join(" or ")
                }
            ));
        }
        let path = path_field.and_then(|v| Path::from_json(&v).map_err(|e| problems.push(e)).ok());
        let gaussian_source = config["source"].as_str().unwrap_or("gaussian") == "gaussian";
        let data_shape: Option<Vec<usize>> = shape_field.and_then(|v| {
            let shape = v
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect());
            if shape.is_none() {
                problems.push(format!("bad data_shape {v} (a list of sizes)"));
            }
            shape
        });
        let net = build_from_file(model, weights, device, &config, build, &mut problems)?;
        let (Some(net), Some(param), Some(path), Some(data_shape), true) =
            (net, param, path, data_shape, problems.is_empty())
        else {
            bail!("{name}: {}", problems.join("; "));
        };
        Ok(Learned {
            net,
            param,
            path,
            gaussian_source,
            data_shape,
            name,
            config,
        })
    }

    /// The network's raw output at x (N, ...data_shape), t (N,), (N, 1) or one value.
    pub fn predict(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.predict_labelled(x, t, None)
    }

    /// The raw output given class labels y (N,) u32 in 0..=num_classes (num_classes is the
    /// null label), or `None` for the null label on every row.
    pub fn predict_labelled(&self, x: &Tensor, t: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() == 0 || x.dims()[1..] != self.data_shape[..] {
            let mut want = vec!["N".to_string()];
            want.extend(self.data_shape.iter().map(|d| d.to_string()));
            bail!(
                "expected x of shape ({}) for the model {}, got {}",
                want.join(", "),
                self.name,
                shape_str(x.dims())
            );
        }
        let t = time_column(t, x.dim(0)?)?.to_dtype(x.dtype())?;
        // The weights are constants (`Params::frozen`): the output records a graph only when x
        // does, for a gradient with respect to x (a likelihood's divergence).
        Ok(self.net.forward(x, &t, y)?)
    }

    /// The std of the model's p_init N(0, std^2 I), where its samplers start: 1, or sigma_max
    /// of a VE path ([`crate::noise::config_init_std`]).
    pub fn init_std(&self) -> f64 {
        crate::noise::config_init_std(&self.config, &self.path)
    }

    /// The number of classes the network was trained on (0: unconditional).
    pub fn num_classes(&self) -> usize {
        self.net.num_classes()
    }

    /// The Gaussian path needed to convert between parametrisations.
    pub fn gaussian(&self, want: Param) -> Result<GaussianPath> {
        self.path.as_gaussian(self.gaussian_source).ok_or_else(|| {
            anyhow!(
                "{}: a {} model on the {} path from a data source cannot give a {}",
                self.name,
                self.param.name(),
                self.path.name(),
                want.name()
            )
        })
    }

    /// The prediction converted to `want` (velocity, score, noise or denoiser).
    pub fn predict_as(&self, want: Param, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.predict_as_labelled(want, x, t, None)
    }

    /// [`Self::predict_as`] given class labels y (N,) (see [`Self::predict_labelled`]).
    pub fn predict_as_labelled(
        &self,
        want: Param,
        x: &Tensor,
        t: &Tensor,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        let pred = self.predict_labelled(x, t, y)?;
        if want == self.param {
            return Ok(pred);
        }
        let path = self.gaussian(want)?;
        Ok(path.convert(self.param, want, &pred, x, t)?)
    }

    /// u_t^theta(x): x (N, ...data_shape), t (N,), (N, 1) or one value.
    pub fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.predict_as(Param::Velocity, x, t)
    }

    /// s_t^theta(x) = grad log p_t(x): x (N, ...data_shape), t (N,), (N, 1) or one value.
    pub fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.predict_as(Param::Score, x, t)
    }
}

/// A trained model as the vector field u_t^theta(x) of an ODE.
pub struct LearnedVelocity(pub Learned);

impl LearnedVelocity {
    /// From a loaded model file, with its EMA weights when it has them.
    pub fn load(model: &ModelFile, device: &Device) -> Result<Self> {
        Self::load_weights(model, Weights::Auto, device)
    }

    /// From a loaded model file, with the chosen weights.
    pub fn load_weights(model: &ModelFile, weights: Weights, device: &Device) -> Result<Self> {
        let l = Learned::load(model, weights, device)?;
        if l.param != Param::Velocity {
            l.gaussian(Param::Velocity)?;
        }
        Ok(LearnedVelocity(l))
    }

    /// Reads and loads the model file at `path` (`-` for stdin).
    pub fn open(path: &str, device: &Device) -> Result<Self> {
        Self::load(&model::load(path, device)?, device)
    }

    /// u_t^theta(x): x (N, ...data_shape), t (N,), (N, 1) or one value -> (N, ...data_shape).
    pub fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.0.velocity(x, t)
    }

    pub fn data_shape(&self) -> &[usize] {
        &self.0.data_shape
    }
}

/// A trained model as the score s_t^theta(x) of an SDE.
pub struct LearnedScore(pub Learned);

impl LearnedScore {
    /// From a loaded model file, with its EMA weights when it has them.
    pub fn load(model: &ModelFile, device: &Device) -> Result<Self> {
        Self::load_weights(model, Weights::Auto, device)
    }

    /// From a loaded model file, with the chosen weights.
    pub fn load_weights(model: &ModelFile, weights: Weights, device: &Device) -> Result<Self> {
        let l = Learned::load(model, weights, device)?;
        if l.param != Param::Score {
            l.gaussian(Param::Score)?;
        }
        Ok(LearnedScore(l))
    }

    /// Reads and loads the model file at `path` (`-` for stdin).
    pub fn open(path: &str, device: &Device) -> Result<Self> {
        Self::load(&model::load(path, device)?, device)
    }

    /// s_t^theta(x): x (N, ...data_shape), t (N,), (N, 1) or one value -> (N, ...data_shape).
    pub fn score(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.0.score(x, t)
    }

    pub fn data_shape(&self) -> &[usize] {
        &self.0.data_shape
    }
}

/// A model's prediction, converted to `want`, at the points `x` (N, ...data_shape: rows of a
/// 2D model, images of an image model) and one time `t`, given class labels `y` (one per point,
/// `num_classes` the null label) or none (all null): shaped like x. With `with_points`, rows
/// [x, prediction] (N, 2D) of a model on rows (what `render-grid --kind quiver` draws).
pub fn predict_points(
    model: &Learned,
    want: Param,
    x: &ndarray::ArrayD<f32>,
    y: Option<&[u32]>,
    t: f64,
    with_points: bool,
    device: &Device,
) -> Result<ndarray::ArrayD<f32>> {
    if with_points && x.ndim() != 2 {
        bail!(
            "points with their values (--with-points) need a model on rows (N, D); {} takes {}",
            model.name,
            shape_str(&model.data_shape)
        );
    }
    let xs = crate::device::to_tensor(x, device)?;
    let tt = Tensor::new(&[t as f32], device)?;
    let ys = y.map(|y| Tensor::new(y, device)).transpose()?;
    let pred = model.predict_as_labelled(want, &xs, &tt, ys.as_ref())?;
    let pred = crate::device::from_tensor(&pred)?;
    if !with_points {
        return Ok(pred);
    }
    Ok(ndarray::concatenate(
        ndarray::Axis(1),
        &[x.view(), pred.view()],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{MlpConfig, Params};
    use serde_json::json;

    fn model_file(param: &str, path: Value, source: &str) -> ModelFile {
        let cfg = MlpConfig {
            dim: 2,
            hidden: vec![8],
            activation: crate::nn::Activation::Silu,
            time_features: 0,
        };
        let mut config = cfg.to_json();
        config["kind"] = json!(if param == "velocity" {
            "velocity"
        } else {
            "score"
        });
        config["parametrisation"] = json!(param);
        config["path"] = path;
        config["source"] = json!(source);
        let params = Params::new(0, &Device::Cpu);
        build(&config, &params).unwrap();
        let bytes = model::encode(&config, &params.tensors()).unwrap();
        model::decode(&bytes, "m.safetensors", &Device::Cpu).unwrap()
    }

    #[test]
    fn noise_model_gives_score_minus_eps_over_beta() {
        let m = model_file(
            "noise",
            Path::Gaussian(GaussianPath::SQRT).to_json(),
            "gaussian",
        );
        let s = LearnedScore::load(&m, &Device::Cpu).unwrap();
        let x = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.1]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[0.19f32, 0.75], &Device::Cpu).unwrap();
        let eps: Vec<Vec<f32>> = s.0.predict(&x, &t).unwrap().to_vec2().unwrap();
        let score: Vec<Vec<f32>> = s.score(&x, &t).unwrap().to_vec2().unwrap();
        for (i, beta) in [0.9f32, 0.5].into_iter().enumerate() {
            for j in 0..2 {
                assert!((score[i][j] + eps[i][j] / beta).abs() < 1e-5);
            }
        }
        let err = s
            .score(
                &Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
                &t,
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "expected x of shape (N, 2) for the model m.safetensors, got (2, 3)"
        );
    }

    #[test]
    fn data_to_data_interpolant_has_no_score() {
        let m = model_file("velocity", Path::LinearInterpolant.to_json(), "data");
        assert!(LearnedVelocity::load(&m, &Device::Cpu).is_ok());
        let err = LearnedScore::load(&m, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("score"),
            "{err}"
        );
        let g = model_file("velocity", Path::LinearInterpolant.to_json(), "gaussian");
        assert!(LearnedScore::load(&g, &Device::Cpu).is_ok());
    }
}
