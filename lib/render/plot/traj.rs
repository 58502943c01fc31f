//! Trajectory panels (N, T, D): x against the times t_j for D = 1, paths in the plane for D = 2.

use image::RgbImage;
use ndarray::ArrayView3;
use plotters::prelude::*;

use super::canvas::{background, class_colour, dots, ink, pairs, panel, plot_err, Axes};
use super::{auto_range, clip_polyline, PlotOptions, Rect};
use crate::Result;

/// Times t_j = t0 + (t1 − t0) j/(T − 1) of T steps (t0 alone when T = 1).
pub fn times(t0: f64, t1: f64, steps: usize) -> Vec<f64> {
    let den = steps.saturating_sub(1).max(1) as f64;
    (0..steps)
        .map(|j| t0 + (t1 - t0) * j as f64 / den)
        .collect()
}

/// Line colour of trajectory `i`: its class, or one soft blue for all.
fn path_colour(labels: Option<&[i64]>, i: usize) -> RGBColor {
    labels.map_or(RGBColor(31, 119, 180), |l| class_colour(l[i]))
}

/// One line per sample of x against time, for trajectories `x` (N, T, 1); the first M.
pub fn traj1d(
    x: ArrayView3<f32>,
    title: Option<&str>,
    opts: &PlotOptions,
    name: &str,
) -> Result<RgbImage> {
    let (n, steps, _) = x.dim();
    let labels = opts.labels_for(n, name)?;
    let m = n.min(opts.max_lines);
    let ts = times(opts.t0, opts.t1, steps);
    let shown = x.slice(ndarray::s![..m, .., 0]);
    let y = opts
        .bounds
        .map_or_else(|| auto_range(shown.iter().map(|&v| v as f64)), |b| b.x);
    let t = (opts.t0.min(opts.t1), opts.t0.max(opts.t1));
    let r = Rect { x: t, y };
    let axes = Axes {
        x: t,
        y,
        x_desc: Some("t"),
        y_desc: Some("x"),
        y_format: None,
        x_format: None,
    };
    panel(opts.size, title, axes, |chart, _| {
        for (i, line) in shown.outer_iter().enumerate() {
            let pts: Vec<(f64, f64)> = ts.iter().zip(line).map(|(&t, &v)| (t, v as f64)).collect();
            let style = path_colour(labels, i).mix(0.5).stroke_width(1);
            for run in clip_polyline(&pts, &r) {
                chart
                    .draw_series(std::iter::once(PathElement::new(run, style)))
                    .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

/// Paths in the plane for trajectories `x` (N, T, 2), the first M, over the background.
pub fn traj2d(
    x: ArrayView3<f32>,
    title: Option<&str>,
    opts: &PlotOptions,
    name: &str,
) -> Result<RgbImage> {
    let (n, steps, _) = x.dim();
    let labels = opts.labels_for(n, name)?;
    let m = n.min(opts.max_lines);
    let paths: Vec<Vec<(f64, f64)>> = x.outer_iter().take(m).map(|p| pairs(p.view())).collect();
    let r = opts.plane(paths.iter().flatten().copied());
    panel(opts.size, title, Axes::plane(r), |chart, root| {
        let heat = background(chart, root, opts)?;
        for (i, path) in paths.iter().enumerate() {
            let style = path_colour(labels, i).mix(0.45).stroke_width(1);
            for run in clip_polyline(path, &r) {
                chart
                    .draw_series(std::iter::once(PathElement::new(run, style)))
                    .map_err(plot_err)?;
            }
        }
        if steps > 0 {
            let starts: Vec<_> = paths.iter().map(|p| p[0]).collect();
            let ends: Vec<_> = paths.iter().map(|p| p[steps - 1]).collect();
            let end_labels = labels.map(|l| &l[..m]);
            dots(chart, &starts, None, RGBColor(110, 110, 110), 2, 0.8, &r)?;
            dots(chart, &ends, end_labels, ink(heat), 2, 0.9, &r)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_span_t0_to_t1() {
        assert_eq!(times(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(times(0.0, 1.0, 1), vec![0.0]);
    }
}
