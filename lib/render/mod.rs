//! Pictures a person looks at: arrays turned into PNGs (sample grids, point clouds, densities,
//! trajectories of the ODE/SDE, vector fields), as in the figures of the notes.
//!
//! An input is drawn as one panel chosen from its shape (the data contract's layouts):
//! - images (N, C, H, W) with C = 1 or 3, or (N, H, W): a grid ([`grid`]);
//! - points (N, 2): a scatter plot or 2-D histogram; (N, 1) or (N,): a 1-D histogram;
//! - trajectories (N, T, 1) or (N, T, 2) (state X_t at T times, t = 0 noise → t = 1 data):
//!   lines, or K snapshot panels of the states at evenly spaced times
//!   j_k = round(k (T − 1)/(K − 1)), k = 0..K−1 (first and last included; K = 1 gives the last);
//! - quiver rows (N, 4) = (x, y, u, v): arrows of a vector field u_t(x) ([`plot`]).
//!
//! Several panels are tiled left to right in rows of `panel_cols`; each row is as tall as its
//! tallest panel and each column as wide as its widest, panels centred in their cells on
//! white. A figure title is a band above everything. Text needs a font ([`font`]); without one
//! everything is drawn except the text.

pub mod font;
pub mod grid;
pub mod plot;
pub mod records;

pub use grid::{image_grid, GridOptions, ValueRange};
pub use plot::{Bounds, Labels, PlotOptions};

use anyhow::{anyhow, bail, Context};
use image::{ImageEncoder, Rgb, RgbImage};
use ndarray::{ArrayD, Axis, Ix2, Ix3};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::io::npy::shape_str;
use crate::Result;

/// What to draw an array as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// From the shape: rank 4 images, (N, T, 1|2) traj, other rank 3 images, (N, 2) scatter,
    /// (N, 1) or (N,) hist1d
    Auto,
    /// Image grid: (N, C, H, W), C = 1 or 3, or (N, H, W).
    Images,
    /// Scatter plot of points (N, 2).
    Scatter,
    /// 2-D histogram heat map of points (N, 2) (a 1-D histogram for (N, 1) or (N,)).
    Hist,
    /// 1-D histogram of (N, 1) or (N,).
    #[value(name = "hist1d")]
    Hist1d,
    /// Gaussian kernel density estimate of points (N, 2) as a heat map (Scott's bandwidth per
    /// axis), on --bins cells a side.
    Kde,
    /// Trajectories (N, T, 1) or (N, T, 2).
    Traj,
    /// Arrows from rows (x, y, u, v): (N, 4), scaled so the longest spans 0.9 of the mean
    /// spacing √(area/N) of N arrows over the bounds
    Quiver,
}

/// One input of a figure: an array to draw, or a picture (a PNG) to paste as it is.
#[derive(Clone, Debug)]
pub enum Input {
    Array { name: String, data: ArrayD<f32> },
    Image { name: String, image: RgbImage },
}

/// How a whole figure is drawn.
#[derive(Clone, Debug)]
pub struct FigureOptions {
    /// Kind of every array input (Auto: each from its shape).
    pub kind: Kind,
    pub grid: GridOptions,
    pub plot: PlotOptions,
    /// Draw trajectory inputs as this many snapshot panels instead of lines.
    pub snapshots: Option<usize>,
    /// Title band over the whole figure.
    pub title: Option<String>,
    /// One title per input (empty: none).
    pub titles: Vec<String>,
    /// Panels per row (None: all in one row).
    pub panel_cols: Option<usize>,
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions {
            kind: Kind::Auto,
            grid: GridOptions::default(),
            plot: PlotOptions::default(),
            snapshots: None,
            title: None,
            titles: Vec::new(),
            panel_cols: None,
        }
    }
}

/// The kind of an array from its shape: rank 4 images; rank 3 with last axis 1 or 2
/// trajectories, other rank 3 images (N, H, W); (N, 2) scatter; (N, 1) or (N,) hist1d.
/// (N, 4) is ambiguous (quiver rows or 4-D points) and asks for `--kind` (a usage error).
pub fn auto_kind(shape: &[usize], name: &str) -> Result<Kind> {
    Ok(match shape {
        [_, _, _, _] => Kind::Images,
        [_, _, 1 | 2] => Kind::Traj,
        [_, _, _] => Kind::Images,
        [_, 2] => Kind::Scatter,
        [_, 1] | [_] => Kind::Hist1d,
        [_, 4] => crate::usage_bail!(
            "{name} has shape {}: pass --kind quiver to draw rows (x, y, u, v) as arrows",
            shape_str(shape)
        ),
        _ => bail!(
            "expected images (N, C, H, W) or (N, H, W), points (N, 2) or (N, 1), trajectories \
             (N, T, 1|2) or quiver rows (N, 4), got {} in {name}",
            shape_str(shape)
        ),
    })
}

/// Resolves `kind` for an array of `shape` and checks that the shape fits it.
pub fn resolve_kind(kind: Kind, shape: &[usize], name: &str) -> Result<Kind> {
    let kind = match kind {
        Kind::Auto => auto_kind(shape, name)?,
        Kind::Hist if matches!(shape, [_] | [_, 1]) => Kind::Hist1d,
        k => k,
    };
    let (fits, expected) = match kind {
        Kind::Images => (
            grid::check_images(shape, name).is_ok(),
            "images (N, 1|3, H, W) or (N, H, W)",
        ),
        Kind::Scatter | Kind::Hist | Kind::Kde => (matches!(shape, [_, 2]), "points (N, 2)"),
        Kind::Hist1d => (matches!(shape, [_] | [_, 1]), "values (N, 1) or (N,)"),
        Kind::Traj => (
            matches!(shape, [_, t, 1 | 2] if *t > 0),
            "trajectories (N, T, 1) or (N, T, 2)",
        ),
        Kind::Quiver => (
            matches!(shape, [_, 4]),
            "quiver rows (N, 4) of (x, y, u, v)",
        ),
        Kind::Auto => unreachable!("auto was resolved above"),
    };
    if !fits {
        bail!("expected {expected}, got {} in {name}", shape_str(shape));
    }
    Ok(kind)
}

/// The time indices of K snapshots of T steps: round(k (T − 1)/(K − 1)); K = 1 gives T − 1.
pub fn snapshot_indices(steps: usize, k: usize) -> Vec<usize> {
    if k <= 1 || steps <= 1 {
        return vec![steps.saturating_sub(1); k.min(1)];
    }
    (0..k)
        .map(|i| ((i * (steps - 1)) as f64 / (k - 1) as f64).round() as usize)
        .collect()
}

/// Draws one array as a panel (or, for trajectories with snapshots, a strip of panels).
pub fn render_array(
    data: &ArrayD<f32>,
    name: &str,
    title: Option<&str>,
    opts: &FigureOptions,
) -> Result<RgbImage> {
    let is_traj = matches!(data.shape(), [_, t, 1 | 2] if *t > 0);
    if let (Some(k), true) = (opts.snapshots, is_traj) {
        if matches!(
            opts.kind,
            Kind::Auto | Kind::Traj | Kind::Scatter | Kind::Hist | Kind::Hist1d | Kind::Kde
        ) {
            let strip = snapshots(data, name, k, opts)?;
            return titled(strip, title);
        }
    }
    let kind = resolve_kind(opts.kind, data.shape(), name)?;
    let p = &opts.plot;
    let view = |what: &str| anyhow!("reading {what} from {name}");
    match kind {
        Kind::Images => {
            let img = grid::image_grid_named(data, &opts.grid, name)?;
            titled(row_labelled(img, data.shape(), &opts.grid, name)?, title)
        }
        Kind::Scatter | Kind::Hist | Kind::Kde | Kind::Quiver => {
            let x = data
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(|_| view("rows"))?;
            match kind {
                Kind::Scatter => plot::scatter(x, title, p, name),
                Kind::Hist => plot::hist2d(x, title, p),
                Kind::Kde => plot::kde(x, title, p),
                _ => plot::quiver(x, title, p),
            }
        }
        Kind::Hist1d => plot::hist1d(
            data.as_slice()
                .unwrap_or(&data.iter().copied().collect::<Vec<_>>()),
            title,
            p,
        ),
        Kind::Traj => {
            let x = data
                .view()
                .into_dimensionality::<Ix3>()
                .map_err(|_| view("paths"))?;
            if x.dim().2 == 1 {
                plot::traj1d(x, title, p, name)
            } else {
                plot::traj2d(x, title, p, name)
            }
        }
        Kind::Auto => unreachable!("resolve_kind never returns Auto"),
    }
}

/// K panels of the states of trajectories `x` (N, T, D) at evenly spaced times, side by side,
/// titled "t = ...", sharing bounds (from all shown states unless given) and the background.
/// D = 2 states are drawn as a scatter (or a 2-D histogram with `--kind hist`), D = 1 as
/// histograms.
fn snapshots(x: &ArrayD<f32>, name: &str, k: usize, opts: &FigureOptions) -> Result<RgbImage> {
    let x = x
        .view()
        .into_dimensionality::<Ix3>()
        .with_context(|| format!("reading trajectories from {name}"))?;
    let (_, steps, d) = x.dim();
    if k == 0 || k > steps {
        bail!(
            "cannot take {k} snapshots of {steps} time steps in {name} {}",
            shape_str(x.shape())
        );
    }
    if d == 2 && opts.kind == Kind::Hist1d {
        bail!(
            "expected values (N, T, 1) for hist1d snapshots, got {} in {name}",
            shape_str(x.shape())
        );
    }
    let idx = snapshot_indices(steps, k);
    let ts = plot::times(opts.plot.t0, opts.plot.t1, steps);
    let states: Vec<_> = idx.iter().map(|&j| x.index_axis(Axis(1), j)).collect();
    let mut p = opts.plot.clone();
    let all = || {
        states
            .iter()
            .flat_map(|s| s.outer_iter())
            .map(|r| (r[0] as f64, r[d - 1] as f64))
    };
    let r = p.plane(all());
    p.bounds = Some(Bounds {
        x: r.x,
        y: if d == 2 { Some(r.y) } else { None },
    });
    let mut panels = Vec::with_capacity(k);
    for (s, &j) in states.iter().zip(&idx) {
        let title = format!("t = {}", fmt_time(ts[j]));
        panels.push(match (d, opts.kind) {
            (1, _) => plot::hist1d(&s.iter().copied().collect::<Vec<_>>(), Some(&title), &p)?,
            (_, Kind::Hist) => plot::hist2d(s.view(), Some(&title), &p)?,
            (_, Kind::Kde) => plot::kde(s.view(), Some(&title), &p)?,
            _ => plot::scatter(s.view(), Some(&title), &p, name)?,
        });
    }
    Ok(tile(&panels, k))
}

/// A time printed with two decimals, or in scientific notation when two would show 0.00.
fn fmt_time(t: f64) -> String {
    if t != 0.0 && t.abs() < 0.005 {
        format!("{t:.1e}")
    } else {
        format!("{t:.2}")
    }
}

/// Draws every input as a panel, tiles them, and adds the figure title band.
pub fn figure(inputs: &[Input], opts: &FigureOptions) -> Result<RgbImage> {
    if inputs.is_empty() {
        bail!("nothing to draw: no inputs");
    }
    let is_traj = |i: &Input| matches!(i, Input::Array { data, .. } if matches!(data.shape(), [_, t, 1 | 2] if *t > 0));
    if opts.snapshots.is_some() && !inputs.iter().any(is_traj) {
        crate::usage_bail!("--snapshots needs a trajectory input (N, T, 1) or (N, T, 2)");
    }
    let mut panels = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let title = opts
            .titles
            .get(i)
            .map(String::as_str)
            .filter(|t| !t.is_empty());
        panels.push(match input {
            Input::Array { name, data } => render_array(data, name, title, opts)?,
            Input::Image { image, .. } => titled(image.clone(), title)?,
        });
    }
    let cols = opts.panel_cols.unwrap_or(panels.len()).max(1);
    let fig = tile(&panels, cols);
    match &opts.title {
        Some(t) => titled(fig, Some(t)),
        None => Ok(fig),
    }
}

/// The size of a tiling of panels of `sizes` (width, height), `cols` per row: columns as wide
/// as their widest panel, rows as tall as their tallest. Returns the column widths, row
/// heights and the total (width, height).
pub fn tile_layout(sizes: &[(u32, u32)], cols: usize) -> (Vec<u32>, Vec<u32>, (u32, u32)) {
    let cols = cols.clamp(1, sizes.len().max(1));
    let rows = sizes.len().div_ceil(cols);
    let mut widths = vec![0u32; cols];
    let mut heights = vec![0u32; rows];
    for (i, &(w, h)) in sizes.iter().enumerate() {
        widths[i % cols] = widths[i % cols].max(w);
        heights[i / cols] = heights[i / cols].max(h);
    }
    let total = (widths.iter().sum(), heights.iter().sum());
    (widths, heights, total)
}

/// Tiles panels left to right, `cols` per row, each centred in its cell, on white.
pub fn tile(panels: &[RgbImage], cols: usize) -> RgbImage {
    let sizes: Vec<_> = panels.iter().map(|p| p.dimensions()).collect();
    let cols = cols.clamp(1, panels.len().max(1));
    let (widths, heights, (w, h)) = tile_layout(&sizes, cols);
    let mut out = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([255, 255, 255]));
    for (i, p) in panels.iter().enumerate() {
        let (c, r) = (i % cols, i / cols);
        let x0: u32 = widths[..c].iter().sum::<u32>() + (widths[c] - p.width()) / 2;
        let y0: u32 = heights[..r].iter().sum::<u32>() + (heights[r] - p.height()) / 2;
        image::imageops::replace(&mut out, p, x0 as i64, y0 as i64);
    }
    out
}

/// Height of a title band in pixels.
pub const TITLE_BAND: u32 = 36;

/// Adds a band with `title` centred above `img` (unchanged when there is no title or no font).
pub fn titled(img: RgbImage, title: Option<&str>) -> Result<RgbImage> {
    let Some(text) = title else {
        return Ok(img);
    };
    if !font::available() {
        return Ok(img);
    }
    let (w, h) = img.dimensions();
    let mut buf = vec![255u8; w as usize * TITLE_BAND as usize * 3];
    {
        let band = BitMapBackend::with_buffer(&mut buf, (w, TITLE_BAND)).into_drawing_area();
        let style = (font::FAMILY, 22)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        let at = ((w / 2) as i32, (TITLE_BAND / 2) as i32);
        band.draw(&Text::new(text.to_string(), at, style))
            .map_err(|e| anyhow!("drawing the title: {e}"))?;
        band.present()
            .map_err(|e| anyhow!("drawing the title: {e}"))?;
    }
    let band = RgbImage::from_raw(w, TITLE_BAND, buf).ok_or_else(|| anyhow!("title buffer"))?;
    let mut out = RgbImage::from_pixel(w, h + TITLE_BAND, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &band, 0, 0);
    image::imageops::replace(&mut out, &img, 0, TITLE_BAND as i64);
    Ok(out)
}

/// Pixel height of row labels (less for small cells).
const ROW_LABEL_PX: u32 = 16;

/// Adds a band left of an image grid of images `shape` with `opts.row_labels[r]` beside row r,
/// right-aligned and centred on the row (unchanged without labels or a font). The labels must
/// number the grid's rows.
pub fn row_labelled(
    img: RgbImage,
    shape: &[usize],
    opts: &GridOptions,
    name: &str,
) -> Result<RgbImage> {
    let labels = &opts.row_labels;
    if labels.is_empty() {
        return Ok(img);
    }
    let (h, w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let layout = grid::layout(shape[0], h, w, opts);
    if labels.len() != layout.rows {
        bail!(
            "expected {} row labels (one per row of {name}), found {}",
            layout.rows,
            labels.len()
        );
    }
    if !font::available() {
        return Ok(img);
    }
    let px = ROW_LABEL_PX.min(layout.cell_h.max(8));
    let font = (font::FAMILY, px as f64).into_font();
    let widest = labels
        .iter()
        .map(|l| font.box_size(l.trim()).map_or(0, |(w, _)| w))
        .max()
        .unwrap_or(0);
    let (band_w, (img_w, img_h)) = (widest + 12, img.dimensions());
    let mut buf = vec![255u8; band_w as usize * img_h as usize * 3];
    {
        let band = BitMapBackend::with_buffer(&mut buf, (band_w, img_h)).into_drawing_area();
        let style = font.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
        for (r, label) in labels.iter().enumerate() {
            let y = opts.pad + r as u32 * (layout.cell_h + opts.pad) + layout.cell_h / 2;
            let at = ((band_w - 6) as i32, y as i32);
            band.draw(&Text::new(label.trim().to_string(), at, style.clone()))
                .map_err(|e| anyhow!("drawing the row labels: {e}"))?;
        }
        band.present()
            .map_err(|e| anyhow!("drawing the row labels: {e}"))?;
    }
    let band = RgbImage::from_raw(band_w, img_h, buf).ok_or_else(|| anyhow!("label buffer"))?;
    let mut out = RgbImage::from_pixel(band_w + img_w, img_h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &band, 0, 0);
    image::imageops::replace(&mut out, &img, band_w as i64, 0);
    Ok(out)
}

/// Reads one input from a path or stdin (`-`): a PNG to paste, or a finite f32 `.npy` array.
pub fn read_input(path: &str) -> Result<Input> {
    let bytes = crate::io::read_bytes(path)?;
    let name = crate::io::display_name(path);
    match crate::io::sniff(&bytes) {
        crate::io::Format::Png => Ok(Input::Image {
            image: decode_png(&bytes, &name)?,
            name,
        }),
        crate::io::Format::Npy => {
            let data = crate::io::npy::decode_f32(&bytes, &name)?;
            crate::io::npy::expect_finite(&data, &name)?;
            Ok(Input::Array { name, data })
        }
        found => bail!("{name}: expected a .npy array or a PNG image, found {found}"),
    }
}

/// Parses a panel size `WxH` (sides 16..=10000 pixels).
pub fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let sides = s
        .split_once(['x', 'X'])
        .map(|(w, h)| (w.trim().parse::<u32>(), h.trim().parse::<u32>()));
    match sides {
        Some((Ok(w), Ok(h))) if [w, h].iter().all(|v| (16..=10_000).contains(v)) => Ok((w, h)),
        _ => Err(format!(
            "expected WxH with sides 16..10000, e.g. 600x600, got '{s}'"
        )),
    }
}

/// Encodes a picture as PNG bytes.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .context("encoding PNG")?;
    Ok(out)
}

/// Decodes PNG bytes (any colour type) into RGB, naming the input `name` in errors.
pub fn decode_png(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
        .with_context(|| format!("{name} is not a readable PNG"))?;
    Ok(img.to_rgb8())
}

/// Writes a picture as a PNG to a path (atomically) or stdout (`-`, never a terminal).
pub fn write_png(path: &str, img: &RgbImage) -> Result<()> {
    crate::io::write_bytes(path, &png_bytes(img)?, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_shapes() {
        assert_eq!(auto_kind(&[8, 1, 28, 28], "x").unwrap(), Kind::Images);
        assert_eq!(auto_kind(&[8, 28, 28], "x").unwrap(), Kind::Images);
        assert_eq!(auto_kind(&[8, 50, 2], "x").unwrap(), Kind::Traj);
        assert_eq!(auto_kind(&[8, 50, 1], "x").unwrap(), Kind::Traj);
        assert_eq!(auto_kind(&[8, 2], "x").unwrap(), Kind::Scatter);
        assert_eq!(auto_kind(&[8, 1], "x").unwrap(), Kind::Hist1d);
        assert_eq!(auto_kind(&[8], "x").unwrap(), Kind::Hist1d);
        let e = auto_kind(&[8, 4], "f.npy").unwrap_err();
        assert!(crate::error::is_usage(&e) && e.to_string().contains("--kind quiver"));
        let e = auto_kind(&[2, 3, 4, 5, 6], "x.npy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(2, 3, 4, 5, 6)") && e.contains("x.npy"), "{e}");
        assert_eq!(
            resolve_kind(Kind::Hist, &[8, 1], "x").unwrap(),
            Kind::Hist1d
        );
        assert_eq!(
            resolve_kind(Kind::Quiver, &[8, 4], "x").unwrap(),
            Kind::Quiver
        );
        let e = resolve_kind(Kind::Scatter, &[8, 3], "p.npy")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "expected points (N, 2), got (8, 3) in p.npy");
    }

    #[test]
    fn snapshot_times_include_first_and_last() {
        assert_eq!(snapshot_indices(101, 5), vec![0, 25, 50, 75, 100]);
        assert_eq!(snapshot_indices(10, 3), vec![0, 5, 9]); // 4.5 rounds up
        assert_eq!(snapshot_indices(10, 1), vec![9]);
        assert_eq!(snapshot_indices(2, 2), vec![0, 1]);
        assert_eq!(fmt_time(0.25), "0.25");
        assert_eq!(fmt_time(1.0 / 3.0), "0.33");
        assert_eq!(fmt_time(0.001), "1.0e-3");
    }

    #[test]
    fn tiling_sizes_and_placement() {
        let (w, h, total) = tile_layout(&[(10, 5), (4, 8), (6, 2)], 2);
        assert_eq!((w, h, total), (vec![10, 4], vec![8, 2], (14, 10)));
        let (_, _, total) = tile_layout(&[(3, 3); 4], 4);
        assert_eq!(total, (12, 3));
        let red = RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(4, 4, Rgb([0, 0, 255]));
        let t = tile(&[red, blue], 5);
        assert_eq!(t.dimensions(), (6, 4));
        assert_eq!(t.get_pixel(0, 1).0, [255, 0, 0]); // centred vertically: rows 1..3
        assert_eq!(t.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(t.get_pixel(5, 3).0, [0, 0, 255]);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("600x400"), Ok((600, 400)));
        assert!(parse_size("0x400").is_err());
        assert!(parse_size("600").is_err());
    }

    #[test]
    fn png_round_trip() {
        let mut img = RgbImage::from_pixel(3, 2, Rgb([1, 2, 3]));
        img.put_pixel(2, 1, Rgb([200, 100, 0]));
        let back = decode_png(&png_bytes(&img).unwrap(), "t").unwrap();
        assert_eq!(back, img);
        assert!(decode_png(b"\x89PNG garbage", "bad.png").is_err());
    }

    #[test]
    fn plot_panels_have_the_asked_size_and_are_not_blank() {
        let pts = ndarray::Array2::from_shape_fn((200, 2), |(i, j)| ((i * 7 + j * 3) % 17) as f32);
        let opts = FigureOptions {
            plot: PlotOptions {
                size: (200, 150),
                ..Default::default()
            },
            ..Default::default()
        };
        let img = render_array(&pts.into_dyn(), "p", None, &opts).unwrap();
        assert_eq!(img.dimensions(), (200, 150));
        let first = *img.get_pixel(0, 0);
        assert!(img.pixels().any(|p| *p != first));
    }
}
