//! Vector fields and SDEs: what the solvers integrate (notes section 2).
//!
//! An ODE is dX_t = u_t(X_t) dt (notes eq. 1); an SDE adds noise, dX_t = u_t(X_t) dt +
//! σ_t dW_t (notes eq. 6). A [`Field`] gives the drift u_t(x) on a batch of candle tensors
//! (so learned fields run on any device) and the diffusion coefficient σ_t (0 for an ODE).
//!
//! Analytic fields of Lab 1:
//! - `brownian` (mu, sigma): u = mu (a constant drift on every coordinate), σ = sigma;
//!   with mu = 0 this is Brownian motion scaled by sigma (notes section 2.1).
//! - `ou` (theta, sigma): the Ornstein-Uhlenbeck process u = -theta x, σ = sigma (notes
//!   Example 7); its stationary law is N(0, sigma²/(2 theta)).
//! - `linear` (theta): the ODE u = -theta x, whose solution x_0 e^{-theta t} the convergence
//!   tests measure against.
//! - `langevin` (sigma, density): u = (sigma²/2) ∇ log p(x), σ = sigma (notes eq. 11); p is
//!   its stationary law. For a Gaussian p it is an OU process (notes Remark 20).
//!
//! Learned fields ([`learned`]): `learned:model=PATH[,sigma=S][,schedule=beta][,score=PATH]`,
//! or a model file given directly (its ODE).
//!
//! [`from_spec`] turns a spec (shorthand `name:key=val,...`, JSON, or a model file recognised
//! by its magic bytes) into a field; model files are dispatched on their kind in one place,
//! [`from_model`], where learned and guided fields plug in.

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use ndarray::ArrayD;
use serde_json::{Map, Value};

use crate::densities::{self, Density};
use crate::io::{self, model, npy, Format};
use crate::spec::{self, Keys};
use crate::Result;

pub mod gaussian;
pub mod guided;
pub mod learned;
pub use gaussian::GaussianTarget;
pub use guided::{ClassifierTerm, GuidedField, LabelledVelocity};
pub use learned::{LearnedField, Sigma};

/// The spec forms a field accepts, for `--help` texts.
pub const SPEC_HELP: &str = "\
Field specs: `brownian:sigma=1,mu=0` (dX = mu dt + sigma dW), `ou:theta=1,sigma=1` \
(dX = -theta X dt + sigma dW), `linear:theta=1` (the ODE dX = -theta X dt), \
`langevin:sigma=1,density=SPEC` (dX = sigma^2/2 grad log p(X) dt + sigma dW; `density=` must \
come last and takes the rest of the text, or use --density); the values shown are the \
defaults. `gaussian-target:mean=0;0,std=1,path=condot,sigma=0` is the exact marginal field \
(and SDE) from p_init (N(0, I); N(0, 50^2 I) for path=ve) to N(mean, std^2 I), a closed form to test samplers. Learned: a model file (the ODE of its velocity), or \
`learned:model=M.safetensors,sigma=0,schedule=const,score=S.safetensors` for the SDE \
dX = [u + sigma_t^2/2 s] dt + sigma_t dW (Theorem 17; sigma_t = sigma, or sigma * beta_t with \
schedule=beta; the score from S, or converted from the velocity model when score is absent). Or JSON, inline or in a file: {\"field\": \"ou\", \"theta\": 0.25, \"sigma\": 0.5}, \
with \"density\" a spec string or object; or a .safetensors model file; or a guided field \
written by `guide`: {\"field\": \"guided\", \"model\": \"m.safetensors\", \"scale\": 3, \
\"labels\": [0, 1], \"sigma\": 0} (classifier-free guidance), with \"classifier\": \
\"c.safetensors\", \"classifier_scale\": 2 for classifier guidance (u + w_c c_t grad log p(y | x_t, t); \
\"scale\" then optional: without it the base is the model's unconditional field).";

/// A vector field u_t(x) with a diffusion coefficient σ_t: dX_t = u_t(X_t) dt + σ_t dW_t.
pub trait Field {
    /// The drift u_t(x) at time `t` of a batch `x` (N, ...) -> (N, ...), same dtype and device.
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor>;
    /// σ_t; 0 for an ODE.
    fn diffusion(&self, t: f64) -> f64;
    /// A short description for logs, e.g. `ou(theta=0.25, sigma=0.5)`.
    fn describe(&self) -> String;
    /// The shape of one sample the field expects (e.g. `[2]`), or `None` for any shape.
    fn sample_shape(&self) -> Option<Vec<usize>>;
    /// The field as seen by samples `start..start + len` (indices into the whole run, as
    /// `--first` counts them), for fields that differ per sample, such as a guided field with
    /// one class label per sample. Solvers run a batch in row chunks and ask each chunk's field
    /// here, so per-sample data stays aligned with the rows of X_0 however the batch is split.
    /// `None` (the default): the same field for every sample.
    fn rows(&self, _start: u64, _len: usize) -> Result<Option<Box<dyn Field + '_>>> {
        Ok(None)
    }
    /// Whether candle's autograd through [`Field::drift`] gives the drift's exact Jacobian in x
    /// (a likelihood's divergence needs it). A drift that holds an inner gradient as a constant,
    /// as classifier guidance does with its classifier's, says false.
    fn differentiable(&self) -> bool {
        true
    }
    /// The Gaussian path the field's velocity belongs to, for samplers that read the posterior
    /// means through it (DDIM); `None` (the default) for other fields.
    fn gaussian_path(&self) -> Option<crate::paths::GaussianPath> {
        None
    }
}

/// The drift of the SDE of notes Theorem 17, u_t(x) + sigma_t²/2 s_t(x), which keeps the
/// marginals p_t of the flow u for every sigma_t >= 0: `u` (N, ...) the velocity at x, `score`
/// giving s_t(x) like it, evaluated only when sigma > 0 (the drift is u itself at sigma = 0).
/// The one place this drift is formed ([`GaussianTarget`], [`LearnedField`] and the guided
/// field call it).
pub fn sde_drift(
    u: &Tensor,
    sigma: f64,
    score: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    if sigma == 0.0 {
        return Ok(u.clone());
    }
    u + score()?.affine(sigma * sigma / 2.0, 0.0)?
}

/// dX = mu dt + sigma dW.
#[derive(Clone, Copy, Debug)]
pub struct Brownian {
    pub mu: f64,
    pub sigma: f64,
}

impl Field for Brownian {
    fn drift(&self, x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
        x.zeros_like()?.affine(1.0, self.mu)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        self.sigma
    }
    fn describe(&self) -> String {
        format!("brownian(mu={}, sigma={})", self.mu, self.sigma)
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
}

/// Ornstein-Uhlenbeck: dX = -theta X dt + sigma dW.
#[derive(Clone, Copy, Debug)]
pub struct Ou {
    pub theta: f64,
    pub sigma: f64,
}

impl Field for Ou {
    fn drift(&self, x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
        x.affine(-self.theta, 0.0)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        self.sigma
    }
    fn describe(&self) -> String {
        format!("ou(theta={}, sigma={})", self.theta, self.sigma)
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
}

/// The linear ODE dX = -theta X dt, solved by x_0 e^{-theta t}.
#[derive(Clone, Copy, Debug)]
pub struct LinearOde {
    pub theta: f64,
}

impl Field for LinearOde {
    fn drift(&self, x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
        x.affine(-self.theta, 0.0)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        0.0
    }
    fn describe(&self) -> String {
        format!("linear(theta={})", self.theta)
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        None
    }
}

/// Langevin dynamics dX = (sigma²/2) ∇ log p(X) dt + sigma dW, whose stationary law is p.
pub struct Langevin {
    pub sigma: f64,
    pub density: Box<dyn Density>,
}

impl Field for Langevin {
    fn drift(&self, x: &Tensor, _t: f64) -> candle_core::Result<Tensor> {
        densities::score_tensor(self.density.as_ref(), x)?
            .affine(0.5 * self.sigma * self.sigma, 0.0)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        self.sigma
    }
    fn describe(&self) -> String {
        format!(
            "langevin(sigma={}, {})",
            self.sigma,
            self.density.describe()
        )
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.density.dim()])
    }
}

/// Checks initial states `x` (N, ...) from `name` for `field`: N >= 1, every value finite, and
/// the per-sample shape the field expects, e.g. `expected initial states for langevin(...)
/// (N, 2), got (16, 3) in x0.npy`.
pub fn check_states(field: &dyn Field, x: &ArrayD<f32>, name: &str) -> Result<()> {
    if x.ndim() == 0 || x.shape()[0] == 0 {
        bail!(
            "expected initial states (N, ...) with N >= 1, got {} in {name}",
            npy::shape_str(x.shape())
        );
    }
    npy::expect_finite(x, name)?;
    if let Some(shape) = field.sample_shape() {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let what = format!("initial states for {}", field.describe());
        npy::expect_shape(x.shape(), &format!("N,{}", dims.join(",")), &what, name)?;
    }
    Ok(())
}

/// What a field spec may add besides its own text (flags of the tool that loads it).
#[derive(Clone, Debug, Default)]
pub struct FieldOptions {
    /// A density spec for `langevin` given apart from the field spec (`--density`).
    pub density: Option<String>,
}

/// The analytic field names [`from_json`] knows.
pub const KINDS: &[&str] = &[
    "brownian",
    "ou",
    "linear",
    "langevin",
    "learned",
    "gaussian-target",
    "guided",
];

/// Builds a field from a spec: shorthand, inline JSON, a JSON file, or a `.safetensors` model
/// file (told apart by magic bytes). Errors in a spec typed on the command line are usage
/// errors (exit 2); errors in a file are input errors (exit 1).
pub fn from_spec(spec: &str, device: &Device) -> Result<Box<dyn Field>> {
    from_spec_with(spec, &FieldOptions::default(), device)
}

/// [`from_spec`] with the tool's extra options (e.g. `--density`).
pub fn from_spec_with(spec: &str, opts: &FieldOptions, device: &Device) -> Result<Box<dyn Field>> {
    if spec::is_file(spec) {
        let bytes = io::read_bytes(spec)?;
        if io::sniff(&bytes) == Format::Safetensors {
            let m = model::decode(&bytes, spec, device)?;
            return from_model(m, opts, device);
        }
    }
    let built = spec::load_object(spec, "field", Some("density")).and_then(|obj| {
        if !spec::is_file(spec) && !spec.trim_start().starts_with('{') {
            let name = spec::kind(&obj, "field")?;
            if !KINDS.contains(&name) {
                bail!(
                    "unknown field '{name}' (known: {}; or the path of a JSON spec or model \
                     file, and no file {spec} exists)",
                    KINDS.join(", ")
                );
            }
        }
        from_json(&obj, opts, device)
    });
    spec::blame(spec, built).with_context(|| format!("field spec '{spec}'"))
}

/// The one place a model file becomes a field, by its kind. Learned velocity/score models and
/// guided fields plug in here.
pub fn from_model(
    m: model::ModelFile,
    _opts: &FieldOptions,
    device: &Device,
) -> Result<Box<dyn Field>> {
    match m.kind() {
        "velocity" | "score" | "checkpoint" => Ok(Box::new(LearnedField::ode(&m, device)?)),
        kind @ ("flowmap" | "consistency") => bail!(
            "{}: model kind {kind} is a few-step student, not a field: sample it with \
             sample-fewstep --model {} --steps K",
            m.name,
            m.name
        ),
        kind => bail!(
            "{}: model kind {kind} is not supported as a field (expected velocity, score or \
             checkpoint)",
            m.name
        ),
    }
}

/// `{"field": "learned", "model": PATH, "sigma": S, "schedule": "const"|"beta", "score": PATH}`.
fn learned_from_json(k: &mut Keys, device: &Device) -> Result<Box<dyn Field>> {
    let path = match k.raw("model") {
        Some(Value::String(s)) => s.clone(),
        _ => bail!("field learned needs model=PATH (a .safetensors velocity model)"),
    };
    let c = k.num("sigma", Some(0.0))?;
    if !(c >= 0.0 && c.is_finite()) {
        bail!("field learned: sigma must be >= 0, got {c}");
    }
    let sigma = match k.raw("schedule") {
        None => Sigma::Constant(c),
        Some(Value::String(s)) if s == "const" || s == "constant" => Sigma::Constant(c),
        Some(Value::String(s)) if s == "beta" => Sigma::Beta(c),
        Some(v) => bail!("field learned: schedule must be const or beta, got {v}"),
    };
    let score = match k.raw("score") {
        None => None,
        Some(Value::String(s)) => Some(learned::open_model(s, device)?),
        Some(v) => bail!("field learned: score must be a path, got {v}"),
    };
    let m = learned::open_model(&path, device)?;
    Ok(Box::new(LearnedField::sde(
        &m,
        sigma,
        score.as_ref(),
        device,
    )?))
}

/// Builds an analytic field from a spec object `{"field": name, ...}`.
pub fn from_json(
    obj: &Map<String, Value>,
    opts: &FieldOptions,
    device: &Device,
) -> Result<Box<dyn Field>> {
    let name = spec::kind(obj, "field")?;
    let mut k = Keys::new(obj, format!("field {name}"), "field");
    let sigma = |k: &mut Keys| -> Result<f64> {
        let s = k.num("sigma", Some(1.0))?;
        if s < 0.0 {
            bail!("field {name}: sigma must be >= 0, got {s}");
        }
        Ok(s)
    };
    let field: Box<dyn Field> = match name {
        "brownian" => Box::new(Brownian {
            mu: k.num("mu", Some(0.0))?,
            sigma: sigma(&mut k)?,
        }),
        "ou" => Box::new(Ou {
            theta: k.num("theta", Some(1.0))?,
            sigma: sigma(&mut k)?,
        }),
        "linear" => Box::new(LinearOde {
            theta: k.num("theta", Some(1.0))?,
        }),
        "learned" => learned_from_json(&mut k, device)?,
        "gaussian-target" => {
            let path_name = match k.raw("path") {
                None => "condot".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => bail!("field gaussian-target: path must be a name, got {v}"),
            };
            let path = match crate::paths::Path::from_cli(&path_name) {
                Some(crate::paths::Path::Gaussian(g)) => g,
                _ => bail!("field gaussian-target: path must be condot, sqrt, cosine, vp or ve"),
            };
            let mean = k.list("mean")?.unwrap_or_else(|| vec![0.0, 0.0]);
            let std = k.num("std", Some(1.0))?;
            if std.is_nan() || std <= 0.0 {
                bail!("field gaussian-target: std must be > 0, got {std}");
            }
            let sigma = k.num("sigma", Some(0.0))?;
            if sigma < 0.0 {
                bail!("field gaussian-target: sigma must be >= 0, got {sigma}");
            }
            Box::new(GaussianTarget {
                mean,
                std,
                path,
                sigma,
            })
        }
        "langevin" => {
            let sigma = sigma(&mut k)?;
            let density = match (k.raw("density"), &opts.density) {
                (Some(_), Some(_)) => {
                    bail!(
                        "field langevin: give its density in the spec or with --density, \
                         not both"
                    )
                }
                (None, None) => bail!(
                    "field langevin needs a density: `langevin:sigma=S,density=SPEC` or \
                     --density SPEC"
                ),
                (Some(Value::Object(o)), None) => densities::from_json(o)?,
                (Some(Value::String(s)), None) => densities::from_spec(s)?,
                (Some(v), None) => bail!("field langevin: 'density' must be a spec, got {v}"),
                (None, Some(s)) => densities::from_spec(s)?,
            };
            Box::new(Langevin { sigma, density })
        }
        // Classifier-free guidance of a conditional model (keys in crate::guidance).
        "guided" => Box::new(guided::from_keys(&mut k, device)?),
        other => bail!("unknown field '{other}' (known: {})", KINDS.join(", ")),
    };
    k.finish()?;
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift_of(f: &dyn Field, x: &[f32]) -> Vec<f32> {
        let t = Tensor::new(x, &Device::Cpu)
            .unwrap()
            .reshape((x.len(), 1))
            .unwrap();
        f.drift(&t, 0.3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn analytic_drifts() {
        let cpu = Device::Cpu;
        let ou = from_spec("ou:theta=0.25,sigma=0.5", &cpu).unwrap();
        assert_eq!(drift_of(ou.as_ref(), &[4.0, -2.0]), vec![-1.0, 0.5]);
        assert_eq!(ou.diffusion(0.7), 0.5);
        let b = from_spec("brownian:mu=2", &cpu).unwrap();
        assert_eq!(drift_of(b.as_ref(), &[4.0, -2.0]), vec![2.0, 2.0]);
        assert_eq!(b.diffusion(0.0), 1.0);
        let l = from_spec(r#"{"field": "linear", "theta": 2}"#, &cpu).unwrap();
        assert_eq!(drift_of(l.as_ref(), &[1.0]), vec![-2.0]);
        assert_eq!(l.diffusion(0.0), 0.0);
    }

    #[test]
    fn langevin_on_a_gaussian_is_ou() {
        // p = N(0, s²): (sigma²/2)(-x/s²) = -theta x with theta = sigma²/(2 s²) (Remark 20).
        let cpu = Device::Cpu;
        let lang = from_spec("langevin:sigma=0.6,density=gaussian:mean=0,std=2", &cpu).unwrap();
        let theta = 0.36 / (2.0 * 4.0);
        let ou = Ou { theta, sigma: 0.6 };
        let x = [3.0f32, -1.0, 0.25];
        for (a, b) in drift_of(lang.as_ref(), &x).iter().zip(drift_of(&ou, &x)) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(lang.sample_shape(), Some(vec![1]));
        let opts = FieldOptions {
            density: Some("gaussian:mean=0,std=2".into()),
        };
        let via_flag = from_spec_with("langevin:sigma=0.6", &opts, &cpu).unwrap();
        assert_eq!(drift_of(via_flag.as_ref(), &x), drift_of(lang.as_ref(), &x));
    }

    #[test]
    fn bad_specs_are_usage_errors_that_say_why() {
        let cpu = Device::Cpu;
        let cases = [
            ("warp:speed=9", "unknown field 'warp'"),
            ("ou:theta=1,sigma=-1", "sigma must be >= 0"),
            ("ou:thta=1", "unknown key 'thta'"),
            ("langevin:sigma=1", "needs a density"),
        ];
        for (s, want) in cases {
            let err = from_spec(s, &cpu).err().expect(s);
            assert!(crate::error::is_usage(&err), "{s}");
            assert!(format!("{err:#}").contains(want), "{s}: {err:#}");
        }
    }

    #[test]
    fn model_files_are_dispatched_on_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let p = p.to_str().unwrap();
        let t = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        model::save(p, &serde_json::json!({"kind": "vae"}), &[("w".into(), t)]).unwrap();
        let err = from_spec(p, &Device::Cpu).err().unwrap();
        assert!(!crate::error::is_usage(&err));
        assert!(
            format!("{err:#}").contains("model kind vae is not supported as a field"),
            "{err:#}"
        );
    }
}
