//! Line plots: loss curves against the step, metrics against the NFE or the guidance scale.
//!
//! Each [`Series`] is a polyline through its points in the order given, in its own colour
//! ([`class_colour`] of its index), with a dot on every point when there are few (at most
//! [`MARKERS_UP_TO`]), and a legend naming the series when there are several.
//!
//! - **Log scale** (`log_y`, `log_x`): the coordinate is log10 y (log10 x), ticks written as y
//!   (x) itself; points with y <= 0 (x <= 0) or not finite have no logarithm and are left out.
//! - **Smoothing** (`smooth` = k > 1): each series is drawn faint as it is, and over it the
//!   centred moving average of k points, s_i = mean(y_j : |j - i| <= k / 2, 0 <= j < n) (the
//!   window shrinks at the ends), computed on the plotted coordinate (log10 y on a log scale,
//!   so a smoothed loss curve is a geometric mean).
//! - **Bounds**: the x and y ranges of all shown points with a 5 % margin ([`auto_range`]).

use anyhow::bail;
use image::RgbImage;
use plotters::prelude::*;

use super::canvas::{class_colour, panel_with_area, plot_err, Axes, Chart, PixelArea, Root};
use super::{auto_range, clip_polyline, Rect};
use crate::Result;

/// Series of at most this many points get a dot on every point.
pub const MARKERS_UP_TO: usize = 40;

/// One line: a name for the legend and its (x, y) points in drawing order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How a line plot is drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct LineOptions {
    /// Pixels (width, height).
    pub size: (u32, u32),
    /// Logarithmic vertical axis.
    pub log_y: bool,
    /// Logarithmic horizontal axis (NFE 1, 2, 4, ... evenly spaced).
    pub log_x: bool,
    /// Moving-average window k (0 or 1: no smoothing).
    pub smooth: usize,
    /// Axis descriptions.
    pub x_desc: Option<String>,
    pub y_desc: Option<String>,
}

impl Default for LineOptions {
    fn default() -> Self {
        LineOptions {
            size: (640, 420),
            log_y: false,
            log_x: false,
            smooth: 0,
            x_desc: None,
            y_desc: None,
        }
    }
}

/// The centred moving average of `y` over windows of k points (see the module docs).
pub fn moving_average(y: &[f64], k: usize) -> Vec<f64> {
    let n = y.len();
    let half = k / 2;
    let mut prefix = vec![0.0; n + 1];
    for (i, v) in y.iter().enumerate() {
        prefix[i + 1] = prefix[i] + v;
    }
    (0..n)
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half + 1).min(n));
            (prefix[hi] - prefix[lo]) / (hi - lo) as f64
        })
        .collect()
}

/// The points as plotted: y -> log10 y (x -> log10 x) on a log scale (points without a
/// logarithm left out).
fn plotted(points: &[(f64, f64)], log_x: bool, log_y: bool) -> Vec<(f64, f64)> {
    let axis = |v: f64, log: bool| match log {
        true if v > 0.0 => Some(v.log10()),
        true => None,
        false => Some(v),
    };
    points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .filter_map(|&(x, y)| Some((axis(x, log_x)?, axis(y, log_y)?)))
        .collect()
}

/// A tick label for the plotted value `v` of a log axis: 10^v to 3 significant digits.
fn log_tick(v: &f64) -> String {
    let y = 10f64.powf(*v);
    if (1e-3..1e5).contains(&y.abs()) {
        let digits = 2 - y.abs().log10().floor() as i32;
        let scale = 10f64.powi(digits);
        format!("{}", (y * scale).round() / scale)
    } else {
        format!("{y:.2e}")
    }
}

/// A tick label in few characters: integers without a decimal point (500, not 500.0), other
/// values to 3 significant digits.
fn compact_tick(v: &f64) -> String {
    let v = *v;
    if v == 0.0 {
        return "0".into();
    }
    if (v - v.round()).abs() <= 1e-9 * v.abs().max(1.0) {
        return format!("{}", v.round());
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0);
    let scale = 10f64.powi(digits);
    format!("{}", (v * scale).round() / scale)
}

/// Draws `series` as one panel; see the module docs.
pub fn lines(series: &[Series], title: Option<&str>, opts: &LineOptions) -> Result<RgbImage> {
    lines_with_area(series, title, opts).map(|(img, _)| img)
}

fn lines_with_area(
    series: &[Series],
    title: Option<&str>,
    opts: &LineOptions,
) -> Result<(RgbImage, PixelArea)> {
    let shown: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| plotted(&s.points, opts.log_x, opts.log_y))
        .collect();
    if shown.iter().all(|s| s.is_empty()) {
        bail!(
            "nothing to plot: no series has a finite point{}{}",
            if opts.log_x { " with x > 0" } else { "" },
            if opts.log_y {
                " with y > 0 (log scale)"
            } else {
                ""
            }
        );
    }
    let all = || shown.iter().flatten();
    let r = Rect {
        x: auto_range(all().map(|p| p.0)),
        y: auto_range(all().map(|p| p.1)),
    };
    let (log, plain) = (log_tick, compact_tick);
    let y_format: &dyn Fn(&f64) -> String = if opts.log_y { &log } else { &plain };
    let x_format: &dyn Fn(&f64) -> String = if opts.log_x { &log } else { &plain };
    let axes = Axes {
        x: r.x,
        y: r.y,
        x_desc: opts.x_desc.as_deref(),
        y_desc: opts.y_desc.as_deref(),
        y_format: Some(y_format),
        x_format: Some(x_format),
    };
    let smooth = opts.smooth > 1;
    panel_with_area(opts.size, title, axes, |chart, root| {
        for (i, pts) in shown.iter().enumerate() {
            let colour = class_colour(i as i64);
            let raw = if smooth {
                colour.mix(0.3).stroke_width(1)
            } else {
                colour.stroke_width(2)
            };
            for run in clip_polyline(pts, &r) {
                chart
                    .draw_series(std::iter::once(PathElement::new(run, raw)))
                    .map_err(plot_err)?;
            }
            let line: Vec<(f64, f64)> = if smooth {
                let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
                let avg = moving_average(&ys, opts.smooth);
                pts.iter().zip(avg).map(|(p, a)| (p.0, a)).collect()
            } else {
                pts.clone()
            };
            let style = colour.stroke_width(2);
            chart
                .draw_series(
                    clip_polyline(&line, &r)
                        .into_iter()
                        .map(|run| PathElement::new(run, style)),
                )
                .map_err(plot_err)?;
            if pts.len() <= MARKERS_UP_TO {
                chart
                    .draw_series(
                        pts.iter()
                            .filter(|p| r.contains(**p))
                            .map(|&p| Circle::new(p, 3, colour.filled())),
                    )
                    .map_err(plot_err)?;
            }
        }
        if series.len() > 1 && crate::render::font::available() {
            legend(chart, root, series)?;
        }
        Ok(())
    })
}

/// The series' names beside their colours, in a box at the top right of the plotting area.
fn legend(chart: &Chart, root: &Root, series: &[Series]) -> Result<()> {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let font: TextStyle = (crate::render::font::FAMILY, 14).into();
    let widest = series
        .iter()
        .map(|s| {
            root.estimate_text_size(&s.name, &font)
                .map_or(0, |(w, _)| w as i32)
        })
        .max()
        .unwrap_or(0);
    let (row, w) = (18, widest + 40);
    let (x0, y0) = (xs.end - w - 8, ys.start + 8);
    let h = row * series.len() as i32 + 8;
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + w, y0 + h)],
        WHITE.mix(0.85).filled(),
    ))
    .map_err(plot_err)?;
    root.draw(&Rectangle::new(
        [(x0, y0), (x0 + w, y0 + h)],
        BLACK.mix(0.3),
    ))
    .map_err(plot_err)?;
    for (i, s) in series.iter().enumerate() {
        let y = y0 + 4 + row * i as i32 + row / 2;
        let c = class_colour(i as i64);
        root.draw(&PathElement::new(
            vec![(x0 + 6, y), (x0 + 28, y)],
            c.stroke_width(2),
        ))
        .map_err(plot_err)?;
        root.draw(&Text::new(s.name.clone(), (x0 + 34, y - 8), font.clone()))
            .map_err(plot_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The picture's pixel for the plotted point (x, y) of a chart over `r` in `area`.
    fn pixel(area: &PixelArea, r: &Rect, (x, y): (f64, f64)) -> (u32, u32) {
        let (xs, ys) = area;
        let fx = (x - r.x.0) / (r.x.1 - r.x.0);
        let fy = (r.y.1 - y) / (r.y.1 - r.y.0);
        let px = xs.start as f64 + fx * (xs.end - xs.start - 1) as f64;
        let py = ys.start as f64 + fy * (ys.end - ys.start - 1) as f64;
        (px.round() as u32, py.round() as u32)
    }

    /// Whether a pixel within 1 of (px, py) has the series' colour.
    fn coloured_near(img: &RgbImage, (px, py): (u32, u32), c: RGBColor) -> bool {
        (px - 1..=px + 1)
            .flat_map(|x| (py - 1..=py + 1).map(move |y| (x, y)))
            .any(|(x, y)| img.get_pixel(x, y).0 == [c.0, c.1, c.2])
    }

    #[test]
    fn moving_average_is_centred_and_shrinks_at_the_ends() {
        let y = [0.0, 3.0, 6.0, 9.0, 30.0];
        let s = moving_average(&y, 3);
        assert_eq!(s, vec![1.5, 3.0, 6.0, 15.0, 19.5]);
        assert_eq!(moving_average(&y, 1), y.to_vec());
    }

    #[test]
    fn points_land_where_the_axes_say_linear_and_log() {
        let c = class_colour(0);
        for log_y in [false, true] {
            // y = 10^(x / 2): a straight line on the log scale, a curve on the linear one.
            let pts: Vec<(f64, f64)> = (0..=8)
                .map(|i| (i as f64, 10f64.powf(i as f64 / 2.0)))
                .collect();
            let s = [Series {
                name: "a".into(),
                points: pts.clone(),
            }];
            let opts = LineOptions {
                log_y,
                ..LineOptions::default()
            };
            let (img, area) = lines_with_area(&s, None, &opts).unwrap();
            let shown = plotted(&pts, false, log_y);
            let r = Rect {
                x: auto_range(shown.iter().map(|p| p.0)),
                y: auto_range(shown.iter().map(|p| p.1)),
            };
            for &p in &shown {
                assert!(
                    coloured_near(&img, pixel(&area, &r, p), c),
                    "log {log_y}: {p:?}"
                );
            }
            // Between two points the line passes through their midpoint on the plotted scale:
            // on the log scale that is the geometric mean, which the linear plot puts elsewhere.
            let mid = (
                3.5,
                if log_y {
                    1.75
                } else {
                    (10f64.powf(1.5) + 10f64.powf(2.0)) / 2.0
                },
            );
            assert!(coloured_near(&img, pixel(&area, &r, mid), c), "log {log_y}");
            // A point well away from the line does not have the line's colour.
            let off = pixel(&area, &r, (5.5, r.y.0 + 0.02 * (r.y.1 - r.y.0)));
            assert!(!coloured_near(&img, off, c), "log {log_y}");
        }
    }

    #[test]
    fn log_x_spaces_doublings_evenly() {
        // NFE 1, 2, 4, ..., 64 against a straight line in log2 NFE: evenly spaced on a log x
        // axis, so the midpoint of 8 and 16 on the line is at the geometric mean sqrt(128).
        let c = class_colour(0);
        let pts: Vec<(f64, f64)> = (0..=6).map(|k| (2f64.powi(k), k as f64)).collect();
        let s = [Series {
            name: "a".into(),
            points: pts.clone(),
        }];
        let opts = LineOptions {
            log_x: true,
            ..LineOptions::default()
        };
        let (img, area) = lines_with_area(&s, None, &opts).unwrap();
        let shown = plotted(&pts, true, false);
        let r = Rect {
            x: auto_range(shown.iter().map(|p| p.0)),
            y: auto_range(shown.iter().map(|p| p.1)),
        };
        for &p in &shown {
            assert!(coloured_near(&img, pixel(&area, &r, p), c), "{p:?}");
        }
        let mid = (128f64.sqrt().log10(), 3.5);
        assert!(coloured_near(&img, pixel(&area, &r, mid), c));
        // On a linear x axis the line from (8, 3) to (16, 4) passes x = 12 at y = 3.5, which
        // the log axis puts at log10 12, off the line there.
        let off = (12f64.log10(), 3.5);
        assert!(!coloured_near(&img, pixel(&area, &r, off), c));
        assert_eq!(
            plotted(&[(0.0, 1.0), (-1.0, 1.0), (10.0, 1.0)], true, false),
            vec![(1.0, 1.0)]
        );
    }

    #[test]
    fn log_scale_leaves_out_non_positive_values_and_refuses_nothing_to_plot() {
        assert_eq!(
            plotted(&[(0.0, -1.0), (1.0, 0.0), (2.0, 100.0)], false, true),
            vec![(2.0, 2.0)]
        );
        let s = [Series {
            name: "a".into(),
            points: vec![(0.0, 0.0)],
        }];
        let opts = LineOptions {
            log_y: true,
            ..LineOptions::default()
        };
        let e = lines(&s, None, &opts).unwrap_err().to_string();
        assert!(e.contains("y > 0"), "{e}");
        assert_eq!(log_tick(&2.0), "100");
        assert_eq!(log_tick(&3.5), "3160");
        assert_eq!(log_tick(&-0.5), "0.316");
        assert_eq!(log_tick(&-4.0), "1.00e-4");
        assert_eq!(compact_tick(&500.0), "500");
        assert_eq!(compact_tick(&0.0), "0");
        assert_eq!(compact_tick(&-0.0), "0");
        assert_eq!(compact_tick(&2.5), "2.5");
        assert_eq!(compact_tick(&0.123456), "0.123");
        assert_eq!(compact_tick(&-1234.5678), "-1235");
    }
}
