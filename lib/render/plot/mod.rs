//! Plot panels: point clouds, histograms, trajectories and vector fields, drawn with plotters
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

use anyhow::{anyhow, bail};
use image::RgbImage;
use ndarray::{Array2, ArrayView2, ArrayView3};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::font;
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

/// A rectangle of the plane: x range and y range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Rect {
    fn contains(&self, (x, y): (f64, f64)) -> bool {
        (self.x.0..=self.x.1).contains(&x) && (self.y.0..=self.y.1).contains(&y)
    }

    fn area(&self) -> f64 {
        (self.x.1 - self.x.0) * (self.y.1 - self.y.0)
    }
}

/// The finite min..max of `values` with a 5 % margin (±0.5 for one value, −1..1 for none).
pub fn auto_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (-1.0, 1.0);
    }
    let m = if hi > lo { 0.05 * (hi - lo) } else { 0.5 };
    (lo - m, hi + m)
}

/// Clips the segment p→q to `r` (Liang–Barsky); endpoints inside are returned unchanged.
pub fn clip_segment(p: (f64, f64), q: (f64, f64), r: &Rect) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (pk, qk) in [
        (-dx, p.0 - r.x.0),
        (dx, r.x.1 - p.0),
        (-dy, p.1 - r.y.0),
        (dy, r.y.1 - p.1),
    ] {
        if pk == 0.0 {
            if qk < 0.0 {
                return None;
            }
            continue;
        }
        let t = qk / pk;
        if pk < 0.0 {
            if t > t1 {
                return None;
            }
            t0 = t0.max(t);
        } else {
            if t < t0 {
                return None;
            }
            t1 = t1.min(t);
        }
    }
    let at = |t: f64| (p.0 + t * dx, p.1 + t * dy);
    let a = if t0 == 0.0 { p } else { at(t0) };
    let b = if t1 == 1.0 { q } else { at(t1) };
    Some((a, b))
}

/// The visible pieces of a polyline inside `r`, each a run of connected points.
pub fn clip_polyline(points: &[(f64, f64)], r: &Rect) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    for w in points.windows(2) {
        match clip_segment(w[0], w[1], r) {
            None => flush(&mut runs, &mut cur),
            Some((a, b)) => {
                if cur.last() != Some(&a) {
                    flush(&mut runs, &mut cur);
                    cur.push(a);
                }
                cur.push(b);
                if b != w[1] {
                    flush(&mut runs, &mut cur);
                }
            }
        }
    }
    flush(&mut runs, &mut cur);
    runs
}

fn flush(runs: &mut Vec<Vec<(f64, f64)>>, cur: &mut Vec<(f64, f64)>) {
    if cur.len() > 1 {
        runs.push(std::mem::take(cur));
    }
    cur.clear();
}

/// Histogram counts of `values` in `bins` equal bins over [lo, hi]; values outside are dropped
/// and hi itself falls in the last bin.
pub fn histogram(values: impl Iterator<Item = f64>, (lo, hi): (f64, f64), bins: usize) -> Vec<u64> {
    let mut counts = vec![0u64; bins];
    for v in values {
        if let Some(i) = bin_index(v, (lo, hi), bins) {
            counts[i] += 1;
        }
    }
    counts
}

/// ⌊B (v − lo)/(hi − lo)⌋, with v = hi in the last bin; None outside [lo, hi] or for NaN.
fn bin_index(v: f64, (lo, hi): (f64, f64), bins: usize) -> Option<usize> {
    if !(v >= lo && v <= hi) {
        return None;
    }
    Some((((v - lo) / (hi - lo) * bins as f64) as usize).min(bins - 1))
}

/// 2-D histogram (B, B) of `points` over `r`, row 0 at the top (y = ymax).
pub fn histogram2d(points: ArrayView2<f32>, r: &Rect, bins: usize) -> Array2<f32> {
    let mut h = Array2::<f32>::zeros((bins, bins));
    for p in points.outer_iter() {
        let (x, y) = (p[0] as f64, p[1] as f64);
        if let (Some(j), Some(i)) = (bin_index(x, r.x, bins), bin_index(y, r.y, bins)) {
            h[[bins - 1 - i, j]] += 1.0;
        }
    }
    h
}

/// A categorical colour for class `label` (10 well-separated hues; negative labels black).
pub fn class_colour(label: i64) -> RGBColor {
    const PALETTE: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    if label < 0 {
        return BLACK;
    }
    let (r, g, b) = PALETTE[(label % 10) as usize];
    RGBColor(r, g, b)
}

/// The perceptually uniform viridis colour of `h` in [0, 1] (clipped).
pub fn viridis(h: f64) -> RGBColor {
    ViridisRGB::get_color(if h.is_finite() {
        h.clamp(0.0, 1.0)
    } else {
        0.0
    })
}

/// The colour of points and arrows without labels: blue on white, red-orange over a heat map.
fn ink(on_heat: bool) -> RGBColor {
    if on_heat {
        RGBColor(240, 60, 60)
    } else {
        RGBColor(31, 119, 180)
    }
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Root<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Axis ranges and descriptions of one panel.
struct Axes<'s> {
    x: (f64, f64),
    y: (f64, f64),
    x_desc: Option<&'s str>,
    y_desc: Option<&'s str>,
}

impl<'s> Axes<'s> {
    fn plane(r: Rect) -> Self {
        Axes {
            x: r.x,
            y: r.y,
            x_desc: None,
            y_desc: None,
        }
    }
}

/// Draws one panel: white canvas, optional caption, axes with ticks and labels (when a font is
/// available), then `body` on the chart; returns the pixels.
fn panel(
    size: (u32, u32),
    title: Option<&str>,
    axes: Axes,
    body: impl FnOnce(&mut Chart, &Root) -> Result<()>,
) -> Result<RgbImage> {
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let text = font::available();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            if let Some(t) = title {
                builder.caption(t, (font::FAMILY, 22));
            }
            let bottom = if axes.x_desc.is_some() { 48 } else { 30 };
            let left = if axes.y_desc.is_some() { 70 } else { 52 };
            builder.x_label_area_size(bottom).y_label_area_size(left);
        } else {
            builder.x_label_area_size(6).y_label_area_size(6);
        }
        let mut chart = builder
            .build_cartesian_2d(axes.x.0..axes.x.1, axes.y.0..axes.y.1)
            .map_err(plot_err)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.08))
            .axis_style(BLACK);
        if text {
            mesh.label_style((font::FAMILY, 14))
                .axis_desc_style((font::FAMILY, 16));
            if let Some(d) = axes.x_desc {
                mesh.x_desc(d);
            }
            if let Some(d) = axes.y_desc {
                mesh.y_desc(d);
            }
            // About one tick label per 80 px across and 50 px down, so small panels stay legible.
            mesh.x_labels((w as usize / 80).clamp(2, 10))
                .y_labels((h as usize / 50).clamp(2, 10));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(plot_err)?;
        body(&mut chart, &root)?;
        root.present().map_err(plot_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer has the wrong size"))
}

/// Fills the chart's plotting area with `grid` (H, W), row 0 at the top, coloured by viridis
/// over `grid`'s own finite min..max (nearest cell per pixel, so there are no seams).
fn heat_layer(chart: &Chart, root: &Root, grid: ArrayView2<f32>) -> Result<()> {
    let (rows, cols) = grid.dim();
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (lo, hi) = grid
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = if hi > lo { (hi - lo) as f64 } else { 1.0 };
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (pw, ph) = ((xs.end - xs.start) as f64, (ys.end - ys.start) as f64);
    for py in ys.clone() {
        let i = (((py - ys.start) as f64 + 0.5) / ph * rows as f64) as usize;
        for px in xs.clone() {
            let j = (((px - xs.start) as f64 + 0.5) / pw * cols as f64) as usize;
            let v = grid[[i.min(rows - 1), j.min(cols - 1)]];
            let c = viridis((v - lo) as f64 / span);
            root.draw_pixel((px, py), &c).map_err(plot_err)?;
        }
    }
    Ok(())
}

/// Draws the background heat map, if any, checked to be (H, W).
fn background(chart: &Chart, root: &Root, opts: &PlotOptions) -> Result<bool> {
    match &opts.background {
        Some(bg) => {
            heat_layer(chart, root, bg.view())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Draws filled circles at `points` inside `r`, coloured per label or with `colour`.
fn dots(
    chart: &mut Chart,
    points: &[(f64, f64)],
    labels: Option<&[i64]>,
    colour: RGBColor,
    radius: u32,
    alpha: f64,
    r: &Rect,
) -> Result<()> {
    let style = |i: usize| {
        let c = labels.map_or(colour, |l| class_colour(l[i]));
        c.mix(alpha).filled()
    };
    chart
        .draw_series(
            points
                .iter()
                .enumerate()
                .filter(|(_, p)| r.contains(**p))
                .map(|(i, &p)| Circle::new(p, radius, style(i))),
        )
        .map_err(plot_err)?;
    Ok(())
}

fn pairs(points: ArrayView2<f32>) -> Vec<(f64, f64)> {
    points
        .outer_iter()
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect()
}

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

/// Arrows for rows (x, y, u, v) of `field` (N, 4), scaled as in the module docs.
pub fn quiver(field: ArrayView2<f32>, title: Option<&str>, opts: &PlotOptions) -> Result<RgbImage> {
    let rows: Vec<[f64; 4]> = field
        .outer_iter()
        .map(|p| [0, 1, 2, 3].map(|k| p[k] as f64))
        .collect();
    let r = opts.plane(rows.iter().map(|a| (a[0], a[1])));
    let longest = rows.iter().map(|a| a[2].hypot(a[3])).fold(0.0, f64::max);
    let scale = if longest > 0.0 {
        0.9 * (r.area() / rows.len().max(1) as f64).sqrt() / longest
    } else {
        0.0
    };
    panel(opts.size, title, Axes::plane(r), |chart, root| {
        let heat = background(chart, root, opts)?;
        let colour = if heat {
            ink(true)
        } else {
            RGBColor(40, 40, 40)
        };
        let style = colour.stroke_width(1);
        for a in &rows {
            let tail = (a[0], a[1]);
            let tip = (a[0] + scale * a[2], a[1] + scale * a[3]);
            let Some((p, q)) = clip_segment(tail, tip, &r) else {
                continue;
            };
            chart
                .draw_series(std::iter::once(PathElement::new(vec![p, q], style)))
                .map_err(plot_err)?;
            if q == tip {
                let head = arrow_head(chart.backend_coord(&tail), chart.backend_coord(&tip));
                if let Some(h) = head {
                    root.draw(&PathElement::new(h, style)).map_err(plot_err)?;
                }
            }
        }
        Ok(())
    })
}

/// The two barbs of an arrow head at `tip`, in pixels: ±25° off the shaft, 30 % of its length
/// (2 to 9 pixels). None for arrows shorter than 2 pixels.
fn arrow_head(tail: (i32, i32), tip: (i32, i32)) -> Option<Vec<(i32, i32)>> {
    let (dx, dy) = ((tip.0 - tail.0) as f64, (tip.1 - tail.1) as f64);
    let len = dx.hypot(dy);
    if len < 2.0 {
        return None;
    }
    let barb = (0.3 * len).clamp(2.0, 9.0);
    let (ux, uy) = (dx / len, dy / len);
    let (c, s) = (25f64.to_radians().cos(), 25f64.to_radians().sin());
    let side = |sign: f64| {
        let (rx, ry) = (ux * c - sign * uy * s, sign * ux * s + uy * c);
        (
            tip.0 - (barb * rx).round() as i32,
            tip.1 - (barb * ry).round() as i32,
        )
    };
    Some(vec![side(1.0), tip, side(-1.0)])
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

    const UNIT: Rect = Rect {
        x: (0.0, 1.0),
        y: (0.0, 1.0),
    };

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

    #[test]
    fn auto_range_adds_margin() {
        assert_eq!(auto_range([0.0, 10.0].into_iter()), (-0.5, 10.5));
        assert_eq!(auto_range([3.0, f64::NAN].into_iter()), (2.5, 3.5));
        assert_eq!(auto_range(std::iter::empty()), (-1.0, 1.0));
    }

    #[test]
    fn segments_are_clipped() {
        // Inside: unchanged; crossing: cut at the border; outside: gone.
        let s = clip_segment((0.2, 0.2), (0.8, 0.4), &UNIT).unwrap();
        assert_eq!(s, ((0.2, 0.2), (0.8, 0.4)));
        let (a, b) = clip_segment((0.5, 0.5), (1.5, 0.5), &UNIT).unwrap();
        assert_eq!(a, (0.5, 0.5));
        assert!((b.0 - 1.0).abs() < 1e-12 && b.1 == 0.5);
        let (a, b) = clip_segment((-1.0, -1.0), (2.0, 2.0), &UNIT).unwrap();
        assert!((a.0).abs() < 1e-12 && (b.0 - 1.0).abs() < 1e-12);
        assert!(clip_segment((2.0, 0.0), (3.0, 1.0), &UNIT).is_none());
        assert!(clip_segment((-0.5, 0.6), (0.6, 1.7), &UNIT).is_none());
    }

    #[test]
    fn polyline_leaving_and_returning_splits_in_two() {
        let pts = [(0.1, 0.5), (0.5, 0.5), (1.5, 0.5), (0.6, 0.5), (0.2, 0.5)];
        let runs = clip_polyline(&pts, &UNIT);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].len(), 3);
        assert_eq!(runs[1].len(), 3);
        assert_eq!(runs[1][2], (0.2, 0.5));
    }

    #[test]
    fn histograms_count_and_orient() {
        let c = histogram([0.0, 0.1, 0.5, 1.0, 1.5, -0.1].into_iter(), (0.0, 1.0), 2);
        assert_eq!(c, vec![2, 2]);
        // Point at the top right lands in row 0 (top), last column.
        let pts = ndarray::arr2(&[[0.9f32, 0.9], [0.1, 0.1], [0.1, 0.2], [5.0, 0.5]]);
        let h = histogram2d(pts.view(), &UNIT, 2);
        assert_eq!(h, ndarray::arr2(&[[0.0, 1.0], [2.0, 0.0]]));
    }

    #[test]
    fn times_span_t0_to_t1() {
        assert_eq!(times(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(times(0.0, 1.0, 1), vec![0.0]);
    }

    #[test]
    fn arrow_heads_point_back_along_the_shaft() {
        let h = arrow_head((0, 0), (20, 0)).unwrap();
        assert_eq!(h[1], (20, 0));
        assert!(h[0].0 < 20 && h[2].0 < 20);
        assert_eq!(h[0].1, -h[2].1);
        assert!(arrow_head((0, 0), (1, 0)).is_none());
    }

    #[test]
    fn colours() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_ne!(class_colour(0), class_colour(1));
        assert_eq!(class_colour(3), class_colour(13));
    }
}
