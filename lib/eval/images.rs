//! Image metrics in the feature space of a trained classifier ([`crate::nn::classifier`]): how
//! close generated images are to real ones, and whether guided samples show the class asked for.
//!
//! With f(x) in R^F the classifier's penultimate features:
//!
//! - **Classifier-FID** (the Frechet distance of Heusel et al. 2017, "GANs trained by a two
//!   time-scale update rule", eq. 6, with our classifier in place of Inception): fit Gaussians
//!   N(mu_1, C_1), N(mu_2, C_2) to the two feature sets (sample mean, covariance with 1/(n - 1));
//!   d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}), the squared
//!   W_2 distance between the Gaussians; the square roots come from a symmetric
//!   eigendecomposition ([`super::linalg`]). Biased for finite n (it grows as n shrinks), so the
//!   two sample counts are always reported with it.
//! - **KID** (Binkowski et al. 2018, "Demystifying MMD GANs", section 4): the unbiased MMD^2
//!   (Gretton et al. 2012, eq. 3) with the polynomial kernel k(a, b) = (a.b / F + 1)^3, averaged
//!   over S random subsets of m samples of each set; reported with its standard deviation over
//!   the subsets and the standard error of the mean, sd / sqrt(S) (subsets overlap, so this
//!   understates the error when S m exceeds the set sizes). Two copies of one set give a value
//!   of order -1/m rather than 0: their subsets share samples, which are not independent.
//! - **Guided accuracy**: the fraction of samples the classifier assigns to the label they were
//!   generated for (notes section 5.1); the **class histogram** counts the predicted classes.
//!
//! The formulas are in [`super::metrics`]; this module classifies the image sets and reports.
//!
//! The same figures for real held-out images against the same reference (the "floor") give the
//! scale: no generator can be expected to beat real images. The report gives the ratio of the
//! two FIDs (`fid_over_floor`). Reconstructions of the held-out images by an autoencoder,
//! evaluated with those same images as the floor, measure the autoencoder: a perfect one
//! (the identity) has the floor's FID exactly, a ratio of 1.

use anyhow::bail;
use candle_core::{Device, Tensor};
use ndarray::{Array2, ArrayD, Axis};
use serde_json::{json, Value};

use super::metrics::{class_histogram, frechet_distance, guided_accuracy, kid, Gaussian};
use crate::io::npy::{expect_finite, shape_str};
use crate::nn::classifier::{self, Classifier};
use crate::Result;

/// The stream within `Purpose::Misc` that picks a reference subset ([`ImageSet::at_most`]).
const REFERENCE_STREAM: u64 = (1 << 40) - 1;

/// Features and predicted classes of a set of images.
pub struct Classified {
    /// (N, F) penultimate features.
    pub features: Array2<f32>,
    /// (N,) argmax classes.
    pub predicted: Vec<u32>,
}

/// Runs the classifier on `images` (N, C, H, W) as a flat row-major slice, in chunks of
/// `chunk`: its features and predicted classes.
pub fn classify(
    net: &Classifier,
    images: &[f32],
    chunk: usize,
    device: &Device,
) -> candle_core::Result<Classified> {
    let [c, h, w] = net.config.data_shape;
    let per = c * h * w;
    let n = images.len() / per;
    let f = net.config.features;
    let mut features = Vec::with_capacity(n * f);
    let mut predicted = Vec::with_capacity(n);
    for start in (0..n).step_by(chunk.max(1)) {
        let end = (start + chunk).min(n);
        let x = Tensor::from_slice(
            &images[start * per..end * per],
            (end - start, c, h, w),
            device,
        )?;
        let feats = net.features(&x)?;
        predicted.extend(classifier::predictions(&net.logits_of_features(&feats)?)?);
        features.extend(feats.flatten_all()?.to_vec1::<f32>()?);
    }
    let features = Array2::from_shape_vec((n, f), features)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Ok(Classified {
        features,
        predicted,
    })
}

/// Settings of [`figures`].
#[derive(Clone, Debug, PartialEq)]
pub struct ImageOptions {
    pub kid_subsets: usize,
    pub kid_subset_size: usize,
    pub seed: u64,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            kid_subsets: 100,
            kid_subset_size: 1000,
            seed: 0,
        }
    }
}

/// Every figure of a set against the reference, as JSON: classifier-FID (with both counts),
/// KID, the class histogram, and the guided accuracy when `labels` (one per image) are given.
pub fn figures(
    set: &Classified,
    labels: Option<&[u32]>,
    reference: &Classified,
    reference_fit: &Gaussian,
    num_classes: usize,
    opts: &ImageOptions,
) -> Result<Value> {
    let n = set.predicted.len();
    if n < 2 {
        bail!("at least 2 images are needed, got {n}");
    }
    if let Some(l) = labels {
        if l.len() != n {
            bail!("{} labels for {n} images", l.len());
        }
    }
    let g = Gaussian::fit(set.features.view());
    let fid = frechet_distance(&g.mean, &g.cov, &reference_fit.mean, &reference_fit.cov);
    let k = kid(
        set.features.view(),
        reference.features.view(),
        opts.kid_subsets,
        opts.kid_subset_size,
        opts.seed,
    );
    let counts = class_histogram(&set.predicted, num_classes);
    let fractions: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
    Ok(json!({
        "classifier_fid": {
            "value": fid,
            "n_samples": n,
            "n_reference": reference_fit.n,
            "features": g.mean.len(),
            "definition": "|mu1-mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) of the classifier's penultimate features",
        },
        "kid": {
            "value": k.mean,
            "standard_error": k.standard_error,
            "std": k.std,
            "subsets": k.subsets,
            "subset_size": k.subset_size,
            "kernel": "(a.b/F + 1)^3",
            "estimator": "unbiased MMD^2, mean over subsets",
        },
        "guided_accuracy": labels.map(|l| json!({
            "value": guided_accuracy(&set.predicted, l),
            "n": n,
        })),
        "class_histogram": {"counts": counts, "fractions": fractions},
    }))
}

/// The centre (N, C, H, W) of `images` (N, C, H + 2p, W + 2q), or `None` when the shape is not
/// that: images padded for a network (e.g. 28 -> 32 for the U-Net or the VAE) are read by a
/// classifier trained on the unpadded size, so generated borders are not scored.
fn centre_crop(images: &ArrayD<f32>, [c, h, w]: [usize; 3]) -> Option<ArrayD<f32>> {
    let s = images.shape();
    let fits = s.len() == 4
        && s[1] == c
        && s[2] >= h
        && s[3] >= w
        && (s[2] - h).is_multiple_of(2)
        && (s[3] - w).is_multiple_of(2);
    if !fits {
        return None;
    }
    let (top, left) = ((s[2] - h) / 2, (s[3] - w) / 2);
    let view = images.slice(ndarray::s![.., .., top..top + h, left..left + w]);
    Some(view.into_dyn().to_owned())
}

/// A set of images read from a file, with optional labels (one per image).
pub struct ImageSet {
    /// (N, C, H, W)
    pub images: ArrayD<f32>,
    pub labels: Option<Vec<u32>>,
    /// The images' file, for messages and the report.
    pub name: String,
}

impl ImageSet {
    /// Checks the images against the classifier `net` (file `classifier`): (N, C, H, W) of its
    /// data shape, N >= 2, finite; labels (N,) in 0..num_classes, from `labels_name`.
    pub fn new(
        images: ArrayD<f32>,
        labels: Option<(ArrayD<i64>, String)>,
        name: &str,
        net: &Classifier,
        classifier: &str,
    ) -> Result<ImageSet> {
        let [c, h, w] = net.config.data_shape;
        let images = match centre_crop(&images, [c, h, w]) {
            Some(cropped) => cropped,
            None => bail!(
                "expected images (N, {c}, {h}, {w}) (or padded evenly around them) for the \
                 classifier {classifier}, got {} in {name}",
                shape_str(images.shape())
            ),
        };
        let s = images.shape();
        if s[0] < 2 {
            bail!("{name} holds {} images, at least 2 are needed", s[0]);
        }
        expect_finite(&images, name)?;
        let k = net.config.num_classes;
        let labels = match labels {
            None => None,
            Some((y, y_name)) => {
                if y.shape() != [s[0]] {
                    bail!(
                        "expected labels ({},) for the images of {name}, got {} in {y_name}",
                        s[0],
                        shape_str(y.shape())
                    );
                }
                let v = y
                    .iter()
                    .map(|&l| match usize::try_from(l) {
                        Ok(u) if u < k => Ok(u as u32),
                        _ => bail!(
                            "{y_name} holds the label {l}; the classifier {classifier} knows 0..{}",
                            k - 1
                        ),
                    })
                    .collect::<Result<_>>()?;
                Some(v)
            }
        };
        Ok(ImageSet {
            images: images.as_standard_layout().into_owned(),
            labels,
            name: name.to_string(),
        })
    }

    /// At most `max` of the images (all when `max` is 0 or not fewer), a seeded random subset
    /// in file order, labels kept with their images. Classifying a 60,000-image reference for
    /// every report would cost more than the samples; 10,000 features fit a Gaussian well.
    pub fn at_most(self, max: usize, seed: u64) -> ImageSet {
        let n = self.images.shape()[0];
        if max == 0 || n <= max {
            return self;
        }
        let mut rng = crate::rng::stream(seed, crate::rng::Purpose::Misc, REFERENCE_STREAM);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..max {
            let j = rand::Rng::random_range(&mut rng, i..n);
            idx.swap(i, j);
        }
        idx.truncate(max);
        idx.sort_unstable();
        ImageSet {
            images: self.images.select(Axis(0), &idx),
            labels: self.labels.map(|l| idx.iter().map(|&i| l[i]).collect()),
            name: self.name,
        }
    }

    /// Reads images from `path` and, when given, labels from `labels`, checked against the
    /// classifier `net` (named `classifier` in errors) as [`ImageSet::new`] does.
    pub fn read(
        path: &str,
        labels: Option<&str>,
        net: &Classifier,
        classifier: &str,
    ) -> Result<ImageSet> {
        let images = crate::io::npy::read_f32(path)?;
        let labels = match labels {
            Some(l) => Some((crate::io::npy::read_i64(l)?, crate::io::display_name(l))),
            None => None,
        };
        ImageSet::new(
            images,
            labels,
            &crate::io::display_name(path),
            net,
            classifier,
        )
    }

    fn classify(&self, net: &Classifier, device: &Device) -> candle_core::Result<Classified> {
        let flat = self.images.as_slice().expect("standard layout");
        classify(net, flat, 500, device)
    }
}

/// The whole image report: the generated `samples` against the `reference`, and, with
/// `heldout` (real images the classifier was not trained on), the same figures for them under
/// `"floor"`.
pub fn report(
    net: &Classifier,
    samples: &ImageSet,
    reference: &ImageSet,
    heldout: Option<&ImageSet>,
    opts: &ImageOptions,
    device: &Device,
) -> Result<Value> {
    let k = net.config.num_classes;
    let reference_c = reference.classify(net, device)?;
    let reference_fit = Gaussian::fit(reference_c.features.view());
    let of = |set: &ImageSet| -> Result<Value> {
        let c = set.classify(net, device)?;
        let mut v = figures(
            &c,
            set.labels.as_deref(),
            &reference_c,
            &reference_fit,
            k,
            opts,
        )?;
        v["images"] = json!(set.name);
        Ok(v)
    };
    let mut out = of(samples)?;
    out["reference"] = json!(reference.name);
    out["n_samples"] = json!(samples.images.shape()[0]);
    out["n_reference"] = json!(reference.images.shape()[0]);
    out["image_shape"] = json!(net.config.data_shape);
    out["num_classes"] = json!(k);
    out["seed"] = json!(opts.seed);
    out["floor"] = match heldout {
        Some(h) => of(h)?,
        None => Value::Null,
    };
    // The sample FID in units of the floor's (1: as close as real held-out images).
    out["fid_over_floor"] = match out["floor"]["classifier_fid"]["value"].as_f64() {
        Some(f) if f > 0.0 => {
            json!(out["classifier_fid"]["value"].as_f64().unwrap_or(f64::NAN) / f)
        }
        _ => Value::Null,
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_takes_the_middle_of_evenly_padded_images() {
        let padded = ArrayD::from_shape_fn(vec![2, 1, 6, 8], |i| (i[2] * 10 + i[3]) as f32);
        let crop = centre_crop(&padded, [1, 2, 4]).unwrap();
        assert_eq!(crop.shape(), [2, 1, 2, 4]);
        assert_eq!(crop[[1, 0, 0, 0]], 22.0);
        assert_eq!(crop[[1, 0, 1, 3]], 35.0);
        assert!(centre_crop(&padded, [1, 6, 8]).is_some());
        assert!(centre_crop(&padded, [1, 3, 4]).is_none(), "odd margin");
        assert!(
            centre_crop(&padded, [1, 8, 8]).is_none(),
            "smaller than the classifier"
        );
        assert!(centre_crop(&padded, [3, 2, 4]).is_none(), "channels differ");
    }

    #[test]
    fn at_most_keeps_a_seeded_subset_with_its_labels() {
        let images = ArrayD::from_shape_fn(vec![10, 1, 1, 1], |i| i[0] as f32);
        let set = |labels: Vec<u32>| ImageSet {
            images: images.clone(),
            labels: Some(labels),
            name: "x".into(),
        };
        let a = set((0..10).collect()).at_most(4, 7);
        assert_eq!(a.images.shape(), [4, 1, 1, 1]);
        let picked: Vec<u32> = a.images.iter().map(|&v| v as u32).collect();
        assert_eq!(
            a.labels.as_deref(),
            Some(&picked[..]),
            "labels follow images"
        );
        assert!(picked.windows(2).all(|w| w[0] < w[1]), "file order");
        let b = set((0..10).collect()).at_most(4, 7);
        assert_eq!(a.images, b.images, "same seed, same subset");
        assert_eq!(set((0..10).collect()).at_most(0, 7).images.shape()[0], 10);
        assert_eq!(set((0..10).collect()).at_most(10, 7).images.shape()[0], 10);
    }
}
