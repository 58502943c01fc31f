//! The 2D toy data sets of the course's Lab 2 (flow and score matching in 2D), and the usual
//! companions from the flow literature. Every draw takes a uniform u ~ U[0, 1) or a standard
//! normal eps ~ N(0, I) from the sample's own stream; all sets live in R^2.
//!
//! - `gaussian`:     x = mean + std * eps.
//! - `moons` (scikit-learn's `make_moons`): label c ~ U{0, 1}, t ~ U[0, pi],
//!   q = (cos t, sin t) for c = 0 (upper moon), q = (1 - cos t, 1/2 - sin t) for c = 1;
//!   x = scale * (q + noise * eps) + offset. The default offset -scale * (1/2, 1/4) puts the
//!   mean of the two moons at the origin (the lab's class defaults to 0 and shifts by hand).
//! - `circles` (scikit-learn's `make_circles`): c ~ U{0, 1}, t ~ U[0, 2 pi), radius 1 (c = 0,
//!   outer) or factor (c = 1, inner); x = scale * (r (cos t, sin t) + noise * eps).
//! - `checkerboard` (the lab's `CheckerboardSampleable`): u ~ U[-scale, scale)^2, cell
//!   (i, j) = (floor((u_1 + scale) / L), floor((u_2 + scale) / L)) with L = 2 scale / grid,
//!   accepted when i + j is even (alternate cells, the bottom-left one included), redrawn
//!   otherwise; label = i mod 2 (= j mod 2), which splits the kept cells into two classes.
//! - `spirals`: c ~ U{0, 1}, theta = 2 pi turns sqrt(u) (sqrt makes the density roughly
//!   uniform along the arc), r = theta / (2 pi turns) in [0, 1], p = r (cos theta, sin theta);
//!   spiral 1 is spiral 0 turned by pi: x = scale * ((-1)^c p + noise * eps).
//! - `8gaussians`: mode k ~ U{0..7}, x = radius (cos(2 pi k / 8), sin(2 pi k / 8)) + std * eps;
//!   label = k.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::f64::consts::PI;

use super::{Dataset, Spec, NAMES};
use crate::{usage_bail, Result};

/// The data sets' names, parameters and defaults, shown by `sample-data --help`.
pub const HELP: &str = "\
Data sets (DATASET is NAME or NAME:key=value,...; a vector value runs on over commas,
e.g. moons:noise=0.1,offset=0,-2). Noise of moons, circles and spirals is added before scaling.
  gaussian      N(mean, std^2 I)                        [mean=0,0 std=1]          no labels
  moons         two interleaving half circles (sklearn make_moons), scaled then shifted
                [noise=0.05 scale=5 offset=-2.5,-1.25 (centres them)]   label: 0 upper, 1 lower
  circles       two concentric circles of radii scale and factor*scale (sklearn make_circles)
                [noise=0.05 factor=0.5 scale=5]                          label: 0 outer, 1 inner
  checkerboard  uniform on alternate cells (cell i+j even) of a grid x grid board on
                [-scale,scale]^2                [grid=4 scale=5]          label: column i mod 2
  spirals       two interleaved spirals of `turns` turns out to radius scale
                [noise=0.05 scale=5 turns=1.5]                           label: which spiral
  8gaussians    8 Gaussians of std `std` evenly spaced on a circle of radius `radius`
                [radius=4 std=0.5]                                       label: mode k at angle k*45deg
  random_2d     the course's mixture: nmodes Gaussians of std `std`, means uniform in
                [-scale/2, scale/2]^2 from `seed`   e.g. random_2d:nmodes=5,std=0.75,scale=15,seed=3
  symmetric_2d  nmodes Gaussians of std `std` on a circle of radius `scale`
                e.g. symmetric_2d:nmodes=5,std=1,scale=10                label: mode
  mixture       explicit, as JSON (inline or a file): {\"density\": \"mixture\", \"means\": [[0,0],[4,4]],
                \"stds\": [1, 0.5], \"weights\": [0.3, 0.7]}                    label: mode";

/// One toy set with its parameters (see the module doc for the formulas).
#[derive(Clone, Debug, PartialEq)]
pub enum Toy {
    Gaussian {
        mean: [f64; 2],
        std: f64,
    },
    Moons {
        noise: f64,
        scale: f64,
        offset: [f64; 2],
    },
    Circles {
        noise: f64,
        factor: f64,
        scale: f64,
    },
    Checkerboard {
        grid: u32,
        scale: f64,
    },
    Spirals {
        noise: f64,
        scale: f64,
        turns: f64,
    },
    EightGaussians {
        radius: f64,
        std: f64,
    },
}

impl Toy {
    /// Builds a set from a parsed spec, with the defaults of [`HELP`]; bad values are usage
    /// errors naming the spec, the parameter and its allowed range.
    pub fn from_spec(mut s: Spec) -> Result<Toy> {
        let toy = match s.name.as_str() {
            "gaussian" => {
                let mean = s.take_vec("mean", &[0.0, 0.0])?;
                let std = s.take_scalar("std", 1.0)?;
                positive(&s, "std", std)?;
                s.finish(&["mean", "std"])?;
                Toy::Gaussian {
                    mean: [mean[0], mean[1]],
                    std,
                }
            }
            "moons" => {
                let noise = s.take_scalar("noise", 0.05)?;
                let scale = s.take_scalar("scale", 5.0)?;
                let offset = s.take_vec("offset", &[-0.5 * scale, -0.25 * scale])?;
                nonnegative(&s, "noise", noise)?;
                positive(&s, "scale", scale)?;
                s.finish(&["noise", "scale", "offset"])?;
                Toy::Moons {
                    noise,
                    scale,
                    offset: [offset[0], offset[1]],
                }
            }
            "circles" => {
                let noise = s.take_scalar("noise", 0.05)?;
                let factor = s.take_scalar("factor", 0.5)?;
                let scale = s.take_scalar("scale", 5.0)?;
                nonnegative(&s, "noise", noise)?;
                if !(factor > 0.0 && factor < 1.0) {
                    usage_bail!(
                        "data set '{}': factor must be in (0, 1), got {factor}",
                        s.text()
                    );
                }
                positive(&s, "scale", scale)?;
                s.finish(&["noise", "factor", "scale"])?;
                Toy::Circles {
                    noise,
                    factor,
                    scale,
                }
            }
            "checkerboard" => {
                let grid = s.take_scalar("grid", 4.0)?;
                let scale = s.take_scalar("scale", 5.0)?;
                if !((2.0..=1000.0).contains(&grid) && grid.fract() == 0.0) {
                    usage_bail!(
                        "data set '{}': grid must be a whole number from 2 to 1000, got {grid}",
                        s.text()
                    );
                }
                positive(&s, "scale", scale)?;
                s.finish(&["grid", "scale"])?;
                Toy::Checkerboard {
                    grid: grid as u32,
                    scale,
                }
            }
            "spirals" => {
                let noise = s.take_scalar("noise", 0.05)?;
                let scale = s.take_scalar("scale", 5.0)?;
                let turns = s.take_scalar("turns", 1.5)?;
                nonnegative(&s, "noise", noise)?;
                positive(&s, "scale", scale)?;
                positive(&s, "turns", turns)?;
                s.finish(&["noise", "scale", "turns"])?;
                Toy::Spirals {
                    noise,
                    scale,
                    turns,
                }
            }
            "8gaussians" => {
                let radius = s.take_scalar("radius", 4.0)?;
                let std = s.take_scalar("std", 0.5)?;
                positive(&s, "radius", radius)?;
                positive(&s, "std", std)?;
                s.finish(&["radius", "std"])?;
                Toy::EightGaussians { radius, std }
            }
            other => usage_bail!("unknown data set '{other}' (known: {})", NAMES.join(", ")),
        };
        if let Toy::Gaussian { mean, .. } | Toy::Moons { offset: mean, .. } = &toy {
            if !mean.iter().all(|v| v.is_finite()) {
                usage_bail!("data set '{}': values must be finite", s.text());
            }
        }
        Ok(toy)
    }

    /// The lower-left cell of the board is (0, 0); the cell holding coordinate `v`.
    fn cell(v: f64, scale: f64, grid: u32) -> u32 {
        let side = 2.0 * scale / grid as f64;
        (((v + scale) / side).floor().max(0.0) as u32).min(grid - 1)
    }
}

fn positive(s: &Spec, key: &str, v: f64) -> Result<()> {
    if !(v > 0.0 && v.is_finite()) {
        usage_bail!("data set '{}': {key} must be positive, got {v}", s.text());
    }
    Ok(())
}

fn nonnegative(s: &Spec, key: &str, v: f64) -> Result<()> {
    if !(v >= 0.0 && v.is_finite()) {
        usage_bail!("data set '{}': {key} must be >= 0, got {v}", s.text());
    }
    Ok(())
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// A fair coin as a label 0 or 1.
fn coin(rng: &mut ChaCha8Rng) -> i64 {
    rng.random_range(0..2)
}

impl Dataset for Toy {
    fn dim(&self) -> usize {
        2
    }

    fn has_labels(&self) -> bool {
        !matches!(self, Toy::Gaussian { .. })
    }

    fn draw(&self, rng: &mut ChaCha8Rng, out: &mut [f32]) -> i64 {
        let (x, label) = match *self {
            Toy::Gaussian { mean, std } => {
                let e = [normal(rng), normal(rng)];
                ([mean[0] + std * e[0], mean[1] + std * e[1]], 0)
            }
            Toy::Moons {
                noise,
                scale,
                offset,
            } => {
                let c = coin(rng);
                let t = PI * rng.random::<f64>();
                let q = if c == 0 {
                    [t.cos(), t.sin()]
                } else {
                    [1.0 - t.cos(), 0.5 - t.sin()]
                };
                let e = [normal(rng), normal(rng)];
                (
                    [
                        scale * (q[0] + noise * e[0]) + offset[0],
                        scale * (q[1] + noise * e[1]) + offset[1],
                    ],
                    c,
                )
            }
            Toy::Circles {
                noise,
                factor,
                scale,
            } => {
                let c = coin(rng);
                let t = 2.0 * PI * rng.random::<f64>();
                let r = if c == 0 { 1.0 } else { factor };
                let e = [normal(rng), normal(rng)];
                (
                    [
                        scale * (r * t.cos() + noise * e[0]),
                        scale * (r * t.sin() + noise * e[1]),
                    ],
                    c,
                )
            }
            Toy::Checkerboard { grid, scale } => loop {
                // Rejection sampling inside this sample's own stream: about half are kept.
                let u = [
                    scale * (2.0 * rng.random::<f64>() - 1.0),
                    scale * (2.0 * rng.random::<f64>() - 1.0),
                ];
                let (i, j) = (Self::cell(u[0], scale, grid), Self::cell(u[1], scale, grid));
                if (i + j) % 2 == 0 {
                    break (u, (i % 2) as i64);
                }
            },
            Toy::Spirals {
                noise,
                scale,
                turns,
            } => {
                let c = coin(rng);
                let max = 2.0 * PI * turns;
                let theta = max * rng.random::<f64>().sqrt();
                let sign = if c == 0 { 1.0 } else { -1.0 };
                let r = sign * theta / max;
                let e = [normal(rng), normal(rng)];
                (
                    [
                        scale * (r * theta.cos() + noise * e[0]),
                        scale * (r * theta.sin() + noise * e[1]),
                    ],
                    c,
                )
            }
            Toy::EightGaussians { radius, std } => {
                let k: i64 = rng.random_range(0..8);
                let a = 2.0 * PI * k as f64 / 8.0;
                let e = [normal(rng), normal(rng)];
                (
                    [radius * a.cos() + std * e[0], radius * a.sin() + std * e[1]],
                    k,
                )
            }
        };
        out[0] = x[0] as f32;
        out[1] = x[1] as f32;
        label
    }

    fn describe(&self) -> String {
        match self {
            Toy::Gaussian { mean, std } => {
                format!("gaussian: mean={},{} std={std}", mean[0], mean[1])
            }
            Toy::Moons {
                noise,
                scale,
                offset,
            } => format!(
                "moons: noise={noise} scale={scale} offset={},{}",
                offset[0], offset[1]
            ),
            Toy::Circles {
                noise,
                factor,
                scale,
            } => format!("circles: noise={noise} factor={factor} scale={scale}"),
            Toy::Checkerboard { grid, scale } => {
                format!("checkerboard: grid={grid} scale={scale}")
            }
            Toy::Spirals {
                noise,
                scale,
                turns,
            } => format!("spirals: noise={noise} scale={scale} turns={turns}"),
            Toy::EightGaussians { radius, std } => {
                format!("8gaussians: radius={radius} std={std}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{parse, sample, Samples};

    /// Mixtures need their parameters; the densities module and lab2 tests cover them.
    const MIXTURES: [&str; 3] = ["random_2d", "symmetric_2d", "mixture"];

    fn draw(spec: &str, n: usize, seed: u64) -> Samples {
        sample(parse(spec).unwrap().as_ref(), n, seed, 0)
    }

    /// Points (x, y) with their labels.
    fn rows(s: &Samples) -> Vec<(f64, f64, i64)> {
        let labels = s.labels.as_ref().unwrap();
        s.points
            .rows()
            .into_iter()
            .zip(labels.iter())
            .map(|(r, &l)| (r[0] as f64, r[1] as f64, l))
            .collect()
    }

    /// Asserts the fraction of label-1 samples is 1/2 within 4 standard errors.
    fn balanced(r: &[(f64, f64, i64)]) {
        let n = r.len() as f64;
        let ones = r.iter().filter(|p| p.2 == 1).count() as f64;
        assert!(
            (ones / n - 0.5).abs() < 4.0 * (0.25 / n).sqrt(),
            "{ones}/{n}"
        );
    }

    #[test]
    fn shapes_labels_and_determinism() {
        for name in NAMES.iter().filter(|n| !MIXTURES.contains(n)) {
            let a = draw(name, 50, 3);
            assert_eq!(a.points.shape(), &[50, 2], "{name}");
            assert_eq!(
                a.labels.as_ref().map(|l| l.len()),
                (*name != "gaussian").then_some(50)
            );
            assert!(a.points.iter().all(|v| v.is_finite()));
            assert_eq!(a, draw(name, 50, 3), "{name} is not deterministic");
            assert_ne!(
                a.points,
                draw(name, 50, 4).points,
                "{name} ignores the seed"
            );
        }
    }

    #[test]
    fn prefix_and_batch_independence() {
        for name in NAMES.iter().filter(|n| !MIXTURES.contains(n)) {
            let big = draw(name, 1000, 9);
            let small = draw(name, 10, 9);
            assert_eq!(
                big.points.slice(ndarray::s![..10, ..]),
                small.points,
                "{name}"
            );
            let ds = parse(name).unwrap();
            let part = sample(ds.as_ref(), 7, 9, 500);
            assert_eq!(big.points.slice(ndarray::s![500..507, ..]), part.points);
            assert_eq!(
                big.labels
                    .map(|l| l.slice(ndarray::s![500..507]).to_owned()),
                part.labels
            );
        }
    }

    #[test]
    fn gaussian_mean_and_std() {
        let s = draw("gaussian:mean=1,-2,std=0.5", 4000, 0);
        for (d, want) in [(0, 1.0), (1, -2.0)] {
            let col = s.points.column(d);
            let mean = col.iter().map(|&v| v as f64).sum::<f64>() / 4000.0;
            let var = col.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 4000.0;
            // Standard errors: 0.5/sqrt(4000) ~ 0.008 (mean), 0.25*sqrt(2/4000) ~ 0.006 (var).
            assert!((mean - want).abs() < 0.04, "mean {mean}");
            assert!((var - 0.25).abs() < 0.03, "var {var}");
        }
    }

    #[test]
    fn moons_lie_on_their_half_circles() {
        let r = rows(&draw("moons:noise=0,scale=2,offset=1,1", 2000, 1));
        balanced(&r);
        for &(x, y, c) in &r {
            let (qx, qy) = ((x - 1.0) / 2.0, (y - 1.0) / 2.0);
            let (cx, cy, upper) = if c == 0 {
                (0.0, 0.0, true)
            } else {
                (1.0, 0.5, false)
            };
            let radius = ((qx - cx).powi(2) + (qy - cy).powi(2)).sqrt();
            assert!((radius - 1.0).abs() < 1e-5, "moon {c}: radius {radius}");
            assert!(if upper {
                qy >= cy - 1e-6
            } else {
                qy <= cy + 1e-6
            });
        }
        // The default offset centres the pair of moons at the origin.
        let s = draw("moons", 4000, 2);
        for d in 0..2 {
            let mean = s.points.column(d).iter().map(|&v| v as f64).sum::<f64>() / 4000.0;
            // Coordinates spread ~ scale * 0.7, so the standard error is ~0.06.
            assert!(mean.abs() < 0.25, "axis {d} mean {mean}");
        }
    }

    #[test]
    fn circles_have_their_radii() {
        let r = rows(&draw("circles:noise=0,factor=0.3,scale=2", 2000, 1));
        balanced(&r);
        for &(x, y, c) in &r {
            let want = if c == 0 { 2.0 } else { 0.6 };
            assert!(((x * x + y * y).sqrt() - want).abs() < 1e-5);
        }
        // With noise, the mean radius of each circle stays near its radius.
        let r = rows(&draw("circles", 2000, 1));
        for (c, want) in [(0, 5.0), (1, 2.5)] {
            let radii: Vec<f64> = r
                .iter()
                .filter(|p| p.2 == c)
                .map(|p| (p.0 * p.0 + p.1 * p.1).sqrt())
                .collect();
            let mean = radii.iter().sum::<f64>() / radii.len() as f64;
            assert!((mean - want).abs() < 0.05, "circle {c}: mean radius {mean}");
        }
    }

    #[test]
    fn checkerboard_fills_alternate_cells_evenly() {
        let (grid, scale, n) = (4u32, 5.0, 8000);
        let r = rows(&draw("checkerboard", n, 5));
        let side = 2.0 * scale / grid as f64;
        let mut counts = vec![0usize; (grid * grid) as usize];
        for &(x, y, label) in &r {
            assert!((-scale..scale).contains(&x) && (-scale..scale).contains(&y));
            let i = ((x + scale) / side).floor() as u32;
            let j = ((y + scale) / side).floor() as u32;
            assert_eq!((i + j) % 2, 0, "({x}, {y}) in a rejected cell ({i}, {j})");
            assert_eq!(label, (i % 2) as i64);
            counts[(j * grid + i) as usize] += 1;
        }
        // Each of the 8 kept cells holds n/8 = 1000 points, binomial sd ~ 31.
        for (cell, &c) in counts.iter().enumerate() {
            let (i, j) = (cell as u32 % grid, cell as u32 / grid);
            if (i + j) % 2 == 0 {
                assert!((c as f64 - 1000.0).abs() < 150.0, "cell ({i}, {j}): {c}");
            } else {
                assert_eq!(c, 0);
            }
        }
        balanced(&r);
    }

    #[test]
    fn spirals_follow_their_curves() {
        let r = rows(&draw("spirals:noise=0,scale=2,turns=1", 1000, 3));
        balanced(&r);
        for &(x, y, c) in &r {
            let (px, py) = if c == 0 {
                (x / 2.0, y / 2.0)
            } else {
                (-x / 2.0, -y / 2.0)
            };
            let radius = (px * px + py * py).sqrt();
            assert!(radius <= 1.0 + 1e-6);
            let theta = 2.0 * PI * radius;
            assert!(
                (px - radius * theta.cos()).abs() < 1e-4,
                "({x}, {y}) label {c}"
            );
            assert!(
                (py - radius * theta.sin()).abs() < 1e-4,
                "({x}, {y}) label {c}"
            );
        }
    }

    #[test]
    fn eight_gaussians_modes_have_their_means() {
        let r = rows(&draw("8gaussians:radius=3,std=0.2", 4000, 8));
        for k in 0..8 {
            let pts: Vec<_> = r.iter().filter(|p| p.2 == k).collect();
            let n = pts.len() as f64;
            // About 500 each: binomial sd ~ 21.
            assert!((n - 500.0).abs() < 100.0, "mode {k}: {n} points");
            let a = 2.0 * PI * k as f64 / 8.0;
            let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
            let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
            // Standard error of a mode's mean: 0.2 / sqrt(500) ~ 0.009.
            assert!((mx - 3.0 * a.cos()).abs() < 0.05 && (my - 3.0 * a.sin()).abs() < 0.05);
        }
    }

    #[test]
    fn bad_parameters_are_usage_errors() {
        for bad in [
            "gaussian:std=0",
            "gaussian:mean=1",
            "moons:noise=-1",
            "moons:scale=0",
            "circles:factor=1",
            "checkerboard:grid=0",
            "checkerboard:grid=2.5",
            "spirals:turns=-1",
            "8gaussians:radius=nan",
            "8gaussians:sigma=1",
            "squares",
        ] {
            let err = parse(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(crate::error::is_usage(&err), "{bad}: {err}");
            assert!(
                err.to_string().contains(bad.split(':').next().unwrap()),
                "{err}"
            );
        }
    }

    #[test]
    fn describe_names_every_default() {
        let d = parse("checkerboard").unwrap().describe();
        assert_eq!(d, "checkerboard: grid=4 scale=5");
        let d = parse("moons").unwrap().describe();
        assert_eq!(d, "moons: noise=0.05 scale=5 offset=-2.5,-1.25");
    }
}
