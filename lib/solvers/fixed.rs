//! The fixed-step rules (Euler, Heun, RK4, Euler-Maruyama; see the module docs of
//! [`crate::solvers`] for their formulas) and the per-sample Brownian increments that
//! Euler-Maruyama draws.

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use crate::fields::Field;
use crate::rng::{self, Purpose};

/// Per-sample Brownian streams (seed, Brownian, first + i), held for a whole run.
pub struct BrownianNoise {
    streams: Vec<ChaCha8Rng>,
}

impl BrownianNoise {
    /// Streams for samples `first..first + n`.
    pub fn new(seed: u64, first: u64, n: usize) -> Self {
        let streams = (0..n as u64)
            .map(|i| rng::stream(seed, Purpose::Brownian, first + i))
            .collect();
        BrownianNoise { streams }
    }

    /// The next ε ~ N(0, I) shaped like `like` (N, ...): each sample draws its elements from
    /// its own stream, continuing where its previous draw ended.
    pub fn next(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        let n = self.streams.len();
        let per = like.elem_count() / n.max(1);
        let mut z = vec![0f32; n * per];
        for (row, s) in z.chunks_mut(per.max(1)).zip(self.streams.iter_mut()) {
            rng::fill_normal(s, row);
        }
        Tensor::from_vec(z, like.shape(), like.device())?.to_dtype(like.dtype())
    }
}

/// One Euler step: x + h u_t(x).
pub fn euler_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    x + f.drift(x, t)?.affine(h, 0.0)?
}

/// One Heun step: the trapezoid rule with an Euler predictor.
pub fn heun_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    let k1 = f.drift(x, t)?;
    let pred = (x + k1.affine(h, 0.0)?)?;
    let k2 = f.drift(&pred, t + h)?;
    x + (k1 + k2)?.affine(h / 2.0, 0.0)?
}

/// One classical Runge-Kutta step of order 4.
pub fn rk4_step(f: &dyn Field, x: &Tensor, t: f64, h: f64) -> candle_core::Result<Tensor> {
    let k1 = f.drift(x, t)?;
    let k2 = f.drift(&(x + k1.affine(h / 2.0, 0.0)?)?, t + h / 2.0)?;
    let k3 = f.drift(&(x + k2.affine(h / 2.0, 0.0)?)?, t + h / 2.0)?;
    let k4 = f.drift(&(x + k3.affine(h, 0.0)?)?, t + h)?;
    let sum = (k1 + k4)?.add(&(k2 + k3)?.affine(2.0, 0.0)?)?;
    x + sum.affine(h / 6.0, 0.0)?
}

/// One Euler-Maruyama step with standard normal `z` shaped like `x`.
pub fn euler_maruyama_step(
    f: &dyn Field,
    x: &Tensor,
    t: f64,
    h: f64,
    z: &Tensor,
) -> candle_core::Result<Tensor> {
    let noise = z.affine(f.diffusion(t) * h.abs().sqrt(), 0.0)?;
    (x + f.drift(x, t)?.affine(h, 0.0)?)? + noise
}

#[cfg(test)]
mod tests {
    use crate::densities::Gaussian;
    use crate::fields::{Brownian, Field, Langevin, LinearOde, Ou};
    use crate::solvers::{solve, uniform_grid, Method, SolveOptions};
    use candle_core::{Device, Tensor};

    fn cpu() -> Device {
        Device::Cpu
    }

    /// |X_1 - x0 e^{-theta}| for dx/dt = -theta x in f64, x0 = 1, with `steps` steps.
    fn linear_error(method: Method, steps: usize) -> f64 {
        let theta = 1.5;
        let x0 = Tensor::new(&[[1.0f64]], &cpu()).unwrap();
        let opts = SolveOptions {
            method,
            ..Default::default()
        };
        let sol = solve(
            &LinearOde { theta },
            &x0,
            &uniform_grid(0.0, 1.0, steps),
            &opts,
            None,
        )
        .unwrap();
        let x1 = sol.x.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
        (x1 - (-theta).exp()).abs()
    }

    /// The observed order log2(e(h) / e(h/2)), averaged over three halvings.
    fn observed_order(method: Method) -> f64 {
        let errs: Vec<f64> = [8, 16, 32, 64]
            .iter()
            .map(|&s| linear_error(method, s))
            .collect();
        errs.windows(2).map(|w| (w[0] / w[1]).log2()).sum::<f64>() / 3.0
    }

    #[test]
    fn convergence_orders_on_a_linear_ode() {
        let euler = observed_order(Method::Euler);
        let heun = observed_order(Method::Heun);
        let rk4 = observed_order(Method::Rk4);
        assert!((euler - 1.0).abs() < 0.1, "euler order {euler}");
        assert!((heun - 2.0).abs() < 0.1, "heun order {heun}");
        assert!((rk4 - 4.0).abs() < 0.2, "rk4 order {rk4}");
    }

    /// Simulates `field` from x0 = `start` for `n` samples, keeping every state.
    fn simulate(
        field: &dyn Field,
        n: usize,
        start: f64,
        t1: f64,
        steps: usize,
        seed: u64,
    ) -> Vec<Vec<f64>> {
        let x0 = Tensor::full(start, (n, 1), &cpu()).unwrap();
        let opts = SolveOptions {
            seed,
            save_every: Some(1),
            ..Default::default()
        };
        let sol = solve(field, &x0, &uniform_grid(0.0, t1, steps), &opts, None).unwrap();
        sol.trajectory
            .unwrap()
            .squeeze(2)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    }

    fn mean_var(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
        let n = v.clone().count() as f64;
        let mean = v.clone().sum::<f64>() / n;
        let var = v.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn brownian_motion_has_variance_t_and_independent_increments() {
        let n = 4000;
        let paths = simulate(
            &Brownian {
                mu: 0.0,
                sigma: 1.0,
            },
            n,
            0.0,
            1.0,
            20,
            1,
        );
        for k in [5, 10, 20] {
            let t = k as f64 / 20.0;
            let (mean, var) = mean_var(paths.iter().map(|p| p[k]));
            // SE of the mean sqrt(t/n); of the variance t sqrt(2/(n-1)).
            assert!(
                mean.abs() < 4.0 * (t / n as f64).sqrt(),
                "t {t}: mean {mean}"
            );
            assert!(
                (var - t).abs() < 4.0 * t * (2.0 / n as f64).sqrt(),
                "t {t}: var {var}"
            );
        }
        // Corr(W_0.5, W_1 - W_0.5) = 0, SE 1/sqrt(n).
        let a: Vec<f64> = paths.iter().map(|p| p[10]).collect();
        let b: Vec<f64> = paths.iter().map(|p| p[20] - p[10]).collect();
        let cov = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / n as f64;
        let corr = cov / (0.5f64.sqrt() * 0.5f64.sqrt());
        assert!(corr.abs() < 4.0 / (n as f64).sqrt(), "corr {corr}");
    }

    #[test]
    fn ou_mean_and_variance_follow_the_closed_form() {
        let (theta, sigma, x0, n) = (0.8, 0.7, 2.0, 4000);
        let paths = simulate(&Ou { theta, sigma }, n, x0, 3.0, 300, 2);
        for k in [50, 100, 300] {
            let t = k as f64 * 0.01;
            let want_mean = x0 * (-theta * t).exp();
            let want_var = sigma * sigma / (2.0 * theta) * (1.0 - (-2.0 * theta * t).exp());
            let (mean, var) = mean_var(paths.iter().map(|p| p[k]));
            assert!(
                (mean - want_mean).abs() < 4.0 * (want_var / n as f64).sqrt(),
                "t {t}: {mean}"
            );
            assert!(
                (var - want_var).abs() < 4.0 * want_var * (2.0 / n as f64).sqrt() + 0.01 * want_var,
                "t {t}: var {var} vs {want_var}"
            );
        }
    }

    #[test]
    fn langevin_on_a_gaussian_is_the_ou_process() {
        // Remark 20: p = N(0, s²) gives theta = sigma²/(2 s²); same noise, same paths.
        let (sigma, s) = (1.2, 0.8);
        let lang = Langevin {
            sigma,
            density: Box::new(Gaussian::new(vec![0.0], vec![s]).unwrap()),
        };
        let ou = Ou {
            theta: sigma * sigma / (2.0 * s * s),
            sigma,
        };
        let a = simulate(&lang, 2000, 3.0, 6.0, 300, 4);
        let b = simulate(&ou, 2000, 3.0, 6.0, 300, 4);
        for (pa, pb) in a.iter().zip(&b) {
            assert!((pa[300] - pb[300]).abs() < 1e-9);
        }
        // Stationary law N(0, s²), reached by t = 6 (theta t = 6.75).
        let (mean, var) = mean_var(a.iter().map(|p| p[300]));
        assert!(mean.abs() < 4.0 * s / (2000f64).sqrt(), "mean {mean}");
        assert!(
            (var - s * s).abs() < 4.0 * s * s * (2.0 / 2000f64).sqrt(),
            "var {var}"
        );
    }

    /// The energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| between two point sets (N, D), with
    /// unbiased (U-statistic) within-set terms, so that it is 0 on average for equal laws.
    fn energy_distance(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        let dist = |x: &[f64], y: &[f64]| {
            x.iter()
                .zip(y)
                .map(|(u, v)| (u - v).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let mut cross = 0.0;
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                if i != j {
                    cross += dist(x, y);
                }
            }
        }
        let cross = cross / (a.len() * b.len() - a.len().min(b.len())) as f64;
        let within = |p: &[Vec<f64>]| {
            let mut s = 0.0;
            for i in 0..p.len() {
                for j in i + 1..p.len() {
                    s += dist(&p[i], &p[j]);
                }
            }
            2.0 * s / (p.len() * (p.len() - 1)) as f64
        };
        2.0 * cross - within(a) - within(b)
    }

    /// A Langevin-like field with a scaled drift, to show the test catches wrong drifts.
    struct Scaled(Langevin, f64);
    impl Field for Scaled {
        fn drift(&self, x: &Tensor, t: f64) -> candle_core::Result<Tensor> {
            self.0.drift(x, t)?.affine(self.1, 0.0)
        }
        fn diffusion(&self, t: f64) -> f64 {
            self.0.diffusion(t)
        }
        fn describe(&self) -> String {
            "scaled".into()
        }
        fn sample_shape(&self) -> Option<Vec<usize>> {
            None
        }
    }

    /// Langevin (sigma 0.6, t from 0 to 5 in 1000 steps) on the lab's mixture, with its drift
    /// multiplied by `scale` (1 is right), from `x0` (N, 2); returns the final particles.
    fn lab_langevin(x0: &ndarray::Array2<f64>, scale: f64) -> Vec<Vec<f64>> {
        let target = crate::densities::GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let f = Scaled(
            Langevin {
                sigma: 0.6,
                density: Box::new(target),
            },
            scale,
        );
        let x0 = Tensor::from_vec(x0.iter().copied().collect(), x0.dim(), &cpu()).unwrap();
        let opts = SolveOptions {
            seed: 5,
            ..Default::default()
        };
        let sol = solve(&f, &x0, &uniform_grid(0.0, 5.0, 1000), &opts, None).unwrap();
        sol.x.to_vec2::<f64>().unwrap()
    }

    fn rows(a: &ndarray::Array2<f64>) -> Vec<Vec<f64>> {
        a.rows().into_iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn langevin_keeps_the_mixture_stationary() {
        // Started at samples of p, Langevin stays at p. Comparing the final particles with
        // their own starting points keeps the mode weights equal in both sets, which removes
        // the multinomial noise that would swamp within-mode errors. Over four seeds the right
        // drift gave |ED| < 0.001, a drift twice or half as large 0.007 to 0.012 (a missing
        // 1/2 narrows every mode), a flipped sign 0.74 to 0.83.
        use crate::densities::{Density, GaussianMixture};
        let target = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x0 = target.sample(1000, 11, 0);
        let start = rows(&x0);
        let ed = |scale| energy_distance(&lab_langevin(&x0, scale), &start);
        let right = ed(1.0);
        assert!(right.abs() < 0.004, "energy distance {right}");
        for wrong in [2.0, 0.5, -1.0] {
            let e = ed(wrong);
            assert!(e > 0.004, "a drift scaled by {wrong} went unnoticed: {e}");
        }
    }

    #[test]
    fn langevin_from_the_labs_broad_start_reaches_the_modes() {
        // The lab's run from N(0, 20 I): particles fall into the modes, but the mode weights
        // follow the basins of attraction, not p (no mode hopping in t = 5), so the distance to
        // p stays about 1.5; with a flipped drift it is about 7.4.
        use crate::densities::{Density, GaussianMixture};
        let target = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x0 = Gaussian::isotropic(2, 20f64.sqrt())
            .unwrap()
            .sample(1000, 1, 0);
        let want = rows(&target.sample(1000, 2, 0));
        let right = energy_distance(&lab_langevin(&x0, 1.0), &want);
        assert!(right < 3.0, "energy distance {right}");
        let flipped = energy_distance(&lab_langevin(&x0, -1.0), &want);
        assert!(flipped > 3.0, "a flipped drift went unnoticed: {flipped}");
    }
}
