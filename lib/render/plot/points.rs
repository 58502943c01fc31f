//! Panels of points (N, 2) and values (N,): the scatter plot, the 2-D histogram and kernel density
//! heat maps, and the 1-D histogram drawn as a density.

use image::RgbImage;
use ndarray::ArrayView2;
use plotters::prelude::*;

use super::canvas::{background, dots, heat_layer, ink, pairs, panel, plot_err, Axes};
use super::{auto_range, histogram, histogram2d, kde2d, PlotOptions};
use crate::Result;

/// A scatter plot of `points` (N, 2), optionally over the background heat map.
pub fn scatter(
    points: ArrayView2<f32>,
    title: Option<&str>,
    opts: &PlotOptions,
    name: &str,
) -> Result<RgbImage> {
    let labels = opts.labels_for(points.nrows(), name)?;
    let pts = pairs(points);
    let r = opts.plane(pts.iter().copied());
    panel(opts.size, title, Axes::plane(r), |chart, root| {
        let heat = background(chart, root, opts)?;
        let radius = opts.point_size;
        dots(chart, &pts, labels, ink(heat), radius, opts.alpha, &r)
    })
}

/// A 2-D histogram heat map of `points` (N, 2) with B × B bins over the bounds.
pub fn hist2d(
    points: ArrayView2<f32>,
    title: Option<&str>,
    opts: &PlotOptions,
) -> Result<RgbImage> {
    let pts = pairs(points);
    let r = opts.plane(pts.iter().copied());
    let counts = histogram2d(points, &r, opts.bins);
    panel(opts.size, title, Axes::plane(r), |chart, root| {
        heat_layer(chart, root, counts.view())
    })
}

/// A Gaussian kernel density estimate of `points` (N, 2) as a heat map over the bounds
/// ([`kde2d`], on `opts.bins` cells a side).
pub fn kde(points: ArrayView2<f32>, title: Option<&str>, opts: &PlotOptions) -> Result<RgbImage> {
    let r = opts.plane(pairs(points).into_iter());
    let density = kde2d(points, &r, opts.bins);
    panel(opts.size, title, Axes::plane(r), |chart, root| {
        heat_layer(chart, root, density.view())
    })
}

/// A 1-D histogram of `values` drawn as a density over the bounds' x range.
pub fn hist1d(values: &[f32], title: Option<&str>, opts: &PlotOptions) -> Result<RgbImage> {
    let vals = || values.iter().map(|&v| v as f64);
    let x = opts.bounds.map_or_else(|| auto_range(vals()), |b| b.x);
    let counts = histogram(vals(), x, opts.bins);
    let width = (x.1 - x.0) / opts.bins as f64;
    let norm = (values.len().max(1) as f64) * width;
    let top = counts.iter().copied().max().unwrap_or(0) as f64 / norm;
    let y = (0.0, if top > 0.0 { top * 1.05 } else { 1.0 });
    let axes = Axes {
        x,
        y,
        x_desc: None,
        y_desc: Some("density"),
        y_format: None,
        x_format: None,
    };
    panel(opts.size, title, axes, |chart, _| {
        let bar = RGBColor(31, 119, 180).filled();
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(b, &c)| {
                        let left = x.0 + b as f64 * width;
                        Rectangle::new([(left, 0.0), (left + width, c as f64 / norm)], bar)
                    }),
            )
            .map_err(plot_err)?;
        Ok(())
    })
}
