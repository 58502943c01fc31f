//! Continuous-time Markov chains on a finite state space (notes section 8.1).
//!
//! A CTMC is given by its rate matrix Q_t(y | x) (here Q[x][y]): the off-diagonal entries are
//! non-negative jump rates x -> y and every row sums to zero, Q(x | x) = -sum_{y != x} Q(y | x).
//! The transition probabilities solve the Kolmogorov forward equation; for a time-homogeneous Q
//! they are P(X_t = y | X_0 = x) = exp(t Q)[x][y] ([`RateMatrix::transition`]).
//!
//! Simulation with step h (the discrete analogue of the Euler method):
//! ```text
//! euler         P(X_{t+h} = y | X_t = x) = 1[y = x] + h Q_t(y | x)
//! tau-leaping   rates frozen over [t, t + h]: stay with probability exp(-h R), R = sum_{y != x} Q(y | x),
//!               else jump to y with probability Q(y | x) / R (the first jump of the Poisson clocks;
//!               later jumps within the step are dropped, an O(h^2) error like Euler's)
//! ```
//! Both are first order. Euler needs h R <= 1 (a longer step is normalised to a certain jump);
//! tau-leaping is a distribution for every h. For sequences (x^1..x^L) the rates factorise over
//! positions, Q(y | x) = sum_l delta(y^{-l} = x^{-l}) Q^l(y^l | x), so each position steps
//! independently given the whole current sequence ([`step_position`]).

use rand::Rng;

/// How one step of a CTMC is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Solver {
    /// 1[y = x] + h Q(y | x)
    Euler,
    /// Frozen rates, first jump of the Poisson clocks: stay with probability exp(-h R)
    TauLeaping,
}

impl Solver {
    pub fn name(self) -> &'static str {
        match self {
            Solver::Euler => "euler",
            Solver::TauLeaping => "tau-leaping",
        }
    }
}

/// A time-homogeneous rate matrix on `n` states, row-major Q[x * n + y].
#[derive(Clone, Debug, PartialEq)]
pub struct RateMatrix {
    n: usize,
    q: Vec<f64>,
}

impl RateMatrix {
    /// Checks that off-diagonal rates are non-negative and finite and each row sums to zero.
    pub fn new(n: usize, q: Vec<f64>) -> Result<RateMatrix, String> {
        if q.len() != n * n {
            return Err(format!(
                "a rate matrix on {n} states needs {} entries, got {}",
                n * n,
                q.len()
            ));
        }
        for x in 0..n {
            let row = &q[x * n..(x + 1) * n];
            if let Some(y) = (0..n).find(|&y| y != x && !(row[y] >= 0.0 && row[y].is_finite())) {
                return Err(format!(
                    "rate {x} -> {y} is {}, must be non-negative",
                    row[y]
                ));
            }
            let scale: f64 = row.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
            let sum: f64 = row.iter().sum();
            if sum.abs() > 1e-9 * scale {
                return Err(format!("row {x} of the rate matrix sums to {sum}, not 0"));
            }
        }
        Ok(RateMatrix { n, q })
    }

    /// A rate matrix from its off-diagonal rates; the diagonal is set so rows sum to zero.
    pub fn from_off_diagonal(n: usize, mut q: Vec<f64>) -> Result<RateMatrix, String> {
        if q.len() == n * n {
            for x in 0..n {
                q[x * n + x] = 0.0;
                q[x * n + x] = -q[x * n..(x + 1) * n].iter().sum::<f64>();
            }
        }
        RateMatrix::new(n, q)
    }

    pub fn states(&self) -> usize {
        self.n
    }

    /// Row x: the rates Q(. | x), diagonal included.
    pub fn row(&self, x: usize) -> &[f64] {
        &self.q[x * self.n..(x + 1) * self.n]
    }

    /// exp(t Q) by scaling and squaring of the Taylor series, row-major (n, n).
    pub fn transition(&self, t: f64) -> Vec<f64> {
        let n = self.n;
        let norm = (0..n)
            .map(|x| self.row(x).iter().map(|v| v.abs()).sum::<f64>())
            .fold(0.0, f64::max)
            * t.abs();
        let squarings = if norm > 0.25 {
            (norm / 0.25).log2().ceil() as u32
        } else {
            0
        };
        let a: Vec<f64> = self
            .q
            .iter()
            .map(|v| v * t / 2f64.powi(squarings as i32))
            .collect();
        let mut result = identity(n);
        let mut term = identity(n);
        for k in 1..30 {
            term = matmul(&term, &a, n).iter().map(|v| v / k as f64).collect();
            result.iter_mut().zip(&term).for_each(|(r, v)| *r += v);
        }
        for _ in 0..squarings {
            result = matmul(&result, &result, n);
        }
        result
    }
}

fn identity(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    (0..n).for_each(|i| m[i * n + i] = 1.0);
    m
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

/// One step of length `h` from state `x` with jump rates `rates[y]` (y != x; the entry at x is
/// ignored), using the uniform draw `u` in [0, 1). Returns the new state.
pub fn step_position(solver: Solver, x: usize, rates: &[f64], h: f64, u: f64) -> usize {
    let total: f64 = rates
        .iter()
        .enumerate()
        .filter(|&(y, _)| y != x)
        .map(|(_, &r)| r.max(0.0))
        .sum();
    if total <= 0.0 {
        return x;
    }
    let p_jump = match solver {
        Solver::Euler => (h * total).min(1.0),
        Solver::TauLeaping => 1.0 - (-h * total).exp(),
    };
    if u >= p_jump {
        return x;
    }
    // Given a jump, the target is y with probability rates[y] / total; reuse u rescaled.
    let mut target = u / p_jump * total;
    let mut last = x;
    for (y, &r) in rates.iter().enumerate() {
        if y == x || r <= 0.0 {
            continue;
        }
        last = y;
        if target < r {
            return y;
        }
        target -= r;
    }
    last
}

/// Simulates the chain `rate_at(t)` from `x0` over [0, t_end] in `steps` steps.
pub fn simulate(
    solver: Solver,
    rate_at: &dyn Fn(f64) -> RateMatrix,
    x0: usize,
    t_end: f64,
    steps: usize,
    rng: &mut impl Rng,
) -> usize {
    let h = t_end / steps as f64;
    let mut x = x0;
    for k in 0..steps {
        let q = rate_at(k as f64 * h);
        x = step_position(solver, x, q.row(x), h, rng.random::<f64>());
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, Purpose};

    #[test]
    fn rows_must_sum_to_zero_and_rates_be_non_negative() {
        assert!(RateMatrix::new(2, vec![-1.0, 1.0, 2.0, -2.0]).is_ok());
        assert!(RateMatrix::new(2, vec![-1.0, 1.0, 2.0, -1.0])
            .unwrap_err()
            .contains("sums to"));
        assert!(RateMatrix::new(2, vec![1.0, -1.0, 0.0, 0.0])
            .unwrap_err()
            .contains("non-negative"));
        let q =
            RateMatrix::from_off_diagonal(3, vec![0., 1., 2., 0.5, 0., 0., 3., 1., 0.]).unwrap();
        for x in 0..3 {
            assert!(q.row(x).iter().sum::<f64>().abs() < 1e-12);
        }
    }

    #[test]
    fn two_state_transition_matches_the_closed_form() {
        // Q = [[-a, a], [b, -b]]: P(0 -> 0) = (b + a e^{-(a+b)t}) / (a + b).
        let (a, b) = (1.5, 0.5);
        let q = RateMatrix::new(2, vec![-a, a, b, -b]).unwrap();
        for t in [0.0, 0.1, 1.0, 7.0] {
            let p = q.transition(t);
            let p00 = (b + a * (-(a + b) * t).exp()) / (a + b);
            let p11 = (a + b * (-(a + b) * t).exp()) / (a + b);
            assert!(
                (p[0] - p00).abs() < 1e-12 && (p[3] - p11).abs() < 1e-12,
                "{t}: {p:?}"
            );
            assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        }
    }

    /// Monte Carlo of each solver against exp(tQ) for a 3-state chain.
    #[test]
    fn simulation_matches_exp_tq() {
        let q = RateMatrix::from_off_diagonal(3, vec![0., 1., 0.5, 0.2, 0., 1.5, 1.0, 0.3, 0.])
            .unwrap();
        let t = 1.2;
        let exact = q.transition(t);
        let n = 20_000;
        for solver in [Solver::Euler, Solver::TauLeaping] {
            for x0 in [0, 2] {
                let mut counts = [0usize; 3];
                let mut rng = stream(5, Purpose::Misc, x0 as u64);
                for _ in 0..n {
                    counts[simulate(solver, &|_| q.clone(), x0, t, 200, &mut rng)] += 1;
                }
                for y in 0..3 {
                    let p = exact[x0 * 3 + y];
                    let se = (p * (1.0 - p) / n as f64).sqrt();
                    let f = counts[y] as f64 / n as f64;
                    // 4 standard errors plus the O(h) bias of a first-order scheme (h = 0.006).
                    assert!(
                        (f - p).abs() < 4.0 * se + 0.01,
                        "{solver:?} {x0}->{y}: {f} vs {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn euler_step_probabilities() {
        // From x = 0 with rates (., 2, 1) and h = 0.1: stay 0.7, y=1 0.2, y=2 0.1.
        let rates = [-3.0, 2.0, 1.0];
        let m = 10_000;
        let mut counts = [0usize; 3];
        for i in 0..m {
            let u = (i as f64 + 0.5) / m as f64;
            counts[step_position(Solver::Euler, 0, &rates, 0.1, u)] += 1;
        }
        assert_eq!(counts, [7000, 2000, 1000]);
        // A step longer than 1 / R jumps for sure.
        assert_ne!(step_position(Solver::Euler, 0, &rates, 1.0, 0.999), 0);
    }
}
