//! The quiver panel: arrows of a vector field from rows (x, y, u, v), scaled as in the module
//! docs of [`super`], with heads drawn in pixels.

use image::RgbImage;
use ndarray::ArrayView2;
use plotters::prelude::*;

use super::canvas::{background, ink, panel, plot_err, Axes};
use super::{clip_segment, PlotOptions};
use crate::Result;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_heads_point_back_along_the_shaft() {
        let h = arrow_head((0, 0), (20, 0)).unwrap();
        assert_eq!(h[1], (20, 0));
        assert!(h[0].0 < 20 && h[2].0 < 20);
        assert_eq!(h[0].1, -h[2].1);
        assert!(arrow_head((0, 0), (1, 0)).is_none());
    }
}
