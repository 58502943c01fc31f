//! Classifier-free and classifier guidance as fields the solvers integrate (notes section 5,
//! eq. 65, Remark 28; the formulas, the spec's keys and the models are in [`crate::guidance`]):
//! [`GuidedField`], a model guided towards one label per sample, by CFG, a noisy classifier's
//! gradient or both, as an ODE or its SDE extension, and [`LabelledVelocity`], a model's
//! velocity for fixed labels.

use anyhow::{anyhow, bail};
use candle_core::{Device, Tensor};
use std::sync::Arc;

use super::{sde_drift, Field};
use crate::guidance::{check_labels, guided_velocity, load_conditional, read_labels};
use crate::guidance::{classifier_gradient, load_classifier, load_velocity};
use crate::guidance::{ConditionalVelocity, NoisyPosterior};
use crate::nn::Learned;
use crate::paths::Param;
use crate::spec::Keys;
use crate::Result;

/// A noisy classifier and its scale w_c: the classifier-guidance term of a [`GuidedField`].
#[derive(Clone)]
pub struct ClassifierTerm {
    pub classifier: Arc<dyn NoisyPosterior>,
    /// w_c.
    pub scale: f64,
}

/// The guided field u~ = (1 - w) u(x | ∅) + w u(x | y) of a conditional model, or with a noisy
/// classifier u~ = u(x) + w_c c_t grad log p(y | x, t) on the model's unconditional field or
/// its CFG field (module docs of [`crate::guidance`]), with one label per sample, as an ODE
/// (sigma = 0) or its SDE extension.
#[derive(Clone)]
pub struct GuidedField {
    model: Arc<dyn ConditionalVelocity>,
    /// Every sample's label, u32 in 0..=num_classes.
    labels: Arc<Vec<u32>>,
    /// The samples this field serves: labels[start..start + len].
    start: usize,
    len: usize,
    /// w, the CFG scale; with a classifier `cfg` false means no CFG (the unconditional base).
    pub scale: f64,
    /// Whether the base is CFG's field (always, without a classifier).
    pub cfg: bool,
    /// The classifier-guidance term, if any.
    pub classifier: Option<ClassifierTerm>,
    /// The constant diffusion coefficient (0: ODE).
    pub sigma: f64,
    /// [a, b]: the times at which w applies (w = 1 elsewhere).
    pub interval: (f64, f64),
}

impl GuidedField {
    /// Guides `model` towards `labels` (one per sample, checked) with scale `w` and diffusion
    /// `sigma` >= 0; sigma > 0 needs a Gaussian path (for the score).
    pub fn new(
        model: Arc<dyn ConditionalVelocity>,
        labels: &[i64],
        scale: f64,
        sigma: f64,
    ) -> Result<GuidedField> {
        if !scale.is_finite() {
            bail!("the guidance scale must be finite, got {scale}");
        }
        if !(sigma >= 0.0 && sigma.is_finite()) {
            bail!("sigma must be >= 0, got {sigma}");
        }
        if model.num_classes() == 0 {
            bail!(
                "{} is unconditional: guidance needs a model trained with labels",
                model.describe()
            );
        }
        if sigma > 0.0 && model.gaussian_path().is_none() {
            bail!(
                "{}: SDE sampling (sigma > 0) needs the score, which a model on the linear \
                 interpolant from a data source does not have",
                model.describe()
            );
        }
        let labels = check_labels(labels, model.num_classes(), "the guided field's labels")?;
        let len = labels.len();
        Ok(GuidedField {
            model,
            labels: Arc::new(labels),
            start: 0,
            len,
            scale,
            cfg: true,
            classifier: None,
            sigma,
            interval: (0.0, 1.0),
        })
    }

    /// Classifier guidance of `model` by `term` towards `labels` (0..K of the classifier's K
    /// classes, K the null label), on the model's CFG field with scale `cfg` (a conditional
    /// model with K classes) or, with `cfg` `None`, on its unconditional field (its null label;
    /// any velocity model on the classifier's Gaussian path and sample shape).
    pub fn with_classifier(
        model: Arc<dyn ConditionalVelocity>,
        labels: &[i64],
        cfg: Option<f64>,
        term: ClassifierTerm,
        sigma: f64,
    ) -> Result<GuidedField> {
        let c = &term.classifier;
        let (k, name) = (c.num_classes(), c.describe());
        if !term.scale.is_finite() {
            bail!("the classifier scale must be finite, got {}", term.scale);
        }
        match model.gaussian_path() {
            Some(p) if p == c.path() => {}
            Some(p) => bail!(
                "{name} was trained on the path {} but {} is on {}: train the classifier with \
                 --path {}",
                crate::paths::Path::Gaussian(c.path()).name(),
                model.describe(),
                crate::paths::Path::Gaussian(p).name(),
                crate::paths::Path::Gaussian(p).name()
            ),
            None => bail!(
                "{}: classifier guidance needs a model on a Gaussian path (the score's \
                 conversion)",
                model.describe()
            ),
        }
        if model.sample_shape().is_some_and(|s| s != c.sample_shape()) {
            bail!(
                "{name} classifies samples of shape {:?}, but {} draws {:?}",
                c.sample_shape(),
                model.describe(),
                model.sample_shape().unwrap_or_default()
            );
        }
        let m = model.num_classes();
        if m != 0 && m != k {
            bail!(
                "{name} has {k} classes but {} has {m}: they must agree",
                model.describe()
            );
        }
        if cfg.is_some() && m == 0 {
            bail!(
                "{} is unconditional: CFG (a scale) needs a model trained with labels; give \
                 the classifier scale alone",
                model.describe()
            );
        }
        let mut field = match cfg {
            Some(w) => GuidedField::new(model, &[0], w, sigma)?,
            None => {
                if !(sigma >= 0.0 && sigma.is_finite()) {
                    bail!("sigma must be >= 0, got {sigma}");
                }
                GuidedField {
                    model,
                    labels: Arc::new(vec![]),
                    start: 0,
                    len: 0,
                    scale: 0.0,
                    cfg: false,
                    classifier: None,
                    sigma,
                    interval: (0.0, 1.0),
                }
            }
        };
        let labels = check_labels(labels, k, &format!("the labels for {name}"))?;
        field.len = labels.len();
        field.labels = Arc::new(labels);
        field.classifier = Some(term);
        Ok(field)
    }

    /// Guides only for t in [a, b] (see the module docs); a <= b, both in [0, 1].
    pub fn with_interval(mut self, a: f64, b: f64) -> Result<GuidedField> {
        if !((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b) && a <= b) {
            bail!("the guidance interval must be [a, b] with 0 <= a <= b <= 1, got [{a}, {b}]");
        }
        self.interval = (a, b);
        Ok(self)
    }

    /// Whether the scale w applies at time t.
    pub fn guides_at(&self, t: f64) -> bool {
        self.interval.0 <= t && t <= self.interval.1
    }

    /// The labels of the samples this field serves.
    pub fn labels(&self) -> &[u32] {
        &self.labels[self.start..self.start + self.len]
    }

    /// u~_t(x): x (N, ...) with N = the number of labels served -> (N, ...). One network call
    /// (on [x; x] with labels [y; ∅] for CFG), and one backward pass through the classifier.
    pub fn velocity(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let (base, term) = self.parts(x, t)?;
        match term {
            None => Ok(base),
            Some(g) => Ok((base + self.score_to_velocity(&g, t)?)?),
        }
    }

    /// c_t g: the velocity term of a score term g at time t (Proposition 1).
    fn score_to_velocity(&self, g: &Tensor, t: f64) -> Result<Tensor> {
        let path = self
            .model
            .gaussian_path()
            .ok_or_else(|| anyhow!("{}: this model has no Gaussian path", self.model.describe()))?;
        Ok(g.affine(path.coefs(t).score_gain(), 0.0)?)
    }

    /// The base velocity (CFG's, conditional or unconditional) and the classifier's score term
    /// w_c grad log p(y | x, t) when it applies at t.
    fn parts(&self, x: &Tensor, t: f64) -> Result<(Tensor, Option<Tensor>)> {
        let n = x.dim(0)?;
        if n != self.len {
            bail!(
                "the guided field has {} labels for samples {}..{}, but got {n} samples",
                self.len,
                self.start,
                self.start + self.len
            );
        }
        let base = match self.cfg {
            true => self.cfg_velocity(x, t)?,
            false => {
                let null = Tensor::full(self.model.num_classes() as u32, n, x.device())?;
                let tt = Tensor::full(t, (n, 1), x.device())?.to_dtype(x.dtype())?;
                self.model.velocity(x, &tt, &null)?
            }
        };
        // Where alpha_t = 0 (t = 0 on every path but vp) x_t is independent of y: p(y | x_t)
        // is the prior and its gradient exactly 0, whereas a learned classifier's small
        // spurious gradient would meet c_t's 1 / alpha at its clamp (1 / MIN_DIVISOR).
        let informative = self
            .model
            .gaussian_path()
            .is_some_and(|p| p.coefs(t).alpha > 0.0);
        let term = match &self.classifier {
            Some(c) if self.guides_at(t) && informative => {
                let g = classifier_gradient(c.classifier.as_ref(), x, t, self.labels())?;
                Some(g.affine(c.scale, 0.0)?)
            }
            _ => None,
        };
        Ok((base, term))
    }

    /// The CFG field of eq. 65 (the conditional field outside the interval).
    fn cfg_velocity(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let n = x.dim(0)?;
        if !self.guides_at(t) {
            let y = Tensor::from_vec(self.labels().to_vec(), n, x.device())?;
            let tt = Tensor::full(t, (n, 1), x.device())?.to_dtype(x.dtype())?;
            return self.model.velocity(x, &tt, &y);
        }
        let y = Tensor::from_vec(self.labels().to_vec(), n, x.device())?;
        guided_velocity(self.model.as_ref(), x, t, &y, self.scale)
    }

    /// s~_t(x), the guided score: the conversion of the base velocity (module doc), plus the
    /// classifier's score term.
    pub fn score(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        Ok(self.velocity_and_score(x, t)?.1)
    }

    /// (u~, s~) at x and t, from one network call and one classifier backward pass.
    fn velocity_and_score(&self, x: &Tensor, t: f64) -> Result<(Tensor, Tensor)> {
        let (base, term) = self.parts(x, t)?;
        let s = self.to_score(&base, x, t)?;
        match term {
            None => Ok((base, s)),
            Some(g) => Ok(((base + self.score_to_velocity(&g, t)?)?, (s + g)?)),
        }
    }

    fn to_score(&self, u: &Tensor, x: &Tensor, t: f64) -> Result<Tensor> {
        let path = self
            .model
            .gaussian_path()
            .ok_or_else(|| anyhow!("{}: this model has no score", self.model.describe()))?;
        let ts = vec![t; x.dim(0)?];
        Ok(path.convert_at(Param::Velocity, Param::Score, u, x, &ts)?)
    }
}

/// candle's error from ours, for the Field trait's signature.
fn to_candle(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::msg(format!("{e:#}"))
}

impl Field for GuidedField {
    /// The SDE drift u~ + sigma²/2 s~ (u~ when sigma = 0), by [`crate::fields::sde_drift`].
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        // The graph is kept only when x asks for one (a likelihood's divergence).
        let keep = |u: Tensor| if x.track_op() { u } else { u.detach() };
        if self.sigma == 0.0 {
            return Ok(keep(self.velocity(x, t).map_err(to_candle)?));
        }
        let (u, s) = self.velocity_and_score(x, t).map_err(to_candle)?;
        Ok(keep(sde_drift(&u, self.sigma, || Ok(s))?))
    }
    fn differentiable(&self) -> bool {
        // The classifier's gradient enters as a constant (its own backward pass).
        self.classifier.is_none()
    }
    fn diffusion(&self, _t: f64) -> f64 {
        self.sigma
    }
    fn gaussian_path(&self) -> Option<crate::paths::GaussianPath> {
        self.model.gaussian_path()
    }
    fn describe(&self) -> String {
        let interval = match self.interval {
            (a, b) if a <= 0.0 && b >= 1.0 => String::new(),
            (a, b) => format!(" on t in [{a}, {b}]"),
        };
        let cfg = match self.cfg {
            true => format!(", w={}", self.scale),
            false => String::new(),
        };
        let classifier = match &self.classifier {
            Some(c) => format!(", classifier {} w_c={}", c.classifier.describe(), c.scale),
            None => String::new(),
        };
        format!(
            "guided({}{cfg}{classifier}{interval}, sigma={}, {} labels)",
            self.model.describe(),
            self.sigma,
            self.len
        )
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        self.model.sample_shape()
    }
    fn rows(&self, start: u64, len: usize) -> Result<Option<Box<dyn Field + '_>>> {
        let start = start as usize;
        if start + len > self.len {
            bail!(
                "the guided field has {} labels, but samples {start}..{} were asked for (give \
                 one label per sample)",
                self.len,
                start + len
            );
        }
        Ok(Some(Box::new(GuidedField {
            start: self.start + start,
            len,
            ..self.clone()
        })))
    }
}

/// A trained model's velocity as the field of an ODE, for fixed labels: unconditional (`labels`
/// `None`), conditional on one label per row (scale 1, one network call on x), or guided at
/// any other scale w by [`guided_velocity`]. The field the distillation teachers, their
/// students and the training preview integrate.
pub struct LabelledVelocity<'a> {
    pub model: &'a Learned,
    /// (N,) u32 labels, one per row of the x the field is evaluated at.
    pub labels: Option<&'a Tensor>,
    /// w, the guidance scale (1: the conditional field).
    pub scale: f64,
}

impl LabelledVelocity<'_> {
    /// u~_t(x): x (N, ...data_shape), one time t for every row -> (N, ...data_shape).
    pub fn velocity(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let n = x.dim(0)?;
        let tt = Tensor::full(t, (n, 1), x.device())?.to_dtype(x.dtype())?;
        let v = Param::Velocity;
        match self.labels {
            None => self.model.predict_as_labelled(v, x, &tt, None),
            Some(y) if self.scale == 1.0 => self.model.predict_as_labelled(v, x, &tt, Some(y)),
            Some(y) => guided_velocity(self.model, x, t, y, self.scale),
        }
    }
}

impl Field for LabelledVelocity<'_> {
    fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        self.velocity(x, t).map_err(to_candle)
    }
    fn diffusion(&self, _t: f64) -> f64 {
        0.0
    }
    fn gaussian_path(&self) -> Option<crate::paths::GaussianPath> {
        ConditionalVelocity::gaussian_path(self.model)
    }
    fn describe(&self) -> String {
        match self.labels {
            None => format!("ODE of {}", self.model.name),
            Some(_) => format!("ODE of {} guided at w={}", self.model.name, self.scale),
        }
    }
    fn sample_shape(&self) -> Option<Vec<usize>> {
        Some(self.model.data_shape.clone())
    }
}

/// Builds the field of a `{"field": "guided", ...}` spec (keys in [`crate::guidance`]),
/// loading the model on `device`.
pub fn from_keys(k: &mut Keys, device: &Device) -> Result<GuidedField> {
    let path = match k.raw("model") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => bail!("field guided: 'model' must be the path of a model file, got {v}"),
        None => bail!("field guided needs 'model', the path of a conditional velocity model"),
    };
    let classifier = match k.raw("classifier") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => bail!("field guided: 'classifier' must be the path of a model file, got {v}"),
    };
    let scale = match (&classifier, k.raw("scale")) {
        (Some(_), None) => None,
        _ => Some(k.num("scale", None)?),
    };
    let classifier_scale = match &classifier {
        Some(_) => Some(k.num("classifier_scale", None)?),
        None if k.raw("classifier_scale").is_some() => {
            bail!("field guided: 'classifier_scale' needs 'classifier'")
        }
        None => None,
    };
    let sigma = k.num("sigma", Some(0.0))?;
    let labels: Vec<i64> = match (k.raw("labels"), k.raw("labels_file")) {
        (Some(_), Some(_)) => bail!("field guided: give 'labels' or 'labels_file', not both"),
        (None, None) => bail!("field guided needs 'labels' (a list) or 'labels_file' (.npy)"),
        (Some(v), None) => v
            .as_array()
            .and_then(|a| a.iter().map(|y| y.as_i64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| anyhow!("field guided: 'labels' must be a list of integers"))?,
        (None, Some(serde_json::Value::String(f))) => read_labels(f)?,
        (None, Some(v)) => bail!("field guided: 'labels_file' must be a path, got {v}"),
    };
    let interval = match k.raw("interval") {
        None => None,
        Some(v) => match v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_f64()).collect::<Vec<_>>())
        {
            Some(a) if a.len() == 2 && a.iter().all(Option::is_some) => {
                Some((a[0].unwrap(), a[1].unwrap()))
            }
            _ => bail!("field guided: 'interval' must be [a, b], two times in [0, 1], got {v}"),
        },
    };
    let field = match (classifier, classifier_scale) {
        (Some(c), Some(w_c)) => {
            let model = load_velocity(&path, scale.is_some(), device)?;
            let name = model.name.clone();
            let term = ClassifierTerm {
                classifier: Arc::new(load_classifier(&c, device)?),
                scale: w_c,
            };
            GuidedField::with_classifier(Arc::new(model), &labels, scale, term, sigma)
                .map_err(|e| anyhow!("guiding {name}: {e:#}"))?
        }
        _ => {
            let model = load_conditional(&path, device)?;
            let name = model.name.clone();
            let scale = scale.unwrap_or_default();
            GuidedField::new(Arc::new(model), &labels, scale, sigma)
                .map_err(|e| anyhow!("guiding {name}: {e:#}"))?
        }
    };
    match interval {
        Some((a, b)) => field.with_interval(a, b),
        None => Ok(field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guidance::{each_class, NoisyPosterior};
    use crate::paths::GaussianPath;
    use candle_core::DType;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A test double with closed forms: class k's data are N(m_k, s_k² I)
    /// (the last entry is the null label's distribution), each carried along a Gaussian path, so
    /// u_t(x | k) and the score have closed forms (from the Gaussian posterior, with
    /// v = alpha² s² + beta² and r = x - alpha m):
    /// E[z | x] = m + alpha s² r / v, E[eps | x] = beta r / v, u = d_alpha E[z | x] + d_beta E[eps | x],
    /// grad log p_t(x | k) = -r / v. Counts its calls and the rows of the last call.
    pub struct GaussianClasses {
        /// One mean per class and one for the null label, each of length D.
        pub means: Vec<Vec<f64>>,
        pub stds: Vec<f64>,
        pub path: GaussianPath,
        pub calls: AtomicUsize,
        pub last_rows: AtomicUsize,
    }

    impl GaussianClasses {
        pub fn new(means: Vec<Vec<f64>>, stds: Vec<f64>, path: GaussianPath) -> GaussianClasses {
            GaussianClasses {
                means,
                stds,
                path,
                calls: AtomicUsize::new(0),
                last_rows: AtomicUsize::new(0),
            }
        }

        /// (velocity, score) of class `k` at the point x (D values) and time t, in f64.
        pub fn exact(&self, k: usize, x: &[f64], t: f64) -> (Vec<f64>, Vec<f64>) {
            let c = self.path.coefs(t);
            let s2 = self.stds[k] * self.stds[k];
            let v = c.alpha * c.alpha * s2 + c.beta * c.beta;
            let (mut u, mut s) = (Vec::new(), Vec::new());
            for (xi, mi) in x.iter().zip(&self.means[k]) {
                let r = xi - c.alpha * mi;
                u.push(c.d_alpha * (mi + c.alpha * s2 * r / v) + c.d_beta * c.beta * r / v);
                s.push(-r / v);
            }
            (u, s)
        }
    }

    impl ConditionalVelocity for GaussianClasses {
        fn velocity(&self, x: &Tensor, t: &Tensor, y: &Tensor) -> Result<Tensor> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let n = x.dim(0)?;
            self.last_rows.store(n, Ordering::SeqCst);
            let xs = x.to_dtype(DType::F64)?.reshape((n, ()))?.to_vec2::<f64>()?;
            let ts = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let ys = y.to_vec1::<u32>()?;
            let mut out = Vec::with_capacity(x.elem_count());
            for i in 0..n {
                out.extend(self.exact(ys[i] as usize, &xs[i], ts[i]).0);
            }
            Ok(Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(x.dtype())?)
        }
        fn num_classes(&self) -> usize {
            self.means.len() - 1
        }
        fn gaussian_path(&self) -> Option<GaussianPath> {
            Some(self.path)
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            Some(vec![self.means[0].len()])
        }
        fn describe(&self) -> String {
            "gaussian classes".into()
        }
    }
    use crate::solvers::{solve, solve_batched, uniform_grid, SolveOptions};
    use ndarray::{ArrayD, IxDyn};

    fn classes() -> Arc<GaussianClasses> {
        Arc::new(GaussianClasses::new(
            vec![vec![2.0, -1.0], vec![-3.0, 0.5], vec![0.0, 0.0]],
            vec![0.5, 0.3, 1.5],
            GaussianPath::CONDOT,
        ))
    }

    fn rows(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
    }

    fn points() -> (Tensor, Vec<Vec<f64>>) {
        let p = vec![
            vec![0.3, -0.7],
            vec![1.5, 2.0],
            vec![-2.0, 0.1],
            vec![0.0, 0.0],
        ];
        let flat: Vec<f64> = p.iter().flatten().copied().collect();
        (Tensor::from_vec(flat, (4, 2), &Device::Cpu).unwrap(), p)
    }

    #[test]
    fn guided_field_is_the_formula_of_eq_65_in_one_call() {
        let m = classes();
        let labels = [0i64, 1, 0, 2];
        let (x, pts) = points();
        let t = 0.4;
        for w in [0.0, 1.0, 3.0, -0.5] {
            let g = GuidedField::new(m.clone(), &labels, w, 0.0).unwrap();
            let before = m.calls.load(Ordering::SeqCst);
            let got = rows(&g.velocity(&x, t).unwrap());
            assert_eq!(
                m.calls.load(Ordering::SeqCst),
                before + 1,
                "one network call"
            );
            assert_eq!(m.last_rows.load(Ordering::SeqCst), 8, "on [x; x]");
            for (i, p) in pts.iter().enumerate() {
                let (uy, _) = m.exact(labels[i] as usize, p, t);
                let (u0, _) = m.exact(2, p, t);
                for j in 0..2 {
                    let want = (1.0 - w) * u0[j] + w * uy[j];
                    assert!((got[i][j] - want).abs() < 1e-12, "w {w}: {got:?}");
                    if w == 1.0 {
                        assert!((got[i][j] - uy[j]).abs() < 1e-12, "w = 1 is conditional");
                    }
                    if w == 0.0 {
                        assert!((got[i][j] - u0[j]).abs() < 1e-12, "w = 0 is unconditional");
                    }
                }
            }
        }
    }

    #[test]
    fn guidance_interval_guides_inside_and_is_conditional_outside() {
        let m = classes();
        let labels = [0i64, 1, 0, 2];
        let (x, pts) = points();
        let w = 3.0;
        let g = GuidedField::new(m.clone(), &labels, w, 0.0)
            .unwrap()
            .with_interval(0.3, 0.7)
            .unwrap();
        for t in [0.1, 0.3, 0.5, 0.7, 0.9] {
            let before = m.calls.load(Ordering::SeqCst);
            let got = rows(&g.velocity(&x, t).unwrap());
            assert_eq!(
                m.calls.load(Ordering::SeqCst),
                before + 1,
                "one call at t {t}"
            );
            let inside = (0.3..=0.7).contains(&t);
            assert_eq!(
                m.last_rows.load(Ordering::SeqCst),
                if inside { 8 } else { 4 }
            );
            for (i, p) in pts.iter().enumerate() {
                let (uy, _) = m.exact(labels[i] as usize, p, t);
                let (u0, _) = m.exact(2, p, t);
                for j in 0..2 {
                    let want = if inside {
                        (1.0 - w) * u0[j] + w * uy[j]
                    } else {
                        uy[j]
                    };
                    assert!((got[i][j] - want).abs() < 1e-12, "t {t}: {got:?}");
                }
            }
        }
        let whole = GuidedField::new(m.clone(), &labels, w, 0.0).unwrap();
        assert!(whole.guides_at(0.0) && whole.guides_at(1.0));
        for (a, b) in [(0.5, 0.4), (-0.1, 0.5), (0.2, 1.5)] {
            assert!(whole.clone().with_interval(a, b).is_err(), "[{a}, {b}]");
        }
    }

    #[test]
    fn sde_drift_adds_the_guided_score() {
        // Remark 28: drift = u~ + sigma²/2 ((1 - w) s(x | ∅) + w s(x | y)), from the closed-form
        // scores, not through the conversion the field uses.
        let m = classes();
        let labels = [1i64, 0, 1, 0];
        let (x, pts) = points();
        let (w, sigma, t) = (2.5, 0.8, 0.6);
        let g = GuidedField::new(m.clone(), &labels, w, sigma).unwrap();
        assert_eq!(g.diffusion(0.3), sigma);
        let got = rows(&g.drift(&x, t).unwrap());
        let score = rows(&g.score(&x, t).unwrap());
        for (i, p) in pts.iter().enumerate() {
            let (uy, sy) = m.exact(labels[i] as usize, p, t);
            let (u0, s0) = m.exact(2, p, t);
            for j in 0..2 {
                let s = (1.0 - w) * s0[j] + w * sy[j];
                // The path's conversion runs its coefficients in f32.
                let tol = 1e-6 * (1.0 + s.abs());
                assert!((score[i][j] - s).abs() < tol, "{} vs {s}", score[i][j]);
                let want = (1.0 - w) * u0[j] + w * uy[j] + 0.5 * sigma * sigma * s;
                assert!((got[i][j] - want).abs() < tol);
            }
        }
    }

    #[test]
    fn batched_equals_unbatched_with_labels() {
        let m = classes();
        let labels: Vec<i64> = (0..7).map(|i| [0, 1, 2][i % 3]).collect();
        let x0 = ArrayD::from_shape_vec(IxDyn(&[7, 2]), (0..14).map(|v| v as f32 * 0.2).collect())
            .unwrap();
        let g = GuidedField::new(m.clone(), &labels, 3.0, 0.5).unwrap();
        let grid = uniform_grid(0.0, 0.9, 6);
        let opts = SolveOptions {
            seed: 4,
            ..Default::default()
        };
        let cpu = Device::Cpu;
        let whole = solve_batched(&g, &x0, &grid, &opts, 7, &cpu, None)
            .unwrap()
            .0;
        let parts = solve_batched(&g, &x0, &grid, &opts, 3, &cpu, None)
            .unwrap()
            .0;
        assert_eq!(whole, parts);
        // Each row solved alone (sample index i: its label and its noise) matches.
        for i in [0usize, 4, 5] {
            let one = GuidedField::new(m.clone(), &labels[..=i], 3.0, 0.5).unwrap();
            let row = x0.slice(ndarray::s![i..i + 1, ..]).to_owned().into_dyn();
            let o = SolveOptions {
                first: i as u64,
                ..opts.clone()
            };
            let alone = solve_batched(&one, &row, &grid, &o, 1, &cpu, None)
                .unwrap()
                .0;
            assert_eq!(
                alone.iter().collect::<Vec<_>>(),
                whole
                    .index_axis(ndarray::Axis(0), i)
                    .iter()
                    .collect::<Vec<_>>()
            );
        }
        // --first indexes the labels: samples 3..7 of the run.
        let tail = x0.slice(ndarray::s![3.., ..]).to_owned().into_dyn();
        let o = SolveOptions {
            first: 3,
            ..opts.clone()
        };
        let part = solve_batched(&g, &tail, &grid, &o, 2, &cpu, None)
            .unwrap()
            .0;
        assert_eq!(
            part,
            whole.slice(ndarray::s![3.., ..]).to_owned().into_dyn()
        );
        // Too few labels for the samples is an error, not a silent reuse.
        let big = ArrayD::<f32>::zeros(IxDyn(&[8, 2]));
        let err = solve_batched(&g, &big, &grid, &opts, 3, &cpu, None)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("7 labels"), "{err:#}");
        let x = Tensor::zeros((3, 2), DType::F32, &cpu).unwrap();
        assert!(solve(&g, &x, &grid, &opts, None).is_err());
    }

    /// A Gaussian mixture of classes k = 0..K (weights pi_k, class k N(m_k, s_k^2 I)) along a
    /// Gaussian path: the exact posterior p(k | x_t, t) as a classifier (logits log pi_k +
    /// log N(x; alpha m_k, v_k I), in tensor ops, so that its gradient goes through autograd as a
    /// network's does) and the exact marginal field sum_k p(k | x) u_t(x | k) as an unconditional
    /// model.
    struct Mixture {
        classes: GaussianClasses,
        weights: Vec<f64>,
    }

    impl Mixture {
        fn new() -> Arc<Mixture> {
            Arc::new(Mixture {
                classes: GaussianClasses::new(
                    vec![
                        vec![-3.0, 0.0],
                        vec![3.0, 0.0],
                        vec![0.0, 4.0],
                        vec![0.0, 0.0],
                    ],
                    vec![0.6, 0.8, 0.5, 1.0],
                    GaussianPath::CONDOT,
                ),
                weights: vec![0.3, 0.3, 0.4],
            })
        }

        /// p(k | x, t) for every class, in f64.
        fn posterior(&self, x: &[f64], t: f64) -> Vec<f64> {
            let c = self.classes.path.coefs(t);
            let logs: Vec<f64> = (0..self.weights.len())
                .map(|k| {
                    let v = c.alpha * c.alpha * self.classes.stds[k].powi(2) + c.beta * c.beta;
                    let d2: f64 = x
                        .iter()
                        .zip(&self.classes.means[k])
                        .map(|(xi, mi)| (xi - c.alpha * mi).powi(2))
                        .sum();
                    self.weights[k].ln() - v.ln() * x.len() as f64 / 2.0 - d2 / (2.0 * v)
                })
                .collect();
            let top = logs.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logs.iter().map(|l| (l - top).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        }

        /// (velocity, score) of the mixture's marginal at x, t.
        fn marginal(&self, x: &[f64], t: f64) -> (Vec<f64>, Vec<f64>) {
            let p = self.posterior(x, t);
            let (mut u, mut s) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            for (k, pk) in p.iter().enumerate() {
                let (uk, sk) = self.classes.exact(k, x, t);
                for j in 0..x.len() {
                    u[j] += pk * uk[j];
                    s[j] += pk * sk[j];
                }
            }
            (u, s)
        }
    }

    impl ConditionalVelocity for Mixture {
        fn velocity(&self, x: &Tensor, t: &Tensor, _y: &Tensor) -> Result<Tensor> {
            let n = x.dim(0)?;
            let xs = x.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let ts = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let out: Vec<f64> = (0..n)
                .flat_map(|i| self.marginal(&xs[i], ts[i]).0)
                .collect();
            Ok(Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(x.dtype())?)
        }
        fn num_classes(&self) -> usize {
            0
        }
        fn gaussian_path(&self) -> Option<GaussianPath> {
            Some(self.classes.path)
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            Some(vec![2])
        }
        fn describe(&self) -> String {
            "mixture marginal".into()
        }
    }

    impl NoisyPosterior for Mixture {
        fn logits(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
            let ts = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            let c = self.classes.path.coefs(ts[0]);
            let mut cols = Vec::new();
            for (k, w) in self.weights.iter().enumerate() {
                let v = c.alpha * c.alpha * self.classes.stds[k].powi(2) + c.beta * c.beta;
                let m: Vec<f64> = self.classes.means[k].iter().map(|m| c.alpha * m).collect();
                let m = Tensor::from_vec(m, (1, 2), x.device())?.to_dtype(x.dtype())?;
                let d2 = x.broadcast_sub(&m)?.sqr()?.sum_keepdim(1)?;
                cols.push(d2.affine(-0.5 / v, w.ln() - v.ln())?);
            }
            Tensor::cat(&cols, 1)
        }
        fn num_classes(&self) -> usize {
            self.weights.len()
        }
        fn path(&self) -> GaussianPath {
            self.classes.path
        }
        fn sample_shape(&self) -> Vec<usize> {
            vec![2]
        }
        fn describe(&self) -> String {
            "exact posterior".into()
        }
    }

    fn term(m: &Arc<Mixture>, scale: f64) -> ClassifierTerm {
        ClassifierTerm {
            classifier: m.clone(),
            scale,
        }
    }

    fn close(a: f64, b: f64, what: &str) {
        // f32 arithmetic of the gradient and the velocity, and c_t up to 4.
        assert!((a - b).abs() < 2e-4 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }

    #[test]
    fn classifier_guidance_at_w_1_with_the_exact_posterior_is_the_exact_conditional_field() {
        // grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x), and u = c_t s + (d_alpha /
        // alpha) x is affine in s: u_t(x) + c_t grad log p_t(y | x) = u_t(x | y) exactly.
        let m = Mixture::new();
        let labels = [0i64, 1, 2, 3];
        let (x, pts) = points();
        for sigma in [0.0, 0.7] {
            let g = GuidedField::with_classifier(m.clone(), &labels, None, term(&m, 1.0), sigma)
                .unwrap();
            for t in [0.1, 0.4, 0.8, 0.95] {
                let got = rows(&g.velocity(&x, t).unwrap());
                let drift = rows(&g.drift(&x, t).unwrap());
                for (i, p) in pts.iter().enumerate() {
                    let (want, ws) = match labels[i] {
                        3 => m.marginal(p, t), // the null label: unguided
                        y => m.classes.exact(y as usize, p, t),
                    };
                    for j in 0..2 {
                        let what = format!("t {t} row {i}");
                        close(got[i][j], want[j], &what);
                        close(drift[i][j], want[j] + 0.5 * sigma * sigma * ws[j], &what);
                    }
                }
            }
            // At t = 0 (alpha = 0) x_t says nothing of y: no classifier term at all.
            let at0 = rows(&g.velocity(&x, 0.0).unwrap());
            for (i, p) in pts.iter().enumerate() {
                let (u, _) = m.marginal(p, 0.0);
                for j in 0..2 {
                    close(at0[i][j], u[j], "t = 0");
                }
            }
            // w_c = 0 is the marginal field; w_c = 2 doubles the classifier's pull.
            let t = 0.5;
            for w in [0.0, 2.0] {
                let g = GuidedField::with_classifier(m.clone(), &labels, None, term(&m, w), sigma)
                    .unwrap();
                let got = rows(&g.velocity(&x, t).unwrap());
                for (i, p) in pts.iter().enumerate().take(3) {
                    let (u, _) = m.marginal(p, t);
                    let (uy, _) = m.classes.exact(labels[i] as usize, p, t);
                    for j in 0..2 {
                        close(got[i][j], u[j] + w * (uy[j] - u[j]), &format!("w {w}"));
                    }
                }
            }
        }
    }

    #[test]
    fn classifier_guidance_adds_to_cfg() {
        // u~ = (1 - w) u(x | ∅) + w u(x | y) + w_c c_t grad log p(y | x), the gradient from the
        // closed form c_t grad log p(y | x) = u(x | y) - u(x) of the mixture.
        let cfg = classes(); // 2 classes and a null; the mixture's classes 0 and 1 guide it.
        let m = Arc::new(Mixture {
            classes: GaussianClasses::new(
                vec![vec![2.0, -1.0], vec![-3.0, 0.5], vec![0.0, 0.0]],
                vec![0.5, 0.3, 1.0],
                GaussianPath::CONDOT,
            ),
            weights: vec![0.5, 0.5],
        });
        let labels = [0i64, 1, 0, 2];
        let (x, pts) = points();
        let (w, wc, t) = (2.0, 1.5, 0.6);
        let g =
            GuidedField::with_classifier(cfg.clone(), &labels, Some(w), term(&m, wc), 0.0).unwrap();
        let got = rows(&g.velocity(&x, t).unwrap());
        for (i, p) in pts.iter().enumerate() {
            let y = labels[i] as usize;
            let (uy, _) = cfg.exact(y, p, t);
            let (u0, _) = cfg.exact(2, p, t);
            for j in 0..2 {
                let pull = match y {
                    2 => 0.0,
                    _ => m.classes.exact(y, p, t).0[j] - m.marginal(p, t).0[j],
                };
                let want = (1.0 - w) * u0[j] + w * uy[j] + wc * pull;
                close(got[i][j], want, &format!("row {i}"));
            }
        }
    }

    #[test]
    fn classifier_guidance_refuses_what_does_not_fit() {
        let m = Mixture::new();
        let err = |r: Result<GuidedField>| format!("{:#}", r.err().unwrap());
        let e = err(GuidedField::with_classifier(
            m.clone(),
            &[4],
            None,
            term(&m, 1.0),
            0.0,
        ));
        assert!(e.contains("label 4 (sample 0)"), "{e}");
        let e = err(GuidedField::with_classifier(
            m.clone(),
            &[0],
            Some(2.0),
            term(&m, 1.0),
            0.0,
        ));
        assert!(e.contains("unconditional"), "{e}");
        // A conditional model with another class count.
        let e = err(GuidedField::with_classifier(
            classes(),
            &[0],
            None,
            term(&m, 1.0),
            0.0,
        ));
        assert!(e.contains("3 classes but gaussian classes has 2"), "{e}");
        let other = Arc::new(Mixture {
            classes: GaussianClasses::new(
                m.classes.means.clone(),
                m.classes.stds.clone(),
                GaussianPath::SQRT,
            ),
            weights: m.weights.clone(),
        });
        let e = err(GuidedField::with_classifier(
            m.clone(),
            &[0],
            None,
            term(&other, 1.0),
            0.0,
        ));
        assert!(
            e.contains("path sqrt") && e.contains("--path condot"),
            "{e}"
        );
    }

    #[test]
    fn labels_are_checked() {
        let m = classes();
        let err = GuidedField::new(m.clone(), &[0, 3], 2.0, 0.0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("label 3 (sample 1)"), "{err}");
        assert!(GuidedField::new(m.clone(), &[-1], 2.0, 0.0).is_err());
        assert!(GuidedField::new(m.clone(), &[0], 2.0, -1.0).is_err());
        assert!(GuidedField::new(m, &[], 2.0, 0.0).is_err());
        assert_eq!(each_class(3, 2, false), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(each_class(2, 1, true), vec![0, 1, 2]);
    }
}
