//! Plane geometry behind the panels: data ranges with their 5 % margin, Liang–Barsky clipping
//! of segments and polylines to the plotted rectangle, and 1-D and 2-D histogram binning.

use ndarray::{Array2, ArrayView2};

/// A rectangle of the plane: x range and y range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Rect {
    pub(super) fn contains(&self, (x, y): (f64, f64)) -> bool {
        (self.x.0..=self.x.1).contains(&x) && (self.y.0..=self.y.1).contains(&y)
    }

    pub(super) fn area(&self) -> f64 {
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

/// A Gaussian kernel density estimate (B, B) of `points` over `r`, at the cells' centres, row 0
/// at the top (as [`histogram2d`]):
///   p(x, y) = 1/N sum_i N(x; x_i, h_x^2) N(y; y_i, h_y^2),
/// with Scott's rule for each axis, h = std · N^(-1/6) (d = 2; scipy's `gaussian_kde` default,
/// here with a diagonal covariance). An axis with no spread takes h = 1/B of the bounds' span.
pub fn kde2d(points: ArrayView2<f32>, r: &Rect, bins: usize) -> Array2<f32> {
    let n = points.nrows();
    let mut p = Array2::<f32>::zeros((bins, bins));
    if n == 0 || bins == 0 {
        return p;
    }
    let bandwidth = |col: usize, (lo, hi): (f64, f64)| {
        let v: Vec<f64> = points.column(col).iter().map(|&x| x as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
        let h = var.sqrt() * (n as f64).powf(-1.0 / 6.0);
        if h > 0.0 {
            h
        } else {
            (hi - lo) / bins as f64
        }
    };
    let (hx, hy) = (bandwidth(0, r.x), bandwidth(1, r.y));
    let centre = |(lo, hi): (f64, f64), k: usize| lo + (k as f64 + 0.5) * (hi - lo) / bins as f64;
    let kernel = |v: f64, h: f64, (lo, hi): (f64, f64)| -> Vec<f64> {
        (0..bins)
            .map(|k| (-0.5 * ((centre((lo, hi), k) - v) / h).powi(2)).exp())
            .collect()
    };
    let mut acc = Array2::<f64>::zeros((bins, bins));
    for pt in points.outer_iter() {
        let kx = kernel(pt[0] as f64, hx, r.x);
        let ky = kernel(pt[1] as f64, hy, r.y);
        for (i, &y) in ky.iter().enumerate() {
            if y < 1e-12 {
                continue;
            }
            let mut row = acc.row_mut(bins - 1 - i);
            for (a, &x) in row.iter_mut().zip(&kx) {
                *a += y * x;
            }
        }
    }
    let norm = 1.0 / (n as f64 * 2.0 * std::f64::consts::PI * hx * hy);
    p.zip_mut_with(&acc, |d, &a| *d = (a * norm) as f32);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: Rect = Rect {
        x: (0.0, 1.0),
        y: (0.0, 1.0),
    };

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
    fn kde_is_the_formula_integrates_to_one_and_orients() {
        // Three points: Scott's bandwidths from the sample std, the density at a cell centre
        // by the formula, and (on bounds that hold it all) a total mass of one.
        let pts = ndarray::arr2(&[[0.0f32, 0.0], [1.0, 0.5], [3.0, -1.0]]);
        let r = Rect {
            x: (-10.0, 12.0),
            y: (-11.0, 10.0),
        };
        let bins = 220;
        let p = kde2d(pts.view(), &r, bins);
        let std = |v: [f64; 3]| {
            let m = v.iter().sum::<f64>() / 3.0;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0).sqrt()
        };
        let scott = 3f64.powf(-1.0 / 6.0);
        let (hx, hy) = (std([0.0, 1.0, 3.0]) * scott, std([0.0, 0.5, -1.0]) * scott);
        let (i, j) = (100, 120); // row i from the top, column j
        let (cx, cy) = (
            -10.0 + (j as f64 + 0.5) * 0.1,
            10.0 - (i as f64 + 0.5) * (21.0 / 220.0),
        );
        let want: f64 = pts
            .outer_iter()
            .map(|q| {
                let (dx, dy) = ((cx - q[0] as f64) / hx, (cy - q[1] as f64) / hy);
                (-0.5 * (dx * dx + dy * dy)).exp() / (2.0 * std::f64::consts::PI * hx * hy)
            })
            .sum::<f64>()
            / 3.0;
        assert!(
            (p[[i, j]] as f64 - want).abs() < 1e-5 * want.max(1e-3),
            "{} vs {want}",
            p[[i, j]]
        );
        let mass = p.iter().map(|&v| v as f64).sum::<f64>() * 0.1 * (21.0 / 220.0);
        assert!((mass - 1.0).abs() < 1e-3, "mass {mass}");
        // The point at (3, -1) is right of and below the others: the density there is in the
        // lower right of the grid.
        let at = |x: f64, y: f64| {
            let j = ((x + 10.0) / 0.1) as usize;
            let i = bins - 1 - ((y + 11.0) / (21.0 / 220.0)) as usize;
            p[[i, j]]
        };
        assert!(at(3.0, -1.0) > 10.0 * at(3.0, 5.0) && at(3.0, -1.0) > 10.0 * at(-3.0, -1.0));
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
}
