//! Classifier-free guidance (notes section 5.1): sampling a conditional model towards its class.
//!
//! A model trained with label dropout (notes Algorithm 5: the label replaced by the null label
//! ∅ with probability eta) learns both the conditional field u_t(x | y) and the unconditional
//! u_t(x | ∅). The guided field with scale w is (notes eq. 65)
//!
//! ```text
//!     u~_t(x | y) = (1 - w) u_t(x | ∅) + w u_t(x | y)
//! ```
//! w = 1 is the conditional model, w = 0 the unconditional one, w > 1 pushes samples towards
//! what distinguishes class y. [`crate::fields::GuidedField`] (the field; this module keeps the
//! formula and the conditional model's side) computes both branches in **one** network call
//! on the stacked batch [x; x] with labels [y; ∅] (2N rows), then mixes the halves.
//!
//! **SDE sampling** (notes Remark 28): with a diffusion coefficient sigma the sampler integrates
//! the SDE extension dX = [u~_t(X) + sigma²/2 s~_t(X)] dt + sigma dW (notes section 4.1), where
//! s~ = (1 - w) s(x | ∅) + w s(x | y) is the guided score. On a Gaussian path the score is an
//! affine function of the velocity at the same x, s = a_t u + b_t x (Proposition 1 inverted, see
//! [`crate::paths`]), and a_t, b_t do not depend on y; so s~ is the conversion of u~, since
//! (1 - w) + w = 1. We therefore convert the guided velocity once.
//!
//! **Field spec** (what `guide` writes and `simulate-sde --field` reads):
//! `{"field": "guided", "model": "M.safetensors", "scale": w, "labels": [y_0, y_1, ...],
//! "sigma": 0, "interval": [0, 1]}`, or `"labels_file": "labels.npy"` ((N,) int64) instead of `"labels"`.
//! Label i belongs to sample i of the run (the index `--first` counts), so a batch split into
//! chunks keeps every row with its label ([`crate::fields::Field::rows`]). The null label
//! (= the model's num_classes) is allowed and gives an unguided sample whatever w is. The model
//! path is read relative to the working directory; the file's EMA weights are used when present.
//! `sigma` (default 0, an ODE) is the constant diffusion coefficient of the SDE above.
//!
//! **Guidance interval** (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval
//! improves sample and distribution quality in diffusion models"): with `"interval": [a, b]` the
//! scale w applies only for a <= t <= b and the field is the conditional u_t(x | y) (w = 1)
//! elsewhere, one network call on x alone. Strong guidance near the noise end (small t) is what
//! pulls samples of a class towards a few modes; near the data end it does little. The default
//! [0, 1] guides at every time.
//!
//! **Classifier guidance** (notes section 5, the guided score grad log p_t(x | y) = grad log
//! p_t(x) + grad_x log p_t(y | x)): a noisy classifier p_phi(y | x_t, t) ([`crate::nn::noisy`],
//! trained on the flow model's path) adds its gradient with scale w_c. A score term is a velocity
//! term through the path's conversion (Proposition 1: u = c_t s + (d_alpha / alpha) x,
//! c_t = beta^2 d_alpha / alpha - d_beta beta, [`crate::paths::Coefs::score_gain`]), so
//!
//! ```text
//!     u~_t(x | y) = u_t(x) + w_c c_t grad_x log p_phi(y | x, t)
//!     s~_t(x | y) = s_t(x) + w_c grad_x log p_phi(y | x, t)       (the SDE's score)
//! ```
//! with one backward pass through the classifier per evaluation ([`classifier_gradient`]).
//! With a model that is exact and the exact posterior, w_c = 1 gives the conditional field
//! u_t(x | y). The base u_t is the model's unconditional field (its null label; an
//! unconditional model works too), or, with `"scale"` also given, the CFG field of eq. 65: the
//! two terms add, u~ = (1 - w) u(x | ∅) + w u(x | y) + w_c c_t grad log p_phi(y | x, t), each
//! scale pulling towards y on its own (w = 0 or 1 with w_c = 0 are the unguided and the
//! conditional fields). Spec keys: `"classifier": "C.safetensors"` (kind `noisy-classifier`, on
//! the same Gaussian path and sample shape as the model, with the model's class count when the
//! model is conditional) and `"classifier_scale": w_c`; `"scale"` becomes optional. Labels run
//! over the classifier's classes, its class count K is the null label (no classifier term, the
//! unguided sample). Outside `"interval"` the classifier term is off, and where alpha_t = 0 (at
//! t = 0, but for `vp`) too: there x_t is independent of y, the exact gradient is 0, and a
//! learned classifier's small spurious one would be multiplied by c_t's clamped 1 / alpha.

use anyhow::bail;
use candle_core::{DType, Device, Tensor};

use crate::io::{model, npy};
use crate::nn::classifier::log_softmax;
use crate::nn::noisy::NoisyClassifier;
use crate::nn::{Learned, Weights};
use crate::paths::{GaussianPath, Param};
use crate::Result;

/// A family of velocity fields u_t(x | y) indexed by a label, with a null label.
pub trait ConditionalVelocity {
    /// u_t(x | y): x (M, ...), t (M, 1) in x's dtype, y (M,) u32 in 0..=num_classes
    /// -> (M, ...) like x.
    fn velocity(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor>;
    /// Classes 0..num_classes; num_classes itself is the null label.
    fn num_classes(&self) -> usize;
    /// The Gaussian path, to turn velocities into scores for SDE sampling (`None`: ODE only).
    fn gaussian_path(&self) -> Option<GaussianPath>;
    /// The shape of one sample, if fixed.
    fn sample_shape(&self) -> Option<Vec<usize>>;
    /// For logs, e.g. the model file's name.
    fn describe(&self) -> String;
}

impl ConditionalVelocity for Learned {
    fn velocity(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.predict_as_labelled(Param::Velocity, x, t, Some(y))
    }
    fn num_classes(&self) -> usize {
        Learned::num_classes(self)
    }
    fn gaussian_path(&self) -> Option<GaussianPath> {
        self.path.as_gaussian(self.gaussian_source)
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(self.data_shape.clone())
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Loads a conditional velocity model for guidance: a `velocity` model file (or a checkpoint
/// of one) trained with labels, with its EMA weights when it has them. Errors name the file and
/// say what it is instead.
pub fn load_conditional(path: &str, device: &Device) -> Result<Learned> {
    load_velocity(path, true, device)
}

/// Loads a velocity model for guidance, conditional or (`conditional` false, for classifier
/// guidance) not, with its EMA weights when it has them.
pub fn load_velocity(path: &str, conditional: bool, device: &Device) -> Result<Learned> {
    let m = model::load(path, device)?;
    let kind = match m.kind() {
        "checkpoint" => m.field("model")?["kind"].as_str().unwrap_or("unknown"),
        k => k,
    }
    .to_string();
    if kind != "velocity" {
        bail!(
            "{}: {} (fit-velocity{}), found a {kind} model",
            m.name,
            match conditional {
                true => "classifier-free guidance needs a conditional velocity model",
                false => "classifier guidance needs a velocity model",
            },
            if conditional { " --labels" } else { "" }
        );
    }
    let learned = Learned::load(&m, Weights::Auto, device)?;
    if conditional && learned.num_classes() == 0 {
        bail!(
            "{}: classifier-free guidance needs a conditional velocity model, but this one is \
             unconditional (num_classes 0; train with fit-velocity --labels)",
            m.name
        );
    }
    Ok(learned)
}

/// Checks labels against a model with `num_classes` classes: each in 0..=num_classes (the last
/// is the null label, an unguided sample), naming `name` (the labels' source) on failure.
pub fn check_labels(labels: &[i64], num_classes: usize, name: &str) -> Result<Vec<u32>> {
    if labels.is_empty() {
        bail!("{name}: no labels");
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y < 0 || y > num_classes as i64 {
                bail!(
                    "{name}: label {y} (sample {i}) is out of range: the model has classes \
                     0..{} and the null label {num_classes}",
                    num_classes - 1
                );
            }
            Ok(y as u32)
        })
        .collect()
}

/// `k` labels of each class 0..num_classes in order (a row per class in a grid of k columns),
/// then, with `null_row`, k null labels (unguided samples).
pub fn each_class(num_classes: usize, k: usize, null_row: bool) -> Vec<i64> {
    let classes = num_classes + usize::from(null_row);
    (0..classes as i64)
        .flat_map(|c| std::iter::repeat_n(c, k))
        .collect()
}

/// The guided velocity of notes eq. 65, u~_t(x | y) = (1 - w) u_t(x | ∅) + w u_t(x | y), in one
/// call of `model` on the stacked batch [x; x] with labels [y; ∅]: x (N, ...), y (N,) u32 in
/// 0..=num_classes, one time t for every row -> (N, ...) like x. The one place the formula is
/// computed ([`crate::fields::GuidedField`] and [`crate::fields::LabelledVelocity`] call it).
pub fn guided_velocity(
    model: &dyn ConditionalVelocity,
    x: &Tensor,
    t: f64,
    y: &Tensor,
    w: f64,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let null = Tensor::full(model.num_classes() as u32, n, x.device())?;
    let yy = Tensor::cat(&[&y.to_dtype(DType::U32)?, &null], 0)?;
    let xx = Tensor::cat(&[x, x], 0)?;
    let tt = Tensor::full(t, (2 * n, 1), x.device())?.to_dtype(x.dtype())?;
    let both = model.velocity(&xx, &tt, &yy)?;
    let (cond, uncond) = (both.narrow(0, 0, n)?, both.narrow(0, n, n)?);
    Ok(((uncond * (1.0 - w))? + (cond * w)?)?)
}

/// Reads (N,) int64 labels from `path`, naming it in errors.
pub fn read_labels(path: &str) -> Result<Vec<i64>> {
    let arr = npy::read_i64(path)?;
    let name = crate::io::display_name(path);
    npy::expect_shape(arr.shape(), "N", "labels", &name)?;
    Ok(arr.iter().copied().collect())
}

/// A classifier p(y | x_t, t) of noisy samples along a Gaussian path, for classifier guidance.
pub trait NoisyPosterior {
    /// The class logits (log p(y | x, t) up to a constant per row): x (M, ...) (differentiably),
    /// t (M, 1) in x's dtype -> (M, K).
    fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor>;
    /// K, the number of classes.
    fn num_classes(&self) -> usize;
    /// The Gaussian path of its x_t.
    fn path(&self) -> GaussianPath;
    /// The shape of one sample.
    fn sample_shape(&self) -> Vec<usize>;
    /// For logs, e.g. the model file's name.
    fn describe(&self) -> String;
}

/// A trained noisy classifier ([`crate::nn::noisy`]) and its file's name.
pub struct LearnedPosterior {
    pub net: NoisyClassifier,
    pub name: String,
}

impl NoisyPosterior for LearnedPosterior {
    fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        self.net.logits(x, t)
    }
    fn num_classes(&self) -> usize {
        self.net.config.num_classes
    }
    fn path(&self) -> GaussianPath {
        self.net.config.path
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.net.config.data_shape.clone()
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Loads a noisy classifier (kind `noisy-classifier`) for classifier guidance.
pub fn load_classifier(path: &str, device: &Device) -> Result<LearnedPosterior> {
    let (net, m) = NoisyClassifier::open(path, device)?;
    Ok(LearnedPosterior { net, name: m.name })
}

/// grad_x log p(y_i | x_i, t) of every row, by one backward pass through `classifier`: x (N, ...),
/// labels `y` (N values in 0..=K; rows with the null label K get 0) -> (N, ...) like x.
pub fn classifier_gradient(
    classifier: &dyn NoisyPosterior,
    x: &Tensor,
    t: f64,
    y: &[u32],
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let k = classifier.num_classes() as u32;
    let var = candle_core::Var::from_tensor(&x.detach())?;
    let tt = Tensor::full(t, (n, 1), x.device())?.to_dtype(x.dtype())?;
    let logits = classifier.logits(var.as_tensor(), &tt)?;
    let idx: Vec<u32> = y.iter().map(|&v| v.min(k - 1)).collect();
    let keep: Vec<f32> = y.iter().map(|&v| f32::from(u8::from(v < k))).collect();
    let idx = Tensor::from_vec(idx, (n, 1), x.device())?;
    let keep = Tensor::from_vec(keep, (n, 1), x.device())?.to_dtype(x.dtype())?;
    let picked = log_softmax(&logits)?.gather(&idx, 1)?;
    let total = (picked * keep)?.sum_all()?;
    let grads = total.backward()?;
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.detach()),
        None => Ok(x.zeros_like()?),
    }
}
