//! Image grids: a batch of images (N, C, H, W) laid out as one picture, the sample grids a
//! person looks at to judge a generative model.
//!
//! Values map linearly from a value range [lo, hi] to bytes,
//!   byte(v) = round(255 · clamp((v − lo) / (hi − lo), 0, 1)),
//! so images normalised to [−1, 1] (the usual scaling for flow and diffusion models) show
//! faithfully with `--range -1,1`; the default range is the data's own min..max. NaN maps to 0.
//!
//! Layout (as torchvision's `make_grid`): `cols` images per row, filled row by row, each image
//! upscaled K times by nearest neighbour, `pad` pixels between cells and around the border:
//!   width = cols·(K·W + pad) + pad,  height = rows·(K·H + pad) + pad,  rows = ceil(N / cols).

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};
use ndarray::{ArrayD, ArrayView3, Axis, Ix4};

use crate::io::npy::shape_str;
use crate::Result;

/// The value range mapped to black..white.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRange {
    /// The data's own finite min..max.
    Auto,
    /// A fixed `low, high` with low < high; values outside are clipped.
    Fixed(f32, f32),
}

impl std::str::FromStr for ValueRange {
    type Err = String;

    /// Parses `auto` or `LOW,HIGH` (e.g. `-1,1`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(ValueRange::Auto);
        }
        match crate::cli::parse_list::<f32>(s)?[..] {
            [lo, hi] if lo.is_finite() && hi.is_finite() && lo < hi => {
                Ok(ValueRange::Fixed(lo, hi))
            }
            [lo, hi] => Err(format!("LOW must be below HIGH, got {lo},{hi}")),
            _ => Err(format!("expected `auto` or `LOW,HIGH`, got '{s}'")),
        }
    }
}

impl ValueRange {
    /// The concrete (lo, hi) for `data`: fixed, or its finite min..max.
    pub fn resolve<'a>(self, data: impl IntoIterator<Item = &'a f32>) -> (f32, f32) {
        match self {
            ValueRange::Fixed(lo, hi) => (lo, hi),
            ValueRange::Auto => data
                .into_iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                }),
        }
    }
}

/// Maps a value to a byte: round(255 · clamp((v − lo)/(hi − lo), 0, 1)); NaN gives 0 and a
/// degenerate range (constant data) gives mid grey.
pub fn to_byte(v: f32, lo: f32, hi: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return 128;
    }
    (255.0 * ((v - lo) / (hi - lo)).clamp(0.0, 1.0)).round() as u8
}

/// How a batch of images is laid out.
#[derive(Clone, Debug)]
pub struct GridOptions {
    /// Images per row; `None` gives ceil(sqrt(N)). Never more than N.
    pub cols: Option<usize>,
    /// Pixels between cells and around the border.
    pub pad: u32,
    /// Value range mapped to black..white.
    pub range: ValueRange,
    /// Nearest-neighbour upscaling factor (at least 1).
    pub upscale: u32,
    /// Colour of the padding (white by default, so dark digits and dark photos both stand out).
    pub pad_colour: [u8; 3],
    /// One label per row, drawn left of the grid (`super::row_labelled`); empty: none.
    pub row_labels: Vec<String>,
}

impl Default for GridOptions {
    fn default() -> Self {
        GridOptions {
            cols: None,
            pad: 2,
            range: ValueRange::Auto,
            upscale: 1,
            pad_colour: [255, 255, 255],
            row_labels: Vec::new(),
        }
    }
}

/// The size of a grid: `cols` × `rows` cells of `cell_w` × `cell_h` pixels, padding included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub cols: usize,
    pub rows: usize,
    pub cell_w: u32,
    pub cell_h: u32,
    pub width: u32,
    pub height: u32,
}

/// The layout of N images of H × W pixels (the formulas in the module docs).
pub fn layout(n: usize, h: usize, w: usize, opts: &GridOptions) -> Layout {
    let cols = opts
        .cols
        .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize)
        .clamp(1, n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let k = opts.upscale.max(1);
    let (cell_w, cell_h) = (w as u32 * k, h as u32 * k);
    Layout {
        cols,
        rows,
        cell_w,
        cell_h,
        width: cols as u32 * (cell_w + opts.pad) + opts.pad,
        height: rows as u32 * (cell_h + opts.pad) + opts.pad,
    }
}

/// Checks an images shape: (N, 1, H, W), (N, 3, H, W) or (N, H, W), with N, H, W ≥ 1.
pub fn check_images(shape: &[usize], name: &str) -> Result<()> {
    let ok = match shape {
        [n, c, h, w] => (*c == 1 || *c == 3) && *n * *h * *w > 0,
        [n, h, w] => *n * *h * *w > 0,
        _ => false,
    };
    if !ok {
        bail!(
            "expected images (N, 1, H, W), (N, 3, H, W) or (N, H, W), got {} in {name}",
            shape_str(shape)
        );
    }
    Ok(())
}

/// Lays out a batch of images `x` (N, C, H, W) with C = 1 or 3, or (N, H, W), as one picture.
pub fn image_grid(x: &ArrayD<f32>, opts: &GridOptions) -> Result<RgbImage> {
    image_grid_named(x, opts, "the image batch")
}

/// [`image_grid`], naming the input `name` in errors.
pub fn image_grid_named(x: &ArrayD<f32>, opts: &GridOptions, name: &str) -> Result<RgbImage> {
    check_images(x.shape(), name)?;
    if opts.upscale == 0 {
        bail!("the upscale factor must be at least 1");
    }
    let x4 = if x.ndim() == 3 {
        x.view().insert_axis(Axis(1))
    } else {
        x.view()
    };
    let x4 = x4
        .into_dimensionality::<Ix4>()
        .with_context(|| format!("reading images from {name}"))?;
    let (n, h, w) = (x4.shape()[0], x4.shape()[2], x4.shape()[3]);
    let (lo, hi) = opts.range.resolve(x4.iter());
    let lay = layout(n, h, w, opts);
    let mut img = RgbImage::from_pixel(lay.width, lay.height, Rgb(opts.pad_colour));
    for (i, one) in x4.outer_iter().enumerate() {
        let x0 = opts.pad + (i % lay.cols) as u32 * (lay.cell_w + opts.pad);
        let y0 = opts.pad + (i / lay.cols) as u32 * (lay.cell_h + opts.pad);
        paste_upscaled(&mut img, one, (x0, y0), opts.upscale, (lo, hi));
    }
    Ok(img)
}

/// Writes one image (C, H, W) at `at`, each pixel as a K × K block.
fn paste_upscaled(
    img: &mut RgbImage,
    one: ArrayView3<f32>,
    at: (u32, u32),
    k: u32,
    (lo, hi): (f32, f32),
) {
    let (c, h, w) = one.dim();
    for y in 0..h {
        for x in 0..w {
            let px = if c == 3 {
                Rgb([0, 1, 2].map(|ch| to_byte(one[[ch, y, x]], lo, hi)))
            } else {
                Rgb([to_byte(one[[0, y, x]], lo, hi); 3])
            };
            for dy in 0..k {
                for dx in 0..k {
                    img.put_pixel(at.0 + x as u32 * k + dx, at.1 + y as u32 * k + dy, px);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn opts(cols: Option<usize>, pad: u32, upscale: u32) -> GridOptions {
        GridOptions {
            cols,
            pad,
            upscale,
            ..Default::default()
        }
    }

    #[test]
    fn layout_sizes() {
        // 64 MNIST digits, default 8 columns, pad 2, upscale 2: 8·(56 + 2) + 2 = 466.
        let l = layout(64, 28, 28, &opts(None, 2, 2));
        assert_eq!((l.cols, l.rows, l.width, l.height), (8, 8, 466, 466));
        // 10 images: ceil(sqrt 10) = 4 columns, 3 rows.
        let l = layout(10, 8, 6, &opts(None, 1, 1));
        assert_eq!((l.cols, l.rows), (4, 3));
        assert_eq!((l.width, l.height), (4 * 7 + 1, 3 * 9 + 1));
        // Explicit columns; more columns than images shrinks to N.
        let l = layout(5, 4, 4, &opts(Some(2), 0, 3));
        assert_eq!((l.cols, l.rows, l.width, l.height), (2, 3, 24, 36));
        let l = layout(3, 4, 4, &opts(Some(10), 2, 1));
        assert_eq!((l.cols, l.rows, l.width, l.height), (3, 1, 20, 8));
    }

    #[test]
    fn range_mapping_and_clipping() {
        assert_eq!(to_byte(-1.0, -1.0, 1.0), 0);
        assert_eq!(to_byte(1.0, -1.0, 1.0), 255);
        assert_eq!(to_byte(0.0, -1.0, 1.0), 128); // 127.5 rounds up
        assert_eq!(to_byte(0.5, 0.0, 1.0), 128);
        assert_eq!(to_byte(0.25, 0.0, 1.0), 64);
        assert_eq!(to_byte(-7.0, -1.0, 1.0), 0);
        assert_eq!(to_byte(7.0, -1.0, 1.0), 255);
        assert_eq!(to_byte(f32::NAN, -1.0, 1.0), 0);
        assert_eq!(to_byte(3.0, 3.0, 3.0), 128);
        let auto = ValueRange::Auto.resolve(&[2.0, f32::NAN, -3.0, 1.0]);
        assert_eq!(auto, (-3.0, 2.0));
    }

    #[test]
    fn range_parsing() {
        assert_eq!("auto".parse::<ValueRange>(), Ok(ValueRange::Auto));
        assert_eq!(
            "-1,1".parse::<ValueRange>(),
            Ok(ValueRange::Fixed(-1.0, 1.0))
        );
        assert!("1,0".parse::<ValueRange>().is_err());
        assert!("0,1,2".parse::<ValueRange>().is_err());
        assert!("a,b".parse::<ValueRange>().is_err());
    }

    #[test]
    fn grid_places_and_scales_pixels() {
        // Two 1×2 grey images with values 0 and 1 at range 0..1, pad 1, upscale 2, 2 columns.
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 2]), vec![0.0, 1.0, 1.0, 0.0]).unwrap();
        let o = GridOptions {
            cols: Some(2),
            pad: 1,
            upscale: 2,
            range: ValueRange::Fixed(0.0, 1.0),
            pad_colour: [9, 9, 9],
            row_labels: Vec::new(),
        };
        let img = image_grid(&x, &o).unwrap();
        assert_eq!(img.dimensions(), (2 * (4 + 1) + 1, 2 + 1 + 1));
        assert_eq!(img.get_pixel(0, 0).0, [9, 9, 9]);
        assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(6, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(8, 2).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(5, 1).0, [9, 9, 9]);
    }

    #[test]
    fn colour_channels_and_bad_shapes() {
        let mut x = ArrayD::<f32>::zeros(IxDyn(&[1, 3, 1, 1]));
        x[[0, 0, 0, 0]] = 1.0;
        x[[0, 2, 0, 0]] = 0.5;
        let o = GridOptions {
            pad: 0,
            range: ValueRange::Fixed(0.0, 1.0),
            ..Default::default()
        };
        assert_eq!(image_grid(&x, &o).unwrap().get_pixel(0, 0).0, [255, 0, 128]);
        let bad = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 8, 8]));
        let err = image_grid_named(&bad, &o, "x.npy").unwrap_err().to_string();
        assert!(
            err.contains("(4, 2, 8, 8)") && err.contains("x.npy"),
            "{err}"
        );
        let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 8, 8]));
        assert!(image_grid(&empty, &o).is_err());
    }
}
