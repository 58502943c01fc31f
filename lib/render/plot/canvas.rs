//! Drawing shared by every panel: the colour maps, the panel frame (white canvas, caption, axes
//! with ticks and labels), the viridis heat-map layer and the filled dots of points.

use anyhow::anyhow;
use image::RgbImage;
use ndarray::ArrayView2;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{PlotOptions, Rect};
use crate::render::font;
use crate::Result;

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
pub(super) fn ink(on_heat: bool) -> RGBColor {
    if on_heat {
        RGBColor(240, 60, 60)
    } else {
        RGBColor(31, 119, 180)
    }
}

pub(super) type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
pub(super) type Root<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

pub(super) fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Axis ranges and descriptions of one panel.
pub(super) struct Axes<'s> {
    pub(super) x: (f64, f64),
    pub(super) y: (f64, f64),
    pub(super) x_desc: Option<&'s str>,
    pub(super) y_desc: Option<&'s str>,
    /// How the vertical tick labels are written (None: plotters' default).
    pub(super) y_format: Option<&'s dyn Fn(&f64) -> String>,
    /// How the horizontal tick labels are written (None: plotters' default).
    pub(super) x_format: Option<&'s dyn Fn(&f64) -> String>,
}

impl<'s> Axes<'s> {
    pub(super) fn plane(r: Rect) -> Self {
        Axes {
            x: r.x,
            y: r.y,
            x_desc: None,
            y_desc: None,
            y_format: None,
            x_format: None,
        }
    }
}

/// Draws one panel: white canvas, optional caption, axes with ticks and labels (when a font is
/// available), then `body` on the chart; returns the pixels.
pub(super) fn panel(
    size: (u32, u32),
    title: Option<&str>,
    axes: Axes,
    body: impl FnOnce(&mut Chart, &Root) -> Result<()>,
) -> Result<RgbImage> {
    panel_with_area(size, title, axes, body).map(|(img, _)| img)
}

/// The pixel columns and rows of a panel's plotting area: (x range, y range), y downwards.
pub(super) type PixelArea = (std::ops::Range<i32>, std::ops::Range<i32>);

/// [`panel`], also returning where the plotting area lies in the picture (for tests that read
/// pixels back at the positions the axes promise).
pub(super) fn panel_with_area(
    size: (u32, u32),
    title: Option<&str>,
    axes: Axes,
    body: impl FnOnce(&mut Chart, &Root) -> Result<()>,
) -> Result<(RgbImage, PixelArea)> {
    let (w, h) = size;
    let area;
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
        if let Some(f) = axes.y_format {
            mesh.y_label_formatter(f);
        }
        if let Some(f) = axes.x_format {
            mesh.x_label_formatter(f);
        }
        mesh.draw().map_err(plot_err)?;
        area = chart.plotting_area().get_pixel_range();
        body(&mut chart, &root)?;
        root.present().map_err(plot_err)?;
    }
    let img =
        RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("plot buffer has the wrong size"))?;
    Ok((img, area))
}

/// Fills the chart's plotting area with `grid` (H, W), row 0 at the top, coloured by viridis
/// over `grid`'s own finite min..max (nearest cell per pixel, so there are no seams).
pub(super) fn heat_layer(chart: &Chart, root: &Root, grid: ArrayView2<f32>) -> Result<()> {
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
pub(super) fn background(chart: &Chart, root: &Root, opts: &PlotOptions) -> Result<bool> {
    match &opts.background {
        Some(bg) => {
            heat_layer(chart, root, bg.view())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Draws filled circles at `points` inside `r`, coloured per label or with `colour`.
pub(super) fn dots(
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

pub(super) fn pairs(points: ArrayView2<f32>) -> Vec<(f64, f64)> {
    points
        .outer_iter()
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_ne!(class_colour(0), class_colour(1));
        assert_eq!(class_colour(3), class_colour(13));
    }
}
