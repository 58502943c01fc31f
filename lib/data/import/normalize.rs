//! From bytes to the wire format: the affine normalisation x = (v - mean) / std of v = byte / 255,
//! padding with black, and the image and label arrays.

use anyhow::{bail, Context};
use ndarray::{ArrayD, IxDyn};

use super::ImageSet;
use crate::Result;

/// How pixel values v = byte / 255 in [0, 1] are mapped to the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalize {
    /// x = 2v - 1 in [-1, 1] (the default).
    MinusOneOne,
    /// x = v in [0, 1].
    Unit,
    /// x = (v - mean) / std with the data's own pixel mean and standard deviation, or given ones
    /// (to normalise a test split with its train split's statistics).
    Standard { mean: Option<f64>, std: Option<f64> },
}

/// The affine map x = (v - mean) / std applied to v = byte / 255. Its inverse, v = x std + mean,
/// turns outputs back into intensities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub mean: f64,
    pub std: f64,
}

impl Affine {
    /// The map that `norm` chooses for `images` (which give the statistics when needed).
    pub fn choose(norm: Normalize, images: &ImageSet) -> Result<Affine> {
        let affine = match norm {
            Normalize::MinusOneOne => Affine {
                mean: 0.5,
                std: 0.5,
            },
            Normalize::Unit => Affine {
                mean: 0.0,
                std: 1.0,
            },
            Normalize::Standard { mean, std } => {
                let (m, s) = images.pixel_stats();
                Affine {
                    mean: mean.unwrap_or(m),
                    std: std.unwrap_or(s),
                }
            }
        };
        if !(affine.std > 0.0 && affine.std.is_finite() && affine.mean.is_finite()) {
            bail!(
                "cannot standardise: the pixel standard deviation is {} (every pixel has the same value)",
                affine.std
            );
        }
        Ok(affine)
    }

    /// The output value of byte `b`.
    pub fn apply(&self, b: u8) -> f32 {
        ((b as f64 / 255.0 - self.mean) / self.std) as f32
    }

    /// The output value of a black pixel, used for padding.
    pub fn black(&self) -> f32 {
        self.apply(0)
    }
}

/// Builds the (N, 1, side, side) f32 images, or (N, 1, H, W) without padding: normalised by
/// `affine`, each image centred in a border of black when `pad` is given (an odd margin puts the
/// extra row/column at the bottom/right). Fails when `pad` is smaller than the images.
pub fn to_array(images: &ImageSet, affine: Affine, pad: Option<usize>) -> Result<ArrayD<f32>> {
    let (h, w) = (images.height, images.width);
    let (oh, ow) = match pad {
        None => (h, w),
        Some(side) if side >= h && side >= w => (side, side),
        Some(side) => bail!(
            "cannot pad {h}x{w} images to {side}x{side}: the size must be at least {}",
            h.max(w)
        ),
    };
    let lut: Vec<f32> = (0..=255u8).map(|b| affine.apply(b)).collect();
    let (top, left) = ((oh - h) / 2, (ow - w) / 2);
    let mut out = vec![affine.black(); images.count * oh * ow];
    for (src, dst) in images
        .pixels
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
    {
        for r in 0..h {
            let row = &mut dst[(top + r) * ow + left..(top + r) * ow + left + w];
            for (o, &b) in row.iter_mut().zip(&src[r * w..(r + 1) * w]) {
                *o = lut[b as usize];
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[images.count, 1, oh, ow]), out)
        .context("building the image array")
}

/// The (N,) i64 label array.
pub fn labels_array(labels: &[i64]) -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels.to_vec()).expect("1-D shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_padding() {
        let s = ImageSet {
            count: 1,
            height: 1,
            width: 2,
            pixels: vec![0, 255],
        };
        let a = Affine::choose(Normalize::MinusOneOne, &s).unwrap();
        let x = to_array(&s, a, Some(4)).unwrap();
        assert_eq!(x.shape(), &[1, 1, 4, 4]);
        // a 1x2 image centred in 4x4: row 1, columns 1..3; the rest is black = -1
        let mut want = [-1.0f32; 16];
        want[6] = 1.0;
        assert_eq!(x.as_slice().unwrap(), &want[..]);
        let u = Affine::choose(Normalize::Unit, &s).unwrap();
        assert_eq!(
            to_array(&s, u, None).unwrap().as_slice().unwrap(),
            &[0.0, 1.0]
        );
        // standardisation: pixels {0, 1} have mean 1/2 and std 1/2, so x = +-1 and black = -1
        let st = Affine::choose(
            Normalize::Standard {
                mean: None,
                std: None,
            },
            &s,
        )
        .unwrap();
        assert!((st.mean - 0.5).abs() < 1e-12 && (st.std - 0.5).abs() < 1e-12);
        assert!(to_array(&s, a, Some(1))
            .unwrap_err()
            .to_string()
            .contains("cannot pad 1x2"));
        let flat = ImageSet {
            count: 1,
            height: 1,
            width: 2,
            pixels: vec![9, 9],
        };
        assert!(Affine::choose(
            Normalize::Standard {
                mean: None,
                std: None
            },
            &flat
        )
        .is_err());
    }
}
