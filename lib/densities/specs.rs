//! Densities from specs: a shorthand (`gaussian:mean=0;0,std=1`), inline JSON or a JSON file,
//! checked key by key (see [`SPEC_HELP`]).

use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};

use super::{Density, Gaussian, GaussianMixture};
use crate::spec::{self, Keys};
use crate::Result;

/// The spec forms a density accepts, for `--help` texts.
pub const SPEC_HELP: &str = "\
Density specs: `gaussian:mean=0;0,std=1` (diagonal: `std=1;2`; `dim=D` broadcasts scalars), \
`random_2d:nmodes=5,std=0.75,scale=15,seed=3` (means uniform in [-scale/2, scale/2]^2), \
`symmetric_2d:nmodes=5,std=1,scale=10` (means on a circle of radius scale), both with an \
optional `offset=X` shifting the means along x; or JSON, inline or in a file: \
{\"density\": \"mixture\", \"weights\": [..], \"means\": [[..], ..], \
\"stds\": s | [s_k] | [[..], ..]} \
or any shorthand above as {\"density\": \"gaussian\", \"mean\": [0, 0], \"std\": 1}.";

/// Builds a density from a spec: a shorthand, inline JSON, or a JSON file ([`SPEC_HELP`]).
/// Errors in a spec typed on the command line are usage errors (exit 2).
pub fn from_spec(spec: &str) -> Result<Box<dyn Density>> {
    let built = spec::load_object(spec, "density", None).and_then(|o| from_json(&o));
    spec::blame(spec, built).with_context(|| format!("density spec '{spec}'"))
}

/// The names [`from_json`] knows.
pub const KINDS: &[&str] = &["gaussian", "mixture", "random_2d", "symmetric_2d"];

/// Builds a density from a spec object `{"density": kind, ...}`.
pub fn from_json(obj: &Map<String, Value>) -> Result<Box<dyn Density>> {
    let kind = spec::kind(obj, "density")?;
    let mut k = Keys::new(obj, format!("density {kind}"), "density");
    let density: Box<dyn Density> = match kind {
        "gaussian" => Box::new(gaussian_from(&mut k)?),
        "mixture" => Box::new(mixture_from(&mut k)?),
        "random_2d" | "symmetric_2d" => Box::new(course_mixture(kind, &mut k)?),
        other => bail!("unknown density '{other}' (known: {})", KINDS.join(", ")),
    };
    k.finish()?;
    Ok(density)
}

/// The course's constructors: `random_2d` (nmodes, std, scale, seed) and `symmetric_2d`
/// (nmodes, std, scale), each with an optional x `offset`.
fn course_mixture(kind: &str, k: &mut Keys) -> Result<GaussianMixture> {
    let nmodes = k.count("nmodes", None, 1)? as usize;
    let std = k.num("std", None)?;
    let scale = k.num("scale", Some(10.0))?;
    let mix = if kind == "random_2d" {
        GaussianMixture::random_2d(nmodes, std, scale, k.count("seed", Some(0), 0)?)?
    } else {
        GaussianMixture::symmetric_2d(nmodes, std, scale)?
    };
    Ok(mix.shift(&[k.num("offset", Some(0.0))?, 0.0]))
}

/// A Gaussian mixture from a spec (`mixture`, `random_2d` or `symmetric_2d`, in any spec
/// form), for tools that sample mixtures with their mode labels (sample-data).
pub fn mixture_from_spec(spec: &str) -> Result<GaussianMixture> {
    let built = spec::load_object(spec, "density", None).and_then(|obj| {
        let kind = spec::kind(&obj, "density")?;
        let mut k = Keys::new(&obj, format!("density {kind}"), "density");
        let mix = match kind {
            "mixture" => mixture_from(&mut k)?,
            "random_2d" | "symmetric_2d" => course_mixture(kind, &mut k)?,
            other => {
                bail!("'{other}' is not a Gaussian mixture (mixture, random_2d, symmetric_2d)")
            }
        };
        k.finish()?;
        Ok(mix)
    });
    spec::blame(spec, built).with_context(|| format!("mixture spec '{spec}'"))
}

/// `gaussian`: keys `mean`, `std` (numbers or lists), `dim` (broadcasts scalars).
fn gaussian_from(k: &mut Keys) -> Result<Gaussian> {
    let mean = k.list("mean")?.unwrap_or_else(|| vec![0.0]);
    let std = k.list("std")?.unwrap_or_else(|| vec![1.0]);
    let longest = mean.len().max(std.len());
    let dim = k.count("dim", Some(longest as u64), 1)? as usize;
    let widen = |v: Vec<f64>, what: &str| -> Result<Vec<f64>> {
        match v.len() {
            1 => Ok(vec![v[0]; dim]),
            n if n == dim => Ok(v),
            n => bail!("density gaussian: '{what}' has {n} values for dimension {dim}"),
        }
    };
    Gaussian::new(widen(mean, "mean")?, widen(std, "std")?)
}

/// `mixture`: keys `means` (rows), `weights` (default equal), `stds` or `std`.
fn mixture_from(k: &mut Keys) -> Result<GaussianMixture> {
    let means = k
        .rows("means")?
        .ok_or_else(|| anyhow!("density mixture needs 'means', a list of points"))?;
    let nmodes = means.len();
    let weights = k.list("weights")?.unwrap_or_else(|| vec![1.0; nmodes]);
    let stds: Vec<Vec<f64>> = match (k.raw("stds"), k.raw("std")) {
        (Some(_), Some(_)) => bail!("density mixture: give 'stds' or 'std', not both"),
        (None, None) => bail!("density mixture needs 'stds' (or 'std')"),
        (Some(Value::Array(a)), None) if a.iter().all(Value::is_array) => {
            k.rows("stds")?.unwrap_or_default()
        }
        (Some(_), None) => {
            let s = k.list("stds")?.unwrap_or_default();
            per_mode(&s, &means)?
        }
        (None, Some(_)) => per_mode(&k.list("std")?.unwrap_or_default(), &means)?,
    };
    if stds.len() != nmodes {
        bail!("density mixture: {nmodes} means but {} stds", stds.len());
    }
    let components = means
        .into_iter()
        .zip(stds)
        .map(|(m, s)| Gaussian::new(m, s))
        .collect::<Result<Vec<_>>>()?;
    GaussianMixture::new(weights, components)
}

/// One isotropic std for all modes (a single number) or one per mode, as diagonal rows.
fn per_mode(s: &[f64], means: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let pick = |k: usize| match s.len() {
        1 => Ok(s[0]),
        n if n == means.len() => Ok(s[k]),
        n => bail!(
            "density mixture: {n} stds for {} modes (give 1 or one per mode)",
            means.len()
        ),
    };
    means
        .iter()
        .enumerate()
        .map(|(k, m)| Ok(vec![pick(k)?; m.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use ndarray::array;

    #[test]
    fn specs_build_densities_and_name_errors() {
        let g = from_spec("gaussian:mean=0;1,std=2").unwrap();
        assert_eq!(g.dim(), 2);
        let g = from_spec("gaussian:dim=3").unwrap();
        assert_eq!(g.dim(), 3);
        let m = from_spec("random_2d:nmodes=5,std=0.75,scale=15,seed=3").unwrap();
        let direct = GaussianMixture::random_2d(5, 0.75, 15.0, 3).unwrap();
        let x = points();
        assert_eq!(
            m.log_density(x.view()).unwrap(),
            direct.log_density(x.view()).unwrap()
        );
        let j = from_spec(r#"{"density": "mixture", "means": [[0, 0], [1, 1]], "stds": [1, 2]}"#)
            .unwrap();
        assert_eq!(j.dim(), 2);
        let err = format!("{:#}", from_spec("banana:k=1").err().unwrap());
        assert!(err.contains("unknown density 'banana'"), "{err}");
        let err = format!(
            "{:#}",
            from_spec("gaussian:mean=0;1,std=1;2;3").err().unwrap()
        );
        assert!(err.contains("'mean' has 2 values for dimension 3"), "{err}");
        let err = from_spec("gaussian:mean=0;0")
            .unwrap()
            .score(array![[1.0, 2.0, 3.0]].view());
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("expected points (N, 2)"));
    }
}
