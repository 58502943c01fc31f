//! Schedulers kappa_t of the mixture probability path (notes section 8; Gat et al. 2024,
//! "Discrete flow matching"): kappa_0 = 0 (all noise) and kappa_1 = 1 (all data), increasing.
//!
//! ```text
//! linear     kappa_t = t                    kappa'_t = 1
//! quadratic  kappa_t = t^2                  kappa'_t = 2 t
//! cosine     kappa_t = 1 - cos(pi t / 2)    kappa'_t = (pi / 2) sin(pi t / 2)
//! ```
//! The mixture path keeps each token with probability kappa_t, so the conditional rate
//! kappa'_t / (1 - kappa_t) (delta_z - delta_x) ([`Kappa::rate`]) is the intensity with which a
//! still-noisy token jumps to its data value; given no jump by time s, the probability of a
//! jump before t is (kappa_t - kappa_s) / (1 - kappa_s) ([`Kappa::jump_probability`]).

use serde_json::{json, Value};

/// The scheduler kappa_t.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kappa {
    /// kappa_t = t
    Linear,
    /// kappa_t = t^2
    Quadratic,
    /// kappa_t = 1 - cos(pi t / 2)
    Cosine,
}

const HALF_PI: f64 = std::f64::consts::FRAC_PI_2;

impl Kappa {
    pub const ALL: [Kappa; 3] = [Kappa::Linear, Kappa::Quadratic, Kappa::Cosine];

    pub fn name(self) -> &'static str {
        match self {
            Kappa::Linear => "linear",
            Kappa::Quadratic => "quadratic",
            Kappa::Cosine => "cosine",
        }
    }

    pub fn parse(s: &str) -> Option<Kappa> {
        Kappa::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The config entry `{"kappa": name}`.
    pub fn to_json(self) -> Value {
        json!(self.name())
    }

    /// kappa_t for t in [0, 1].
    pub fn value(self, t: f64) -> f64 {
        match self {
            Kappa::Linear => t,
            Kappa::Quadratic => t * t,
            Kappa::Cosine => 1.0 - (HALF_PI * t).cos(),
        }
    }

    /// d kappa_t / dt.
    pub fn derivative(self, t: f64) -> f64 {
        match self {
            Kappa::Linear => 1.0,
            Kappa::Quadratic => 2.0 * t,
            Kappa::Cosine => HALF_PI * (HALF_PI * t).sin(),
        }
    }

    /// The jump intensity kappa'_t / (1 - kappa_t) of the conditional rate (infinite at t = 1,
    /// where every token must have reached the data).
    pub fn rate(self, t: f64) -> f64 {
        let rest = 1.0 - self.value(t);
        if rest <= 1e-12 {
            return f64::INFINITY;
        }
        self.derivative(t) / rest
    }

    /// The probability that a token still noisy at time s has jumped to its data value by t.
    pub fn jump_probability(self, s: f64, t: f64) -> f64 {
        let rest = 1.0 - self.value(s);
        if rest <= 1e-12 {
            return 1.0;
        }
        if self.value(t) >= 1.0 - 1e-12 {
            return 1.0;
        }
        ((self.value(t) - self.value(s)) / rest).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_derivative_and_monotone() {
        for k in Kappa::ALL {
            assert!(k.value(0.0).abs() < 1e-12, "{k:?}");
            assert!((k.value(1.0) - 1.0).abs() < 1e-12, "{k:?}");
            let mut last = -1.0;
            for i in 0..=100 {
                let t = i as f64 / 100.0;
                assert!(k.value(t) >= last);
                last = k.value(t);
                if (1..100).contains(&i) {
                    let h = 1e-6;
                    let fd = (k.value(t + h) - k.value(t - h)) / (2.0 * h);
                    assert!((fd - k.derivative(t)).abs() < 1e-6, "{k:?} at {t}");
                }
            }
            assert_eq!(Kappa::parse(k.name()), Some(k));
            assert!(k.rate(1.0).is_infinite());
            assert_eq!(k.jump_probability(0.3, 1.0), 1.0);
        }
    }

    #[test]
    fn jump_probability_integrates_the_rate() {
        // P(no jump in [s, t]) = exp(-int_s^t rate) = (1 - kappa_t) / (1 - kappa_s).
        for k in Kappa::ALL {
            let (s, t) = (0.2, 0.7);
            let n = 20_000;
            let h = (t - s) / n as f64;
            let integral: f64 = (0..n).map(|i| k.rate(s + (i as f64 + 0.5) * h) * h).sum();
            let p = 1.0 - (-integral).exp();
            assert!((p - k.jump_probability(s, t)).abs() < 1e-6, "{k:?}");
        }
    }
}
