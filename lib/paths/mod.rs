//! Probability paths: how noise at t = 0 becomes data at t = 1 (notes section 3).
//!
//! **Gaussian conditional paths** (notes eq. 13): p_t(x|z) = N(alpha_t z, beta_t^2 I), sampled as
//! x_t = alpha_t z + beta_t eps with eps ~ N(0, I), where alpha_0 = 0, alpha_1 = 1 and
//! beta_0 = 1, beta_1 = 0. The schedules, each with its exact time derivative:
//!
//! | `--path`  | alpha_t         | beta_t           | name in the notes / lab          |
//! |-----------|-----------------|------------------|----------------------------------|
//! | `condot`  | t               | 1 - t            | CondOT path (notes eq. 15)       |
//! | `sqrt`    | t               | sqrt(1 - t)      | the lab's path (`SquareRootBeta`)|
//! | `cosine`  | sin(pi t / 2)   | cos(pi t / 2)    | variance preserving, cosine      |
//!
//! For each path:
//! - the conditional vector field (notes eq. 20):
//!   u_t(x|z) = (d_alpha - d_beta / beta * alpha) z + (d_beta / beta) x, which at x = x_t equals
//!   d_alpha z + d_beta eps, the time derivative of the sampling map;
//! - the conditional score (notes eq. 40): grad log p_t(x|z) = -(x - alpha z) / beta^2.
//!
//! **Parametrisations** ([`Param`]): a network may predict the velocity u, the score s, the noise
//! eps (DDPM) or the clean data z (denoiser). All four are functions of the two posterior means
//! z^ = E[z | x_t = x] and eps^ = E[eps | x_t = x], since x = alpha z^ + beta eps^:
//! - score:    s = -eps^ / beta                         (notes eq. 40 averaged over z; Remark 16)
//! - velocity: u = d_alpha z^ + d_beta eps^              (notes eq. 20 averaged; Proposition 1:
//!   u = (beta^2 d_alpha / alpha - d_beta beta) s + (d_alpha / alpha) x)
//! - from u:   eps^ = (d_alpha x - alpha u) / D,  z^ = (beta u - d_beta x) / D,
//!   with D = d_alpha beta - alpha d_beta > 0 for every schedule here.
//!
//! [`GaussianPath::convert`] writes these once for every pair.
//!
//! **Numerical safety near the ends.** beta_t -> 0 as t -> 1 and alpha_t -> 0 as t -> 0. Where a
//! formula divides by alpha or beta, the divisor is clamped to at least [`MIN_DIVISOR`]; the
//! derivative of sqrt(1 - t), -1 / (2 sqrt(1 - t)), uses the same clamp. Values themselves are
//! never clamped, so x_1 = z exactly. The clamp only matters within about 1e-3 of an end (1e-6
//! for the sqrt schedule near t = 1), where score and noise are exchanged at a bounded factor
//! instead of an infinite one. Converting to a velocity from a score or noise at t ~ 0 is
//! ill-posed (the score of p_0 says nothing about the data), as the clamp makes visible.
//!
//! **Linear interpolant** between two arbitrary distributions (notes section 3, Remark on
//! couplings): x_t = (1 - t) x_0 + t z with x_0 ~ p_src and z ~ p_data drawn independently; the
//! conditional velocity is z - x_0. With p_src = N(0, I) it is the CondOT path; with a data source
//! it bridges, say, circles to a checkerboard. It has no closed-form score.
//!
//! Time tensors `t` may be shaped (N,), (N, 1) or hold a single value for all rows. Schedule
//! coefficients are computed in f64 on the host, then applied as (N, 1, ..., 1) columns.

use candle_core::{Result, Tensor};
use serde_json::{json, Value};
use std::f64::consts::FRAC_PI_2;

/// The smallest value alpha_t or beta_t takes when a formula divides by it.
pub const MIN_DIVISOR: f64 = 1e-3;

/// The signal schedule alpha_t: 0 at t = 0 (noise), 1 at t = 1 (data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpha {
    /// alpha_t = t
    Linear,
    /// alpha_t = sin(pi t / 2)
    Sin,
}

impl Alpha {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => t,
            Alpha::Sin => (FRAC_PI_2 * t).sin(),
        }
    }

    /// d alpha_t / dt.
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Alpha::Linear => 1.0,
            Alpha::Sin => FRAC_PI_2 * (FRAC_PI_2 * t).cos(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alpha::Linear => "linear",
            Alpha::Sin => "sin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Alpha::Linear, Alpha::Sin]
            .into_iter()
            .find(|a| a.name() == s)
    }
}

/// The noise schedule beta_t: 1 at t = 0, 0 at t = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beta {
    /// beta_t = 1 - t
    Linear,
    /// beta_t = sqrt(1 - t)
    Sqrt,
    /// beta_t = cos(pi t / 2)
    Cos,
}

impl Beta {
    pub fn value(self, t: f64) -> f64 {
        match self {
            Beta::Linear => 1.0 - t,
            Beta::Sqrt => (1.0 - t).max(0.0).sqrt(),
            Beta::Cos => (FRAC_PI_2 * t).cos(),
        }
    }

    /// d beta_t / dt; for `Sqrt` the square root is clamped to [`MIN_DIVISOR`] (finite at t = 1).
    pub fn deriv(self, t: f64) -> f64 {
        match self {
            Beta::Linear => -1.0,
            Beta::Sqrt => -0.5 / (1.0 - t).max(0.0).sqrt().max(MIN_DIVISOR),
            Beta::Cos => -FRAC_PI_2 * (FRAC_PI_2 * t).sin(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Beta::Linear => "linear",
            Beta::Sqrt => "sqrt",
            Beta::Cos => "cos",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Beta::Linear, Beta::Sqrt, Beta::Cos]
            .into_iter()
            .find(|b| b.name() == s)
    }
}

/// What a network predicts (the "parametrisation" of a model file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// The marginal vector field u_t(x) (flow matching).
    Velocity,
    /// The marginal score grad log p_t(x) (score matching, Theorem 22).
    Score,
    /// The noise E[eps | x_t = x] (DDPM's epsilon prediction).
    Noise,
    /// The clean data E[z | x_t = x] (denoiser, x-prediction).
    Denoiser,
}

impl Param {
    pub fn name(self) -> &'static str {
        match self {
            Param::Velocity => "velocity",
            Param::Score => "score",
            Param::Noise => "noise",
            Param::Denoiser => "denoiser",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// alpha_t, beta_t and their derivatives at one time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefs {
    pub alpha: f64,
    pub beta: f64,
    pub d_alpha: f64,
    pub d_beta: f64,
}

impl Coefs {
    /// 1 / alpha with alpha clamped to [`MIN_DIVISOR`].
    pub fn inv_alpha(&self) -> f64 {
        1.0 / self.alpha.max(MIN_DIVISOR)
    }

    /// 1 / beta with beta clamped to [`MIN_DIVISOR`].
    pub fn inv_beta(&self) -> f64 {
        1.0 / self.beta.max(MIN_DIVISOR)
    }

    /// D = d_alpha beta - alpha d_beta, the determinant that turns a velocity into posterior
    /// means; positive for increasing alpha and decreasing beta.
    pub fn det(&self) -> f64 {
        self.d_alpha * self.beta - self.alpha * self.d_beta
    }
}

/// A Gaussian conditional probability path p_t(x|z) = N(alpha_t z, beta_t^2 I).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaussianPath {
    pub alpha: Alpha,
    pub beta: Beta,
}

impl GaussianPath {
    /// alpha_t = t, beta_t = 1 - t (CondOT).
    pub const CONDOT: GaussianPath = GaussianPath {
        alpha: Alpha::Linear,
        beta: Beta::Linear,
    };
    /// alpha_t = t, beta_t = sqrt(1 - t) (the lab's path).
    pub const SQRT: GaussianPath = GaussianPath {
        alpha: Alpha::Linear,
        beta: Beta::Sqrt,
    };
    /// alpha_t = sin(pi t / 2), beta_t = cos(pi t / 2) (variance preserving).
    pub const COSINE: GaussianPath = GaussianPath {
        alpha: Alpha::Sin,
        beta: Beta::Cos,
    };

    /// The schedule values and derivatives at `t`.
    pub fn coefs(&self, t: f64) -> Coefs {
        Coefs {
            alpha: self.alpha.value(t),
            beta: self.beta.value(t),
            d_alpha: self.alpha.deriv(t),
            d_beta: self.beta.deriv(t),
        }
    }

    /// x_t = alpha_t z + beta_t eps. z, eps: (N, ...); t: (N,), (N, 1) or one value.
    pub fn sample_xt(&self, z: &Tensor, eps: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.sample_xt_at(z, eps, &time_values(t, z.dim(0)?)?)
    }

    /// [`Self::sample_xt`] with the times as host values, one per row.
    pub fn sample_xt_at(&self, z: &Tensor, eps: &Tensor, t: &[f64]) -> Result<Tensor> {
        let c = self.cols(t, z)?;
        c.lin(z, |k| k.alpha, eps, |k| k.beta)
    }

    /// The conditional vector field (notes eq. 20) at a point x (N, ...) given z (N, ...):
    /// (d_alpha - d_beta / beta alpha) z + (d_beta / beta) x.
    pub fn conditional_velocity(&self, x: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        let c = self.cols(&time_values(t, x.dim(0)?)?, x)?;
        c.lin(
            z,
            |k| k.d_alpha - k.d_beta * k.inv_beta() * k.alpha,
            x,
            |k| k.d_beta * k.inv_beta(),
        )
    }

    /// The conditional score (notes eq. 40): -(x - alpha z) / beta^2. x, z: (N, ...).
    pub fn conditional_score(&self, x: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        let c = self.cols(&time_values(t, x.dim(0)?)?, x)?;
        c.lin(
            x,
            |k| -k.inv_beta() * k.inv_beta(),
            z,
            |k| k.alpha * k.inv_beta() * k.inv_beta(),
        )
    }

    /// The regression target for `param` at x_t = alpha z + beta eps (z, eps: (N, ...)):
    /// velocity d_alpha z + d_beta eps (eq. 20 at x_t), score -eps / beta (eq. 40 at x_t),
    /// noise eps, denoiser z.
    pub fn target_at(&self, param: Param, z: &Tensor, eps: &Tensor, t: &[f64]) -> Result<Tensor> {
        match param {
            Param::Velocity => self.cols(t, z)?.lin(z, |k| k.d_alpha, eps, |k| k.d_beta),
            Param::Score => eps.broadcast_mul(&self.cols(t, eps)?.col(|k| -k.inv_beta())?),
            Param::Noise => Ok(eps.clone()),
            Param::Denoiser => Ok(z.clone()),
        }
    }

    /// Converts a prediction `pred` (N, ...) in parametrisation `from` at the point x (N, ...)
    /// into parametrisation `to` (Proposition 1, Remark 16; formulas in the module doc).
    pub fn convert(
        &self,
        from: Param,
        to: Param,
        pred: &Tensor,
        x: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        self.convert_at(from, to, pred, x, &time_values(t, x.dim(0)?)?)
    }

    /// [`Self::convert`] with the times as host values, one per row.
    pub fn convert_at(
        &self,
        from: Param,
        to: Param,
        pred: &Tensor,
        x: &Tensor,
        t: &[f64],
    ) -> Result<Tensor> {
        if from == to {
            return Ok(pred.clone());
        }
        let c = self.cols(t, x)?;
        match to {
            Param::Noise => to_noise(&c, from, pred, x),
            Param::Score => to_noise(&c, from, pred, x)?.broadcast_mul(&c.col(|k| -k.inv_beta())?),
            Param::Denoiser => to_denoiser(&c, from, pred, x),
            Param::Velocity => match from {
                // u = d_alpha z^ + d_beta (x - alpha z^) / beta  (eq. 20 with z = z^)
                Param::Denoiser => c.lin(
                    pred,
                    |k| k.d_alpha - k.d_beta * k.inv_beta() * k.alpha,
                    x,
                    |k| k.d_beta * k.inv_beta(),
                ),
                // u = (d_alpha / alpha) x + (d_beta - d_alpha beta / alpha) eps^  (Prop. 1)
                _ => {
                    let eps = to_noise(&c, from, pred, x)?;
                    c.lin(
                        x,
                        |k| k.d_alpha * k.inv_alpha(),
                        &eps,
                        |k| k.d_beta - k.d_alpha * k.beta * k.inv_alpha(),
                    )
                }
            },
        }
    }

    fn cols<'a>(&self, t: &[f64], like: &'a Tensor) -> Result<Cols<'a>> {
        if t.len() != like.dim(0)? {
            candle_core::bail!(
                "{} times for {} rows",
                t.len(),
                like.dim(0).unwrap_or_default()
            );
        }
        Ok(Cols {
            coefs: t.iter().map(|&t| self.coefs(t)).collect(),
            like,
        })
    }

    /// The `--path` name of this path, if it has one.
    pub fn cli_name(&self) -> Option<&'static str> {
        match *self {
            GaussianPath::CONDOT => Some("condot"),
            GaussianPath::SQRT => Some("sqrt"),
            GaussianPath::COSINE => Some("cosine"),
            _ => None,
        }
    }
}

/// eps^ = E[eps | x] from a prediction in any parametrisation; never divides by alpha.
fn to_noise(c: &Cols, from: Param, pred: &Tensor, x: &Tensor) -> Result<Tensor> {
    match from {
        Param::Noise => Ok(pred.clone()),
        Param::Score => pred.broadcast_mul(&c.col(|k| -k.beta)?),
        Param::Denoiser => c.lin(x, |k| k.inv_beta(), pred, |k| -k.alpha * k.inv_beta()),
        Param::Velocity => c.lin(x, |k| k.d_alpha / k.det(), pred, |k| -k.alpha / k.det()),
    }
}

/// z^ = E[z | x] from a prediction in any parametrisation.
fn to_denoiser(c: &Cols, from: Param, pred: &Tensor, x: &Tensor) -> Result<Tensor> {
    match from {
        Param::Denoiser => Ok(pred.clone()),
        Param::Velocity => c.lin(pred, |k| k.beta / k.det(), x, |k| -k.d_beta / k.det()),
        Param::Noise | Param::Score => {
            let eps = to_noise(c, from, pred, x)?;
            c.lin(x, |k| k.inv_alpha(), &eps, |k| -k.beta * k.inv_alpha())
        }
    }
}

/// Per-row schedule coefficients, applied as (N, 1, ..., 1) columns broadcast against `like`.
struct Cols<'a> {
    coefs: Vec<Coefs>,
    like: &'a Tensor,
}

impl Cols<'_> {
    /// The column f(coefs_i), shaped (N, 1, ..., 1) with the rank, dtype and device of `like`.
    fn col(&self, f: impl Fn(&Coefs) -> f64) -> Result<Tensor> {
        let mut shape = vec![1usize; self.like.rank()];
        shape[0] = self.coefs.len();
        let v: Vec<f32> = self.coefs.iter().map(|k| f(k) as f32).collect();
        Tensor::from_vec(v, shape, self.like.device())?.to_dtype(self.like.dtype())
    }

    /// f(coefs) a + g(coefs) b, row by row.
    fn lin(
        &self,
        a: &Tensor,
        f: impl Fn(&Coefs) -> f64,
        b: &Tensor,
        g: impl Fn(&Coefs) -> f64,
    ) -> Result<Tensor> {
        a.broadcast_mul(&self.col(f)?)?
            .add(&b.broadcast_mul(&self.col(g)?)?)
    }
}

/// The linear interpolant x_t = (1 - t) x_0 + t z between arbitrary x_0 ~ p_src and z ~ p_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LinearInterpolant;

impl LinearInterpolant {
    /// x_t = (1 - t) x0 + t z. x0, z: (N, ...); t: (N,), (N, 1) or one value.
    pub fn sample_xt(&self, x0: &Tensor, z: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.sample_xt_at(x0, z, &time_values(t, z.dim(0)?)?)
    }

    /// [`Self::sample_xt`] with the times as host values.
    pub fn sample_xt_at(&self, x0: &Tensor, z: &Tensor, t: &[f64]) -> Result<Tensor> {
        let c = GaussianPath::CONDOT.cols(t, z)?;
        c.lin(z, |k| k.alpha, x0, |k| k.beta)
    }

    /// The conditional velocity d/dt x_t = z - x0, the flow matching target.
    pub fn conditional_velocity(&self, x0: &Tensor, z: &Tensor) -> Result<Tensor> {
        z.sub(x0)
    }
}

/// A path as named in a model file's config and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Gaussian(GaussianPath),
    LinearInterpolant,
}

impl Path {
    /// The `--path` names: `condot`, `sqrt`, `cosine`, `linear-interp`.
    pub const CLI_NAMES: [&'static str; 4] = ["condot", "sqrt", "cosine", "linear-interp"];

    /// Parses a `--path` value.
    pub fn from_cli(s: &str) -> Option<Path> {
        match s {
            "condot" => Some(Path::Gaussian(GaussianPath::CONDOT)),
            "sqrt" => Some(Path::Gaussian(GaussianPath::SQRT)),
            "cosine" => Some(Path::Gaussian(GaussianPath::COSINE)),
            "linear-interp" => Some(Path::LinearInterpolant),
            _ => None,
        }
    }

    /// A short name for messages: the `--path` name, or `alpha/beta`.
    pub fn name(&self) -> String {
        match self {
            Path::Gaussian(g) => g
                .cli_name()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}/{}", g.alpha.name(), g.beta.name())),
            Path::LinearInterpolant => "linear-interp".to_string(),
        }
    }

    /// The config form: `{"kind":"gaussian","alpha":"linear","beta":"sqrt"}` or
    /// `{"kind":"linear-interpolant"}`.
    pub fn to_json(&self) -> Value {
        match self {
            Path::Gaussian(g) => {
                json!({"kind": "gaussian", "alpha": g.alpha.name(), "beta": g.beta.name()})
            }
            Path::LinearInterpolant => json!({"kind": "linear-interpolant"}),
        }
    }

    /// Parses the config form; the error says what was found.
    pub fn from_json(v: &Value) -> std::result::Result<Path, String> {
        match v["kind"].as_str() {
            Some("gaussian") => {
                let alpha = v["alpha"].as_str().and_then(Alpha::parse);
                let beta = v["beta"].as_str().and_then(Beta::parse);
                match (alpha, beta) {
                    (Some(alpha), Some(beta)) => Ok(Path::Gaussian(GaussianPath { alpha, beta })),
                    _ => Err(format!("unknown schedules in path {v}")),
                }
            }
            Some("linear-interpolant") => Ok(Path::LinearInterpolant),
            _ => Err(format!("unknown path {v}")),
        }
    }

    /// The Gaussian path whose marginals this path has when the source is N(0, I): itself, or
    /// CondOT for the linear interpolant. `None` for an interpolant from a data source.
    pub fn as_gaussian(&self, gaussian_source: bool) -> Option<GaussianPath> {
        match self {
            Path::Gaussian(g) => Some(*g),
            Path::LinearInterpolant if gaussian_source => Some(GaussianPath::CONDOT),
            Path::LinearInterpolant => None,
        }
    }
}

/// The times in `t` as host values, one per row: `t` is (N,), (N, 1) or holds one value.
pub fn time_values(t: &Tensor, n: usize) -> Result<Vec<f64>> {
    let v: Vec<f64> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    match v.len() {
        len if len == n => Ok(v),
        1 => Ok(vec![v[0]; n]),
        len => candle_core::bail!("expected {n} times (one per row) or one, got {len}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{self, Purpose};
    use candle_core::Device;

    const PATHS: [GaussianPath; 3] = [
        GaussianPath::CONDOT,
        GaussianPath::SQRT,
        GaussianPath::COSINE,
    ];

    fn normal(seed: u64, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let v = rng::normal_rows(seed, Purpose::Misc, 0, 1, n);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        for (i, (x, y)) in vals(a).iter().zip(vals(b)).enumerate() {
            let scale = 1.0f32.max(x.abs()).max(y.abs());
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Times on a grid strictly inside (0, 1), one per row.
    fn times(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 0.03 + 0.94 * i as f64 / (n - 1) as f64)
            .collect()
    }

    fn t_tensor(t: &[f64]) -> Tensor {
        Tensor::from_vec(t.to_vec(), t.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn schedules_hit_their_ends_and_derivatives_match_finite_differences() {
        for p in PATHS {
            assert_eq!(p.alpha.value(0.0), 0.0);
            assert!((p.alpha.value(1.0) - 1.0).abs() < 1e-15);
            assert!((p.beta.value(0.0) - 1.0).abs() < 1e-15);
            assert!(p.beta.value(1.0).abs() < 1e-15);
            for t in times(20) {
                let h = 1e-6;
                let fa = (p.alpha.value(t + h) - p.alpha.value(t - h)) / (2.0 * h);
                let fb = (p.beta.value(t + h) - p.beta.value(t - h)) / (2.0 * h);
                assert!((fa - p.alpha.deriv(t)).abs() < 1e-6, "{p:?} alpha' at {t}");
                assert!((fb - p.beta.deriv(t)).abs() < 1e-6, "{p:?} beta' at {t}");
                assert!(p.coefs(t).det() > 0.0);
            }
        }
    }

    #[test]
    fn conditional_velocity_is_the_time_derivative_of_the_sampling_map() {
        let n = 16;
        let (z, eps) = (normal(1, &[n, 3]), normal(2, &[n, 3]));
        let ts = times(n);
        for p in PATHS {
            let h = 1e-3;
            let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
            let minus: Vec<f64> = ts.iter().map(|t| t - h).collect();
            let fd = (p.sample_xt_at(&z, &eps, &plus).unwrap()
                - p.sample_xt_at(&z, &eps, &minus).unwrap())
            .unwrap()
            .affine(1.0 / (2.0 * h), 0.0)
            .unwrap();
            let x = p.sample_xt_at(&z, &eps, &ts).unwrap();
            let u = p.conditional_velocity(&x, &z, &t_tensor(&ts)).unwrap();
            // Central differences: error ~ h^2 |x'''| / 6, a few 1e-5 here; f32 rounding ~1e-4.
            assert_close(&u, &fd, 2e-3, &format!("{p:?} velocity"));
            let target = p.target_at(Param::Velocity, &z, &eps, &ts).unwrap();
            assert_close(&u, &target, 1e-4, &format!("{p:?} target"));
        }
    }

    #[test]
    fn conditional_velocity_and_score_equal_closed_forms() {
        let n = 12;
        let (x, z) = (normal(3, &[n, 2]), normal(4, &[n, 2]));
        let ts = times(n);
        let t = t_tensor(&ts);
        let xs = vals(&x);
        let zs = vals(&z);
        // CondOT: u = (z - x) / (1 - t) (notes eq. 21).
        let u = vals(
            &GaussianPath::CONDOT
                .conditional_velocity(&x, &z, &t)
                .unwrap(),
        );
        for i in 0..2 * n {
            let ti = ts[i / 2];
            let want = (zs[i] as f64 - xs[i] as f64) / (1.0 - ti);
            assert!((u[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0));
        }
        // Score = gradient of log N(x; alpha z, beta^2 I), by finite differences in f64.
        for p in PATHS {
            let s = vals(&p.conditional_score(&x, &z, &t).unwrap());
            for i in 0..2 * n {
                let k = p.coefs(ts[i / 2]);
                let logp =
                    |xi: f64| -(xi - k.alpha * zs[i] as f64).powi(2) / (2.0 * k.beta * k.beta);
                let h = 1e-5;
                let fd = (logp(xs[i] as f64 + h) - logp(xs[i] as f64 - h)) / (2.0 * h);
                assert!(
                    (s[i] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
                    "{p:?}: {} vs {fd}",
                    s[i]
                );
            }
        }
    }

    #[test]
    fn conditional_fields_at_x_t_are_the_training_targets() {
        let n = 10;
        let (z, eps) = (normal(5, &[n, 1, 2, 2]), normal(6, &[n, 1, 2, 2]));
        let ts = times(n);
        for p in PATHS {
            let x = p.sample_xt_at(&z, &eps, &ts).unwrap();
            let s = p.conditional_score(&x, &z, &t_tensor(&ts)).unwrap();
            let target = p.target_at(Param::Score, &z, &eps, &ts).unwrap();
            assert_close(&s, &target, 1e-4, &format!("{p:?} score"));
            // The conditional velocity is also the conversion of the conditional score.
            let u = p
                .convert_at(Param::Score, Param::Velocity, &s, &x, &ts)
                .unwrap();
            let want = p.target_at(Param::Velocity, &z, &eps, &ts).unwrap();
            assert_close(&u, &want, 1e-4, &format!("{p:?} score->velocity"));
        }
    }

    #[test]
    fn conversions_round_trip_for_all_schedules() {
        let all = [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser];
        let n = 20;
        let (pred, x) = (normal(7, &[n, 3]), normal(8, &[n, 3]));
        let ts = times(n);
        for p in PATHS {
            for from in all {
                for to in all {
                    let there = p.convert_at(from, to, &pred, &x, &ts).unwrap();
                    let back = p.convert_at(to, from, &there, &x, &ts).unwrap();
                    assert_close(&back, &pred, 2e-4, &format!("{p:?} {from:?}->{to:?}"));
                }
            }
        }
    }

    #[test]
    fn conversions_agree_with_proposition_1() {
        // u = (beta^2 d_alpha / alpha - d_beta beta) s + (d_alpha / alpha) x
        let n = 8;
        let (s, x) = (normal(9, &[n, 2]), normal(10, &[n, 2]));
        let ts = times(n);
        for p in PATHS {
            let u = vals(
                &p.convert_at(Param::Score, Param::Velocity, &s, &x, &ts)
                    .unwrap(),
            );
            let (sv, xv) = (vals(&s), vals(&x));
            for i in 0..2 * n {
                let k = p.coefs(ts[i / 2]);
                let want = (k.beta * k.beta * k.d_alpha / k.alpha - k.d_beta * k.beta)
                    * sv[i] as f64
                    + k.d_alpha / k.alpha * xv[i] as f64;
                assert!((u[i] as f64 - want).abs() < 1e-4 * want.abs().max(1.0));
            }
        }
    }

    #[test]
    fn safe_near_the_ends() {
        let n = 4;
        let (a, b) = (normal(11, &[n, 2]), normal(12, &[n, 2]));
        let all = [Param::Velocity, Param::Score, Param::Noise, Param::Denoiser];
        for p in PATHS {
            for t in [0.0, 1e-9, 1.0 - 1e-9, 1.0] {
                let ts = vec![t; n];
                let tt = t_tensor(&ts);
                let mut outs = vec![
                    p.conditional_velocity(&a, &b, &tt).unwrap(),
                    p.conditional_score(&a, &b, &tt).unwrap(),
                    p.target_at(Param::Velocity, &a, &b, &ts).unwrap(),
                    p.target_at(Param::Score, &a, &b, &ts).unwrap(),
                ];
                for from in all {
                    for to in all {
                        outs.push(p.convert_at(from, to, &a, &b, &ts).unwrap());
                    }
                }
                for o in outs {
                    assert!(vals(&o).iter().all(|v| v.is_finite()), "{p:?} at t={t}");
                }
            }
            // x_1 = z exactly: values are never clamped.
            let x1 = p.sample_xt_at(&a, &b, &[1.0; 4]).unwrap();
            assert_close(&x1, &a, 1e-7, "x_1");
        }
    }

    #[test]
    fn linear_interpolant_is_condot_for_gaussian_source() {
        let n = 6;
        let (x0, z) = (normal(13, &[n, 2]), normal(14, &[n, 2]));
        let ts = times(n);
        let li = LinearInterpolant;
        let a = li.sample_xt_at(&x0, &z, &ts).unwrap();
        let b = GaussianPath::CONDOT.sample_xt_at(&z, &x0, &ts).unwrap();
        assert_close(&a, &b, 1e-7, "x_t");
        let h = 1e-3;
        let plus: Vec<f64> = ts.iter().map(|t| t + h).collect();
        let fd = (li.sample_xt_at(&x0, &z, &plus).unwrap() - &a)
            .unwrap()
            .affine(1.0 / h, 0.0)
            .unwrap();
        assert_close(&li.conditional_velocity(&x0, &z).unwrap(), &fd, 1e-3, "u");
        assert_eq!(
            Path::LinearInterpolant.as_gaussian(true),
            Some(GaussianPath::CONDOT)
        );
        assert_eq!(Path::LinearInterpolant.as_gaussian(false), None);
    }

    #[test]
    fn path_specs_round_trip_through_json_and_cli_names() {
        for name in Path::CLI_NAMES {
            let p = Path::from_cli(name).unwrap();
            assert_eq!(Path::from_json(&p.to_json()).unwrap(), p);
            assert_eq!(p.name(), name);
        }
        assert_eq!(
            Path::from_json(&json!({"kind":"gaussian","alpha":"linear","beta":"sqrt"})),
            Ok(Path::Gaussian(GaussianPath::SQRT))
        );
        assert!(
            Path::from_json(&json!({"kind":"gaussian","alpha":"cubic","beta":"sqrt"})).is_err()
        );
        assert!(Path::from_cli("vp").is_none());
    }

    #[test]
    fn time_tensors_of_any_accepted_shape() {
        let t = Tensor::new(&[[0.5f32], [0.25]], &Device::Cpu).unwrap();
        assert_eq!(time_values(&t, 2).unwrap(), vec![0.5, 0.25]);
        let one = Tensor::new(0.5f32, &Device::Cpu).unwrap();
        assert_eq!(time_values(&one, 3).unwrap(), vec![0.5; 3]);
        assert!(time_values(&t, 3).is_err());
    }
}
