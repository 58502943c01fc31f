//! Binarised images as tokens (notes section 8 applied to pixels): a pixel above a threshold is
//! "1", else "0", (N, C, H, W) -> (N, C H W) over the vocabulary {"0", "1", "[MASK]"}
//! ([`Vocab::binary_pixels`]), after an optional average pooling that shortens the sequences;
//! and back to images for viewing. The text vocabulary and the wire format are in
//! [`super::tokens`].

use anyhow::{anyhow, bail, Context};
use ndarray::{ArrayD, IxDyn};

use super::tokens::{Tokenised, Vocab};
use crate::io::npy::shape_str;
use crate::Result;

/// Images (N, C, H, W) named `name` as tokens: average-pooled over `k` x `k` blocks (1: as
/// they are), then binarised at `threshold`, a token per pixel over {0, 1}.
pub fn tokenise_images(
    images: ArrayD<f32>,
    k: usize,
    threshold: f32,
    name: &str,
) -> Result<Tokenised> {
    crate::io::npy::expect_shape(images.shape(), "N,C,H,W", "images", name)?;
    let images = match k {
        1 => images,
        k => downsample(&images, k).with_context(|| format!("pooling {name}"))?,
    };
    let s = images.shape();
    let vocab = Vocab::binary_pixels([s[1], s[2], s[3]]);
    let t = binarise(&images, threshold);
    let len = t.shape()[1];
    let rows: Vec<Vec<u32>> = t
        .rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    Ok(Tokenised { vocab, rows, len })
}

/// Binarised images (N, C, H, W) -> tokens (N, C H W): 1 where the pixel is above `threshold`.
pub fn binarise(images: &ArrayD<f32>, threshold: f32) -> ArrayD<i64> {
    let n = images.shape()[0];
    let d = images.len() / n.max(1);
    let flat: Vec<i64> = images.iter().map(|&v| i64::from(v > threshold)).collect();
    ArrayD::from_shape_vec(IxDyn(&[n, d]), flat).expect("n * d values")
}

/// Average-pools images (N, C, H, W) over k x k blocks -> (N, C, H / k, W / k) (a partial
/// last block is dropped), to make shorter token sequences.
pub fn downsample(images: &ArrayD<f32>, k: usize) -> Result<ArrayD<f32>> {
    let s = images.shape();
    if s.len() != 4 || k == 0 || s[2] < k || s[3] < k {
        bail!("cannot pool images {} by {k}", shape_str(s));
    }
    let (n, c, h, w) = (s[0], s[1], s[2] / k, s[3] / k);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n, c, h, w]));
    for ((i, ch, y, x), v) in out
        .view_mut()
        .into_dimensionality::<ndarray::Ix4>()
        .expect("4 axes")
        .indexed_iter_mut()
    {
        let mut sum = 0.0;
        for dy in 0..k {
            for dx in 0..k {
                sum += images[[i, ch, y * k + dy, x * k + dx]];
            }
        }
        *v = sum / (k * k) as f32;
    }
    Ok(out)
}

/// Tokens (N, C H W) of binary pixels -> images (N, C, H, W) in {-1, 1} ([MASK] as 0).
pub fn pixels_to_images(tokens: &ArrayD<i64>, shape: [usize; 3]) -> Result<ArrayD<f32>> {
    let n = tokens.shape()[0];
    let flat: Vec<f32> = tokens
        .iter()
        .map(|&v| match v {
            0 => -1.0,
            1 => 1.0,
            _ => 0.0,
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[n, shape[0], shape[1], shape[2]]), flat).map_err(|_| {
        anyhow!(
            "tokens {} do not make images of shape {shape:?}",
            shape_str(tokens.shape())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_binarise_and_come_back() {
        let im =
            ArrayD::from_shape_vec(IxDyn(&[1, 1, 2, 2]), vec![-1.0f32, 0.5, 0.9, -0.2]).unwrap();
        let t = binarise(&im, 0.0);
        assert_eq!(t.as_slice().unwrap(), &[0, 1, 1, 0]);
        let back = pixels_to_images(&t, [1, 2, 2]).unwrap();
        assert_eq!(back.as_slice().unwrap(), &[-1.0, 1.0, 1.0, -1.0]);
        let small = downsample(&im, 2).unwrap();
        assert_eq!(small.shape(), &[1, 1, 1, 1]);
        assert!((small.as_slice().unwrap()[0] - 0.05).abs() < 1e-6);
    }
}
