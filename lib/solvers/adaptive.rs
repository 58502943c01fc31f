//! Adaptive stepping: Dormand-Prince 5(4) with FSAL, local extrapolation and the standard
//! step-size controller (see the module docs of [`crate::solvers`] for the rule and its error
//! norm).

use anyhow::{anyhow, bail};
use candle_core::{DType, Tensor};

use super::{SolveOptions, Stats};
use crate::fields::Field;
use crate::{usage_bail, Result};

/// Dormand-Prince 5(4) tableau (Hairer, Nørsett & Wanner, Table II.5.2).
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [&[f64]; 7] = [
    &[],
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
    ],
    &[
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
    ],
    // The 5th-order weights: stage 7 is f at the new point, reused as the next stage 1 (FSAL).
    &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// y5 - y4 weights: b - b*.
const E: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// The state of an adaptive Dormand-Prince run.
pub(super) struct Dopri5<'a> {
    f: &'a dyn Field,
    opts: &'a SolveOptions,
    t: f64,
    x: Tensor,
    /// u_t(x) at the current point (FSAL).
    k1: Tensor,
    /// The proposed next step, signed.
    h: f64,
}

impl<'a> Dopri5<'a> {
    pub(super) fn new(
        f: &'a dyn Field,
        opts: &'a SolveOptions,
        x0: &Tensor,
        t0: f64,
        t1: f64,
        stats: &mut Stats,
    ) -> Result<Self> {
        if !(opts.rtol > 0.0 && opts.atol > 0.0) {
            usage_bail!(
                "--rtol and --atol must be positive, got {} and {}",
                opts.rtol,
                opts.atol
            );
        }
        let k1 = f.drift(x0, t0)?;
        stats.nfe += 1;
        let h = initial_step(f, x0, &k1, t0, t1, opts, stats)?;
        Ok(Dopri5 {
            f,
            opts,
            t: t0,
            x: x0.clone(),
            k1,
            h,
        })
    }

    /// Steps until exactly `target`; returns the state there.
    pub(super) fn advance_to(&mut self, target: f64, stats: &mut Stats) -> Result<Tensor> {
        let dir = (target - self.t).signum();
        let mut after_reject = false;
        while (target - self.t) * dir > 0.0 {
            if stats.accepted + stats.rejected >= self.opts.max_steps {
                bail!(
                    "dopri5 took {} steps and reached t = {} of {target}: the solution may \
                     blow up, the problem be stiff or the tolerance too tight (f32 holds about \
                     7 digits; raise --rtol/--atol or use a fixed-step solver)",
                    self.opts.max_steps,
                    self.t
                );
            }
            let remaining = target - self.t;
            let clipped = self.h.abs() >= remaining.abs() * (1.0 - 1e-12);
            let h = if clipped { remaining } else { self.h };
            if h.abs() <= 1e-14 * self.t.abs().max(1.0) {
                bail!(
                    "dopri5's step size underflowed at t = {} (the solution may blow up)",
                    self.t
                );
            }
            let (y, k7, err) = self.try_step(h)?;
            stats.nfe += 6;
            let grow = if err == 0.0 {
                5.0
            } else {
                0.9 * err.powf(-0.2)
            };
            if err <= 1.0 {
                stats.accepted += 1;
                self.t = if clipped { target } else { self.t + h };
                self.x = y;
                self.k1 = k7;
                let factor = grow.clamp(0.2, if after_reject { 1.0 } else { 5.0 });
                // A step clipped to land on a grid time says little about the step size; keep
                // the larger proposal.
                self.h = if clipped {
                    dir * self.h.abs().max(h.abs() * factor)
                } else {
                    h * factor
                };
                after_reject = false;
            } else {
                stats.rejected += 1;
                // NaN errors (a blow-up) shrink the step as much as allowed.
                let factor = if grow.is_finite() {
                    grow.clamp(0.2, 1.0)
                } else {
                    0.2
                };
                self.h = h * factor;
                after_reject = true;
            }
        }
        Ok(self.x.clone())
    }

    /// One trial step of size `h`: the 5th-order solution, u at it, and the error norm.
    fn try_step(&self, h: f64) -> Result<(Tensor, Tensor, f64)> {
        let mut k = vec![self.k1.clone()];
        for s in 1..7 {
            let mut xs = self.x.clone();
            for (j, &a) in A[s].iter().enumerate() {
                if a != 0.0 {
                    xs = (xs + k[j].affine(h * a, 0.0)?)?;
                }
            }
            k.push(self.f.drift(&xs, self.t + C[s] * h)?);
            if s == 6 {
                // xs is y5, the new point; k[6] is u there.
                let mut e = k[0].affine(h * E[0], 0.0)?;
                for (j, &w) in E.iter().enumerate().skip(1) {
                    if w != 0.0 {
                        e = (e + k[j].affine(h * w, 0.0)?)?;
                    }
                }
                let err = error_norm(&e, &self.x, &xs, self.opts)?;
                return Ok((xs, k.pop().expect("seven stages"), err));
            }
        }
        unreachable!("the loop returns at its last stage")
    }
}

/// max over samples of the RMS of `e / (atol + rtol max(|y0|, |y1|))` (see module docs).
fn error_norm(e: &Tensor, y0: &Tensor, y1: &Tensor, opts: &SolveOptions) -> Result<f64> {
    let scale = y0
        .abs()?
        .maximum(&y1.abs()?)?
        .affine(opts.rtol, opts.atol)?;
    rms_max(&(e / scale)?)
}

/// max over samples of the RMS of each sample's elements.
fn rms_max(r: &Tensor) -> Result<f64> {
    let n = r.dims().first().copied().unwrap_or(1).max(1);
    let per = r.elem_count() / n;
    if per == 0 {
        return Ok(0.0);
    }
    let ms = r
        .to_dtype(DType::F64)?
        .reshape((n, per))?
        .sqr()?
        .mean(1)?
        .to_vec1::<f64>()?;
    // A NaN (a sample that blew up) must win the max, so that the step is rejected.
    let worst = ms.iter().fold(0.0f64, |m, &v| {
        if v.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    });
    Ok(worst.sqrt())
}

/// The starting step size of Hairer, Nørsett & Wanner (II.4): a step that makes an Euler step's
/// change small against the tolerance, corrected by a second-derivative estimate. One NFE.
fn initial_step(
    f: &dyn Field,
    x0: &Tensor,
    f0: &Tensor,
    t0: f64,
    t1: f64,
    opts: &SolveOptions,
    stats: &mut Stats,
) -> Result<f64> {
    let span = (t1 - t0).abs();
    let dir = (t1 - t0).signum();
    let scale = x0.abs()?.affine(opts.rtol, opts.atol)?;
    let d0 = rms_max(&(x0 / &scale)?)?;
    let d1 = rms_max(&(f0 / &scale)?)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    }
    .min(span);
    let x1 = (x0 + f0.affine(dir * h0, 0.0)?)?;
    let f1 = f.drift(&x1, t0 + dir * h0)?;
    stats.nfe += 1;
    let d2 = rms_max(&((f1 - f0)? / &scale)?)? / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(0.2)
    };
    let h = (100.0 * h0).min(h1).min(span);
    if !h.is_finite() || h <= 0.0 {
        return Err(anyhow!(
            "dopri5 could not choose a first step (is x0 or u(x0) non-finite?)"
        ));
    }
    Ok(dir * h)
}

#[cfg(test)]
mod tests {
    use crate::fields::LinearOde;
    use crate::solvers::{solve, uniform_grid, Method, SolveOptions};
    use candle_core::{Device, Tensor};

    fn cpu() -> Device {
        Device::Cpu
    }

    #[test]
    fn dopri5_meets_its_tolerance_with_fewer_evaluations() {
        let theta = 1.5;
        let x0 = Tensor::new(&[[1.0f64], [-3.0]], &cpu()).unwrap();
        for tol in [1e-4, 1e-6, 1e-8] {
            let opts = SolveOptions {
                method: Method::Dopri5,
                rtol: tol,
                atol: tol,
                ..Default::default()
            };
            let sol = solve(&LinearOde { theta }, &x0, &[0.0, 2.0], &opts, None).unwrap();
            let x = sol.x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let exact = [(-2.0 * theta).exp(), -3.0 * (-2.0 * theta).exp()];
            let err = x
                .iter()
                .zip(exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            // Global error is a small multiple of the local tolerance on this problem.
            assert!(err < 10.0 * tol * 3.0, "tol {tol}: error {err}");
            // Heun with the same number of field evaluations is far less accurate.
            let heun_steps = (sol.stats.nfe / 2) as usize;
            let heun = solve(
                &LinearOde { theta },
                &x0,
                &uniform_grid(0.0, 2.0, heun_steps),
                &SolveOptions {
                    method: Method::Heun,
                    ..Default::default()
                },
                None,
            )
            .unwrap();
            let hx = heun.x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let herr = hx
                .iter()
                .zip(exact)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                err < herr,
                "tol {tol}: dopri5 {err} vs heun {herr} at {} NFE",
                sol.stats.nfe
            );
            assert_eq!(
                sol.stats.nfe,
                2 + 6 * (sol.stats.accepted + sol.stats.rejected)
            );
        }
    }

    #[test]
    fn dopri5_lands_on_every_grid_time_and_rejects_too_large_steps() {
        let x0 = Tensor::new(&[[1.0f64]], &cpu()).unwrap();
        let grid = uniform_grid(0.0, 1.0, 4);
        let opts = SolveOptions {
            method: Method::Dopri5,
            rtol: 1e-9,
            atol: 1e-9,
            save_every: Some(1),
            ..Default::default()
        };
        // A stiff-ish decay forces rejections after the first step guess.
        let sol = solve(&LinearOde { theta: 40.0 }, &x0, &grid, &opts, None).unwrap();
        let traj = sol
            .trajectory
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (x, t) in traj.iter().zip(&grid) {
            let want = (-40.0 * t).exp();
            assert!((x - want).abs() < 1e-7, "t {t}: {x} vs {want}");
        }
        assert!(sol.stats.accepted > 4);
        // A solution that blows up is an error, not a file of infinities.
        let up = LinearOde { theta: -100.0 };
        let x32 = Tensor::new(&[[1.0f32], [2.0]], &cpu()).unwrap();
        let loose = SolveOptions {
            rtol: 1e-4,
            atol: 1e-4,
            max_steps: 2000,
            ..opts.clone()
        };
        let err = solve(&up, &x32, &[0.0, 2.0], &loose, None).err().unwrap();
        assert!(err.to_string().contains("blow up"), "{err}");
        let euler = SolveOptions {
            method: Method::Euler,
            ..Default::default()
        };
        let err = solve(&up, &x32, &uniform_grid(0.0, 2.0, 100), &euler, None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("blew up"), "{err}");
        let tight = SolveOptions {
            max_steps: 3,
            ..opts
        };
        assert!(solve(&LinearOde { theta: 40.0 }, &x0, &grid, &tight, None).is_err());
    }
}
