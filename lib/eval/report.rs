//! The two reports of the `evaluate` tool, read from files: the sample distances of
//! [`super::compare`] between generated and reference samples (N, D), and the image figures of
//! [`super::images::report`] in a trained classifier's feature space.

use anyhow::Context;
use candle_core::Device;
use ndarray::{Array2, ArrayD};
use serde_json::{json, Value};

use super::images::{self, ImageOptions, ImageSet};
use super::{check_pair, compare, Options};
use crate::cli::Common;
use crate::io::{self, npy};
use crate::nn::classifier::Classifier;
use crate::Result;

/// Reads an f32 .npy of samples (`what`, for messages) and flattens it to (N, D), naming the
/// file in errors; returns the flat samples and the file's shape.
pub fn read_samples(path: &str, what: &str) -> Result<(Array2<f32>, Vec<usize>)> {
    let name = io::display_name(path);
    let arr: ArrayD<f32> = npy::read_f32(path).with_context(|| format!("reading {what}"))?;
    npy::expect_finite(&arr, &name)?;
    let shape = arr.shape().to_vec();
    let Some(&n) = shape.first() else {
        anyhow::bail!("{name} holds a scalar, expected {what} (N, D)");
    };
    let d = shape.iter().skip(1).product::<usize>();
    let flat = arr
        .into_shape_with_order((n, d))
        .with_context(|| format!("{name}: cannot view {what} as (N, D)"))?;
    Ok((flat, shape))
}

/// The distances between the generated samples in the file `samples` and those in `reference`
/// ([`compare`], further axes flattened into D), with both files' names; `common` explains the
/// comparison (-v). The sets are checked by [`check_pair`] first.
pub fn compare_files(
    samples: &str,
    reference: &str,
    opts: &Options,
    common: &Common,
) -> Result<Value> {
    let (x, x_shape) = read_samples(samples, "generated samples")?;
    let (y, y_shape) = read_samples(reference, "reference samples")?;
    let (x_name, y_name) = (
        io::display_name(samples),
        format!("the reference {}", io::display_name(reference)),
    );
    check_pair(&x_shape, &y_shape, &x_name, &y_name)?;
    common.explain(format!(
        "comparing {} {} with {} {}",
        x_name,
        npy::shape_str(&x_shape),
        y_name,
        npy::shape_str(&y_shape)
    ));
    let mut report = compare(x.view(), y.view(), opts);
    report["samples"] = json!(io::display_name(samples));
    report["reference"] = json!(io::display_name(reference));
    Ok(report)
}

/// The files of an image report: generated images with the labels they were generated for,
/// the reference images, and real held-out images with their labels (the floor).
#[derive(Clone, Copy, Debug)]
pub struct ImageFiles<'a> {
    pub samples: &'a str,
    pub labels: Option<&'a str>,
    pub reference: &'a str,
    pub heldout: Option<&'a str>,
    pub heldout_labels: Option<&'a str>,
}

/// Every figure of [`images::report`] for `files` in the feature space of the classifier model
/// file `classifier`, on at most `max_reference` reference images (0: all) and as many held-out
/// images as there are samples (seeded subsets, `opts.seed`), naming the samples and the
/// classifier.
pub fn image_report_files(
    classifier: &str,
    files: &ImageFiles,
    max_reference: usize,
    opts: &ImageOptions,
    device: &Device,
) -> Result<Value> {
    let (net, model) = Classifier::open(classifier, device)?;
    let name = model.name.clone();
    let samples = ImageSet::read(files.samples, files.labels, &net, &name)?;
    let reference =
        ImageSet::read(files.reference, None, &net, &name)?.at_most(max_reference, opts.seed);
    let heldout = match files.heldout {
        Some(h) => Some(
            ImageSet::read(h, files.heldout_labels, &net, &name)?
                .at_most(samples.images.shape()[0], opts.seed),
        ),
        None => None,
    };
    let mut report = images::report(&net, &samples, &reference, heldout.as_ref(), opts, device)?;
    report["samples"] = json!(samples.name);
    report["classifier"] = json!(name);
    Ok(report)
}
