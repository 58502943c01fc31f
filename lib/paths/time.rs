//! The density of the training time t in the conditional flow matching loss.
//!
//! The notes (eq. 26/31, Algorithm 3) draw t ~ U[0, 1]. Any density with full support on [0, 1]
//! keeps the minimiser (the marginal field u_t, at every t), and only reweights the times: a
//! density that puts more mass where the regression is hardest (middle times, where x_t is
//! neither noise nor data) spends the network's capacity there. Esser et al. 2024 ("Scaling
//! rectified flow transformers for high-resolution image synthesis", section 3.1) compare such
//! densities; two of theirs are here:
//!
//! | `--time-density`   | sampling                                      | CDF F(t)                  |
//! |--------------------|-----------------------------------------------|---------------------------|
//! | `uniform`          | t = u, u ~ U[0, 1)                            | t                         |
//! | `logit-normal:m,s` | t = sigmoid(m + s n), n ~ N(0, 1)             | Phi((logit t - m) / s)    |
//! | `mode:s`           | t = f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u) | F(f(u)) = 1 - u          |
//!
//! Their paper runs time the other way (t = 1 noise); the logit-normal with m = 0 and the mode
//! density are symmetric about t = 1/2, and for the logit-normal their m is our -m. f is
//! decreasing on [0, 1] for s in [-1, 2 / (pi - 2)], so u -> f(u) maps U[0, 1] onto [0, 1] with
//! P(t <= f(u)) = 1 - u; s = 0 is uniform, s > 0 favours middle times, s < 0 the ends. Each
//! step's times come from the stream (seed, Time, step): a uniform draw per time, or a normal
//! draw for the logit-normal.

use std::f64::consts::PI;

use crate::rng;

/// The density of the training time t (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimeDensity {
    Uniform,
    /// sigmoid of N(m, s^2), s > 0.
    LogitNormal {
        m: f64,
        s: f64,
    },
    /// Esser et al.'s mode sampling with scale s in [-1, 2 / (pi - 2)].
    Mode {
        s: f64,
    },
}

/// The largest mode scale for which f stays monotone: 2 / (pi - 2).
pub const MODE_MAX: f64 = 2.0 / (PI - 2.0);

impl TimeDensity {
    /// The form `--time-density` takes and the model config stores.
    pub fn name(&self) -> String {
        match self {
            TimeDensity::Uniform => "uniform".into(),
            TimeDensity::LogitNormal { m, s } => format!("logit-normal:{m},{s}"),
            TimeDensity::Mode { s } => format!("mode:{s}"),
        }
    }

    /// f(u) of the mode density.
    fn mode_map(s: f64, u: f64) -> f64 {
        let c = (PI * u / 2.0).cos();
        (1.0 - u - s * (c * c - 1.0 + u)).clamp(0.0, 1.0)
    }

    /// Fills `out` with times drawn from `rng` (one uniform or normal draw per time).
    pub fn fill(&self, rng: &mut impl rand::Rng, out: &mut [f32]) {
        match *self {
            TimeDensity::Uniform => rng::fill_uniform(rng, out, 0.0, 1.0),
            TimeDensity::LogitNormal { m, s } => {
                rng::fill_normal(rng, out);
                for v in out.iter_mut() {
                    *v = (1.0 / (1.0 + (-(m + s * *v as f64)).exp())) as f32;
                }
            }
            TimeDensity::Mode { s } => {
                rng::fill_uniform(rng, out, 0.0, 1.0);
                for v in out.iter_mut() {
                    *v = Self::mode_map(s, *v as f64) as f32;
                }
            }
        }
    }

    /// The quantile F^{-1}(p), p in [0, 1]: a uniform draw (or a stratum of uniform draws) sent
    /// through it has this density, so stratified times stay stratified (fit-denoiser). Exact for
    /// `uniform` (p itself) and `mode` (f(1 - p)); the logit-normal's by bisection of its CDF.
    pub fn quantile(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        match *self {
            TimeDensity::Uniform => p,
            TimeDensity::Mode { s } => Self::mode_map(s, 1.0 - p),
            TimeDensity::LogitNormal { .. } => {
                let (mut lo, mut hi) = (0.0, 1.0);
                for _ in 0..60 {
                    let mid = 0.5 * (lo + hi);
                    if self.cdf(mid) < p {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                0.5 * (lo + hi)
            }
        }
    }

    /// P(T <= t), for t in [0, 1].
    pub fn cdf(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        match *self {
            TimeDensity::Uniform => t,
            TimeDensity::LogitNormal { m, s } => {
                if t <= 0.0 {
                    return 0.0;
                }
                if t >= 1.0 {
                    return 1.0;
                }
                let z = ((t / (1.0 - t)).ln() - m) / s;
                0.5 * (1.0 + crate::nn::ops::erf((z / std::f64::consts::SQRT_2) as f32) as f64)
            }
            TimeDensity::Mode { s } => {
                // f is decreasing: find u with f(u) = t by bisection; then F(t) = 1 - u.
                let (mut lo, mut hi) = (0.0, 1.0);
                for _ in 0..60 {
                    let mid = 0.5 * (lo + hi);
                    if Self::mode_map(s, mid) > t {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                1.0 - 0.5 * (lo + hi)
            }
        }
    }
}

impl std::str::FromStr for TimeDensity {
    type Err = String;

    /// Parses `uniform`, `logit-normal` (m = 0, s = 1), `logit-normal:M,S`, `mode:S`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, args) = text.split_once(':').unwrap_or((text, ""));
        let nums = || -> Result<Vec<f64>, String> {
            args.split(',')
                .map(|a| {
                    a.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| format!("'{a}' in '{text}' is not a finite number"))
                })
                .collect()
        };
        match (kind, args.is_empty()) {
            ("uniform", true) => Ok(TimeDensity::Uniform),
            ("logit-normal", true) => Ok(TimeDensity::LogitNormal { m: 0.0, s: 1.0 }),
            ("logit-normal", false) => match nums()?[..] {
                [m, s] if s > 0.0 => Ok(TimeDensity::LogitNormal { m, s }),
                [_, s] => Err(format!("the logit-normal's s must be positive, got {s}")),
                _ => Err(format!("expected logit-normal:M,S, got '{text}'")),
            },
            ("mode", false) => match nums()?[..] {
                [s] if (-1.0..=MODE_MAX).contains(&s) => Ok(TimeDensity::Mode { s }),
                [s] => Err(format!(
                    "the mode density's s must be in [-1, {MODE_MAX:.3}] (f monotone), got {s}"
                )),
                _ => Err(format!("expected mode:S, got '{text}'")),
            },
            _ => Err(format!(
                "expected uniform, logit-normal[:M,S] or mode:S, got '{text}'"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Purpose;

    /// The Kolmogorov-Smirnov statistic sup |F_n(t) - F(t)| of `x` against `cdf`.
    fn ks(mut x: Vec<f32>, cdf: impl Fn(f64) -> f64) -> f64 {
        x.sort_by(|a, b| a.total_cmp(b));
        let n = x.len() as f64;
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let f = cdf(v as f64);
                (f - i as f64 / n).abs().max((f - (i + 1) as f64 / n).abs())
            })
            .fold(0.0, f64::max)
    }

    /// F(F^{-1}(p)) = p, and F^{-1} of a uniform stratum passes the KS test of its density.
    #[test]
    fn quantiles_invert_the_cdf() {
        let densities = [
            TimeDensity::Uniform,
            TimeDensity::LogitNormal { m: 0.0, s: 1.0 },
            TimeDensity::LogitNormal { m: -0.5, s: 0.7 },
            TimeDensity::Mode { s: 1.29 },
            TimeDensity::Mode { s: -0.5 },
        ];
        for d in densities {
            for i in 1..100 {
                let p = i as f64 / 100.0;
                let q = d.quantile(p);
                assert!((0.0..=1.0).contains(&q), "{d:?}");
                // The logit-normal's CDF goes through an f32 erf: about 1e-7.
                assert!(
                    (d.cdf(q) - p).abs() < 1e-6,
                    "{d:?}: F(F^-1({p})) = {}",
                    d.cdf(q)
                );
            }
            let n = 5000;
            let x: Vec<f32> = (0..n)
                .map(|i| d.quantile((i as f64 + 0.5) / n as f64) as f32)
                .collect();
            assert!(ks(x.clone(), |t| d.cdf(t)) < 1e-3, "{d:?}");
            if d != TimeDensity::Uniform {
                assert!(ks(x, |t| t) > 0.02, "{d:?} is not uniform");
            }
        }
    }

    #[test]
    fn samples_match_their_cdf_and_not_another() {
        let n = 20_000;
        // The 0.1% critical value of the KS statistic is 1.95 / sqrt(n).
        let bound = 1.95 / (n as f64).sqrt();
        let densities = [
            TimeDensity::Uniform,
            TimeDensity::LogitNormal { m: 0.0, s: 1.0 },
            TimeDensity::LogitNormal { m: 0.7, s: 0.5 },
            TimeDensity::Mode { s: 1.29 },
            TimeDensity::Mode { s: -0.8 },
        ];
        let draws: Vec<Vec<f32>> = densities
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let mut t = vec![0f32; n];
                d.fill(&mut rng::stream(k as u64, Purpose::Time, 0), &mut t);
                assert!(t.iter().all(|v| (0.0..=1.0).contains(v)), "{d:?}");
                t
            })
            .collect();
        for (i, d) in densities.iter().enumerate() {
            let own = ks(draws[i].clone(), |t| d.cdf(t));
            assert!(own < bound, "{d:?}: KS {own} >= {bound}");
            // Each other density's samples are far from this CDF: the test can fail.
            for (j, x) in draws.iter().enumerate().filter(|(j, _)| *j != i) {
                let other = ks(x.clone(), |t| d.cdf(t));
                assert!(
                    other > 3.0 * bound,
                    "{d:?} accepts {:?}: {other}",
                    densities[j]
                );
            }
        }
    }

    #[test]
    fn closed_form_points_and_parsing() {
        let ln = TimeDensity::LogitNormal { m: 0.0, s: 1.0 };
        assert!((ln.cdf(0.5) - 0.5).abs() < 1e-6);
        // logit(0.8) = ln 4 = 1.386: Phi(1.386) = 0.9172.
        assert!((ln.cdf(0.8) - 0.9172).abs() < 1e-3);
        let mode = TimeDensity::Mode { s: 0.0 };
        assert!((mode.cdf(0.3) - 0.3).abs() < 1e-9, "s = 0 is uniform");
        for s in ["uniform", "logit-normal:0.5,1.5", "mode:1.29"] {
            assert_eq!(s.parse::<TimeDensity>().unwrap().name(), s);
        }
        assert_eq!(
            "logit-normal".parse::<TimeDensity>().unwrap(),
            TimeDensity::LogitNormal { m: 0.0, s: 1.0 }
        );
        for bad in [
            "normal",
            "logit-normal:0,-1",
            "logit-normal:1",
            "mode:3",
            "mode:x",
            "uniform:1",
        ] {
            assert!(bad.parse::<TimeDensity>().is_err(), "{bad}");
        }
    }
}
