//! DDIM and the DDPM ancestral sampler (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit
//! Models"; Ho, Jain & Abbeel 2020), written for any Gaussian path x_t = alpha_t z + beta_t eps
//! in the notes' convention (t = 0 noise, t = 1 data; the papers run their time the other way:
//! their x_tau is our x_{1 - tau}, their sqrt(alpha-bar) our alpha_t).
//!
//! A step from t to s > t reads the model once, as the posterior means of the notes' Proposition
//! 1 (converted from the velocity through the path, [`GaussianPath::convert_at`]):
//! z^ = E[z | x_t = x] and eps^ = E[eps | x_t = x], and moves to
//!
//! ```text
//! x_s = alpha_s z^ + sqrt(beta_s^2 - sigma^2) eps^ + sigma xi,    xi ~ N(0, I),
//! sigma = eta beta_s sqrt(1 - (alpha_t beta_s / (alpha_s beta_t))^2).
//! ```
//!
//! Given the true z, x_s | x_t is then N(alpha_s z + sqrt(beta_s^2 - sigma^2) (x_t - alpha_t z)
//! / beta_t, sigma^2 I), whose marginal is the path's N(alpha_s z, beta_s^2 I) for any sigma <=
//! beta_s: the non-Markovian family of DDIM's eq. 7. eta = 0 is deterministic (DDIM: a first
//! order solver of the probability flow ODE, exact in the limit of many steps); eta = 1 is
//! DDPM's posterior variance (Ho et al. eq. 7, which for a variance-preserving path,
//! alpha^2 + beta^2 = 1, reads beta_s^2 / beta_t^2 (1 - alpha_t^2 / alpha_s^2)), the ancestral
//! sampler. At the last step (s = 1, beta_s = 0) x_1 = z^. One model evaluation per step, the
//! noise from the per-sample Brownian streams, as Euler-Maruyama draws it.

use candle_core::Tensor;

use crate::fields::Field;
use crate::paths::{GaussianPath, Param};

/// sigma of a step from t to s (see the module docs).
pub fn ddim_sigma(path: &GaussianPath, t: f64, s: f64, eta: f64) -> f64 {
    let (ct, cs) = (path.coefs(t), path.coefs(s));
    if cs.beta <= 0.0 || ct.beta <= 0.0 || eta == 0.0 {
        return 0.0;
    }
    let r = ct.alpha * cs.beta / (cs.alpha * ct.beta);
    eta * cs.beta * (1.0 - r * r).max(0.0).sqrt()
}

/// One DDIM step of the ODE field `f` (its drift the velocity u_t, along `path`) from t to s,
/// with `xi` ~ N(0, I) shaped like x when eta > 0.
pub fn ddim_step(
    f: &dyn Field,
    path: &GaussianPath,
    x: &Tensor,
    t: f64,
    s: f64,
    eta: f64,
    xi: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let u = f.drift(x, t)?;
    let ts = vec![t; x.dim(0)?];
    let to = |p: Param| {
        path.convert_at(Param::Velocity, p, &u, x, &ts)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    };
    let (z, eps) = (to(Param::Denoiser)?, to(Param::Noise)?);
    let cs = path.coefs(s);
    let sigma = ddim_sigma(path, t, s, eta);
    let keep = (cs.beta * cs.beta - sigma * sigma).max(0.0).sqrt();
    let mean = (z.affine(cs.alpha, 0.0)? + eps.affine(keep, 0.0)?)?;
    match xi {
        Some(xi) if sigma > 0.0 => mean + xi.affine(sigma, 0.0)?,
        _ => Ok(mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::GaussianTarget;
    use crate::solvers::{solve, uniform_grid, Method, SolveOptions};
    use candle_core::{DType, Device};

    fn target(mean: f64, std: f64, path: GaussianPath) -> GaussianTarget {
        GaussianTarget {
            mean: vec![mean],
            std,
            path,
            sigma: 0.0,
        }
    }

    fn noise(n: usize, seed: u64) -> Tensor {
        let v = crate::rng::normal_rows(seed, crate::rng::Purpose::Noise, 0, n, 1);
        Tensor::from_vec(v, (n, 1), &Device::Cpu).unwrap()
    }

    fn moments(x: &Tensor) -> (f64, f64) {
        let v: Vec<f64> = x
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / (v.len() - 1) as f64;
        (m, var)
    }

    fn run(f: &GaussianTarget, x0: &Tensor, steps: usize, eta: f64) -> Tensor {
        let opts = SolveOptions {
            method: Method::Ddim,
            eta,
            seed: 3,
            ..SolveOptions::default()
        };
        let grid = uniform_grid(0.0, 1.0, steps);
        solve(f, x0, &grid, &opts, None).unwrap().x
    }

    /// For a variance-preserving path (alpha^2 + beta^2 = 1) eta = 1 gives DDPM's posterior
    /// variance beta_s^2 / beta_t^2 (1 - alpha_t^2 / alpha_s^2), and sigma <= beta_s always.
    #[test]
    fn eta_one_is_the_ddpm_posterior_variance() {
        let p = GaussianPath::COSINE;
        for (t, s) in [(0.1, 0.3), (0.5, 0.55), (0.0, 0.2), (0.8, 0.99)] {
            let (ct, cs) = (p.coefs(t), p.coefs(s));
            let ddpm =
                cs.beta.powi(2) / ct.beta.powi(2) * (1.0 - ct.alpha.powi(2) / cs.alpha.powi(2));
            let got = ddim_sigma(&p, t, s, 1.0).powi(2);
            assert!((got - ddpm).abs() < 1e-12, "t {t} s {s}: {got} vs {ddpm}");
            assert!(ddim_sigma(&GaussianPath::SQRT, t, s, 1.0) <= GaussianPath::SQRT.coefs(s).beta);
        }
        assert!(ddim_sigma(&p, 0.3, 1.0, 1.0) < 1e-12);
    }

    /// With a point mass as data (z^ exact for every x) every eta keeps the path's marginal
    /// N(alpha_t m, beta_t^2) exactly, at any number of steps: the variance after a step is
    /// (beta_s^2 - sigma^2) + sigma^2. A wrong coefficient of eps^ or of the noise breaks it.
    #[test]
    fn a_point_mass_keeps_the_path_marginals_for_every_eta() {
        let m = 1.5;
        let f = target(m, 0.0, GaussianPath::CONDOT);
        let n = 20_000;
        let x0 = noise(n, 1);
        let mut ends = Vec::new();
        for eta in [0.0, 0.5, 1.0] {
            let grid = [0.0, 0.3, 0.6];
            let opts = SolveOptions {
                method: Method::Ddim,
                eta,
                seed: 5,
                ..SolveOptions::default()
            };
            let x = solve(&f, &x0, &grid, &opts, None).unwrap().x;
            let (mean, var) = moments(&x);
            let want = 0.4f64.powi(2);
            assert!((mean - 0.6 * m).abs() < 0.01, "eta {eta}: mean {mean}");
            assert!(
                (var - want).abs() < 0.03 * want,
                "eta {eta}: var {var} vs {want}"
            );
            ends.push(x);
        }
        // eta = 0 is the deterministic map x_t -> x_s; the others add noise.
        assert!(moments(&(&ends[0] - &ends[2]).unwrap()).1 > 0.01);
    }

    /// DDIM with eta = 0 is a first-order solver of the probability-flow ODE: on a Gaussian
    /// target its error against the exact flow shrinks about in proportion to the step.
    #[test]
    fn eta_zero_converges_to_the_probability_flow_ode() {
        let f = target(2.0, 0.5, GaussianPath::CONDOT);
        let x0 = noise(64, 2);
        let exact = {
            let opts = SolveOptions {
                method: Method::Dopri5,
                rtol: 1e-9,
                atol: 1e-9,
                ..SolveOptions::default()
            };
            solve(&f, &x0, &[0.0, 1.0], &opts, None).unwrap().x
        };
        let err = |k: usize| {
            let d = (run(&f, &x0, k, 0.0) - &exact).unwrap().abs().unwrap();
            d.max_all().unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let (e4, e16, e64) = (err(4), err(16), err(64));
        assert!(e4 > 1e-3, "{e4}");
        assert!(e16 < e4 / 2.5 && e64 < e16 / 2.5, "{e4} {e16} {e64}");
        assert!(e64 < 0.05, "{e4} {e16} {e64}");
    }

    /// The ancestral sampler (eta = 1) on a Gaussian target ends at the target's mean and
    /// variance given enough steps.
    #[test]
    fn the_ancestral_sampler_reaches_the_target_variance() {
        let (m, s) = (-1.0, 0.7);
        let f = target(m, s, GaussianPath::CONDOT);
        let x = run(&f, &noise(20_000, 4), 200, 1.0);
        let (mean, var) = moments(&x);
        assert!((mean - m).abs() < 0.02, "{mean}");
        assert!((var - s * s).abs() < 0.05 * s * s, "{var}");
    }

    /// The variance-exploding path starts from p_init = N(0, sigma_max^2) (alpha_0 = 1, beta_0 =
    /// 50), not N(0, 1): from there DDIM (eta 0 and 1) and Heun on the exact field all land on
    /// the target's mean and variance, and started from N(0, 1) they would not (the variance at
    /// t = 0 is what the flow carries to the end).
    #[test]
    fn the_ve_path_samples_from_its_wide_prior() {
        let (m, s) = (1.5, 0.5);
        let path = GaussianPath::VE;
        let f = target(m, s, path);
        let sd = path.init_std();
        assert_eq!(sd, 50.0);
        let x0 = noise(20_000, 6).affine(sd, 0.0).unwrap();
        let heun = |x0: &Tensor| {
            let opts = SolveOptions {
                method: Method::Heun,
                ..SolveOptions::default()
            };
            solve(&f, x0, &uniform_grid(0.0, 1.0, 200), &opts, None)
                .unwrap()
                .x
        };
        // p_1 = N(m, s^2 + sigma_min^2). The ancestral sampler's variance has a first-order
        // bias (6% low at 200 uniform steps here), so it gets 1000.
        let want = s * s + 1e-4;
        for (what, x) in [
            ("ddim eta 0", run(&f, &x0, 200, 0.0)),
            ("ddim eta 1", run(&f, &x0, 1000, 1.0)),
            ("heun", heun(&x0)),
        ] {
            let (mean, var) = moments(&x);
            assert!((mean - m).abs() < 0.02, "{what}: mean {mean}");
            assert!(
                (var - want).abs() < 0.05 * want,
                "{what}: var {var} vs {want}"
            );
        }
        // From N(0, 1) the deterministic flow shrinks the spread by beta_0 / sqrt(v_0) ~ 50.
        let (_, var) = moments(&heun(&noise(2000, 7)));
        assert!(var < 0.01 * want, "var {var} from N(0, 1)");
    }
}
