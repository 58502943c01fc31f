//! Plot panels: point clouds, histograms, trajectories, vector fields and line plots, drawn with plotters
//! (axes, ticks, labels) on an in-memory RGB buffer.
//!
//! What each panel shows, as formulas:
//! - **Bounds** default to the data's range with a 5 % margin on each side,
//!   [min − m, max + m], m = 0.05 (max − min) (m = 0.5 when max = min).
//! - **2-D histogram** (`hist`): B × B bins over the bounds, point (x, y) falls in column
//!   ⌊B (x − xmin)/(xmax − xmin)⌋ and row ⌊B (ymax − y)/(ymax − ymin)⌋; colour
//!   viridis(count / max count) (linear). Points outside the bounds are not counted.
//! - **1-D histogram** (`hist1d`) as a density, comparable with a pdf: bar height
//!   count_b / (N Δ), Δ = (xmax − xmin)/B, N counting every sample.
//! - **Background** heat map: an (H, W) array spread over the bounds like an image of the plane,
//!   row 0 at the top (y = YMAX), column 0 at the left (x = XMIN); colour
//!   viridis((v − min)/(max − min)) over the array's own min..max (e.g. a log-density on a grid).
//! - **Trajectories** (N, T, D): sample j of T is at time t_j = t0 + (t1 − t0) j/(T − 1); D = 1
//!   draws x against t, D = 2 draws the path in the plane (start dot grey, end dot coloured).
//! - **Quiver** rows (x, y, u, v): an arrow from (x, y) to (x, y) + s (u, v) with
//!   s = 0.9 √(A/N) / max‖(u, v)‖, A the area of the bounds: the longest arrow spans 0.9 of the
//!   mean spacing of N arrows spread over the plot, so arrows rarely overlap.
//!
//! plotters draws nothing outside a chart's range on its own; segments are clipped to the
//! bounds here (Liang–Barsky) and points outside are left out.

mod canvas;
mod geometry;
mod lines;
mod points;
mod quiver;
mod traj;

pub use canvas::{class_colour, viridis};
pub use geometry::{auto_range, clip_polyline, clip_segment, histogram, histogram2d, kde2d, Rect};
pub use lines::{lines, moving_average, LineOptions, Series, MARKERS_UP_TO};
pub use points::{hist1d, hist2d, kde, scatter};
pub use quiver::quiver;
pub use traj::{times, traj1d, traj2d};

use anyhow::bail;
use ndarray::Array2;

use crate::io::npy::shape_str;
use crate::Result;

/// The plotted ranges: horizontal `x`, vertical `y` (None: from the data).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub x: (f64, f64),
    pub y: Option<(f64, f64)>,
}

impl std::str::FromStr for Bounds {
    type Err = String;

    /// Parses `XMIN,XMAX,YMIN,YMAX`, or `LOW,HIGH` (the x range; y from the data).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let v = crate::cli::parse_list::<f64>(s)?;
        let pair = |lo: f64, hi: f64, what: &str| {
            if lo.is_finite() && hi.is_finite() && lo < hi {
                Ok((lo, hi))
            } else {
                Err(format!(
                    "{what}: the minimum must be below the maximum, got {lo},{hi}"
                ))
            }
        };
        match v[..] {
            [a, b] => Ok(Bounds {
                x: pair(a, b, "x")?,
                y: None,
            }),
            [a, b, c, d] => Ok(Bounds {
                x: pair(a, b, "x")?,
                y: Some(pair(c, d, "y")?),
            }),
            _ => Err(format!(
                "expected XMIN,XMAX,YMIN,YMAX (or LOW,HIGH), got {} numbers",
                v.len()
            )),
        }
    }
}

/// Class labels that colour points and paths, with the file they came from.
#[derive(Clone, Debug)]
pub struct Labels {
    pub name: String,
    pub values: Vec<i64>,
}

/// Everything a plot panel needs besides its data.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    /// Pixels of one panel (width, height).
    pub size: (u32, u32),
    /// Histogram bins per axis.
    pub bins: usize,
    /// Plotted ranges; `None` from the data.
    pub bounds: Option<Bounds>,
    /// One label per sample, colouring points (categorical palette).
    pub labels: Option<Labels>,
    /// (H, W) heat map under scatter, trajectory and quiver panels, spread over the bounds.
    pub background: Option<Array2<f32>>,
    /// Times of the first and last trajectory step.
    pub t0: f64,
    pub t1: f64,
    /// Trajectories drawn (the first M).
    pub max_lines: usize,
    /// Radius of a scatter point in pixels.
    pub point_size: u32,
    /// Opacity of scatter points, in (0, 1].
    pub alpha: f64,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            size: (600, 600),
            bins: 100,
            bounds: None,
            labels: None,
            background: None,
            t0: 0.0,
            t1: 1.0,
            max_lines: 100,
            point_size: 2,
            alpha: 0.7,
        }
    }
}

impl PlotOptions {
    /// The labels, checked to hold one per sample of an N-sample input `name`.
    fn labels_for(&self, n: usize, name: &str) -> Result<Option<&[i64]>> {
        match &self.labels {
            None => Ok(None),
            Some(l) if l.values.len() == n => Ok(Some(&l.values)),
            Some(l) => bail!(
                "{} holds {} labels but {name} has {n} samples",
                l.name,
                l.values.len()
            ),
        }
    }

    /// The plane's (x, y) ranges: the given bounds, else from `points` with a margin.
    pub fn plane(&self, points: impl Iterator<Item = (f64, f64)> + Clone) -> Rect {
        let x = self
            .bounds
            .map(|b| b.x)
            .unwrap_or_else(|| auto_range(points.clone().map(|p| p.0)));
        let y = self
            .bounds
            .and_then(|b| b.y)
            .unwrap_or_else(|| auto_range(points.map(|p| p.1)));
        Rect { x, y }
    }
}

impl Labels {
    /// Reads int64 class labels (one per sample) from a path or stdin (`-`).
    pub fn read(path: &str) -> Result<Labels> {
        let values = crate::io::npy::read_i64(path)?;
        Ok(Labels {
            name: crate::io::display_name(path),
            values: values.iter().copied().collect(),
        })
    }
}

/// Reads a finite background heat map (H, W) from a path or stdin (`-`).
pub fn read_background(path: &str) -> Result<Array2<f32>> {
    let name = crate::io::display_name(path);
    let bg = crate::io::npy::read_f32(path)?;
    check_background(bg.shape(), &name)?;
    crate::io::npy::expect_finite(&bg, &name)?;
    Ok(bg.into_dimensionality()?)
}

/// Checks a background heat map's shape: (H, W) with H, W ≥ 1.
pub fn check_background(shape: &[usize], name: &str) -> Result<()> {
    match shape {
        [h, w] if *h > 0 && *w > 0 => Ok(()),
        _ => bail!(
            "expected a background grid (H, W), got {} in {name}",
            shape_str(shape)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse() {
        let b: Bounds = "-2,2,-1,3".parse().unwrap();
        assert_eq!((b.x, b.y), ((-2.0, 2.0), Some((-1.0, 3.0))));
        let b: Bounds = "0,1".parse().unwrap();
        assert_eq!((b.x, b.y), ((0.0, 1.0), None));
        assert!("1,0,0,1".parse::<Bounds>().is_err());
        assert!("0,1,0".parse::<Bounds>().is_err());
        assert!("0,1,x,2".parse::<Bounds>().is_err());
    }
}
