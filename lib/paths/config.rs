//! [`Path`]: a probability path as named on the command line (`--path`) and in a model file's
//! JSON config.

use serde_json::{json, Value};

use super::schedule::{VE_SIGMA_MAX, VE_SIGMA_MIN};
use super::{Alpha, Beta, GaussianPath};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Gaussian(GaussianPath),
    LinearInterpolant,
}

impl Path {
    /// The `--path` names: `condot`, `sqrt`, `cosine`, `vp`, `ve`, `linear-interp`.
    pub const CLI_NAMES: [&'static str; 6] =
        ["condot", "sqrt", "cosine", "vp", "ve", "linear-interp"];

    /// Parses a `--path` value.
    pub fn from_cli(s: &str) -> Option<Path> {
        match s {
            "condot" => Some(Path::Gaussian(GaussianPath::CONDOT)),
            "sqrt" => Some(Path::Gaussian(GaussianPath::SQRT)),
            "cosine" => Some(Path::Gaussian(GaussianPath::COSINE)),
            "vp" => Some(Path::Gaussian(GaussianPath::VP)),
            "ve" => Some(Path::Gaussian(GaussianPath::VE)),
            "linear-interp" => Some(Path::LinearInterpolant),
            _ => None,
        }
    }

    /// A short name for messages: the `--path` name, or `alpha/beta`.
    pub fn name(&self) -> String {
        match self {
            Path::Gaussian(g) => g
                .cli_name()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}/{}", g.alpha.name(), g.beta.name())),
            Path::LinearInterpolant => "linear-interp".to_string(),
        }
    }

    /// The config form: `{"kind":"gaussian","alpha":"linear","beta":"sqrt"}` or
    /// `{"kind":"linear-interpolant"}`; the VE schedule also records its noise levels,
    /// `"sigma_min": 0.01, "sigma_max": 50`.
    pub fn to_json(&self) -> Value {
        match self {
            Path::Gaussian(g) => {
                let mut v =
                    json!({"kind": "gaussian", "alpha": g.alpha.name(), "beta": g.beta.name()});
                if g.beta == Beta::Ve {
                    v["sigma_min"] = json!(VE_SIGMA_MIN);
                    v["sigma_max"] = json!(VE_SIGMA_MAX);
                }
                v
            }
            Path::LinearInterpolant => json!({"kind": "linear-interpolant"}),
        }
    }

    /// Parses the config form, or a `--path` name in its place (`"condot"` or
    /// `{"kind": "condot"}`); the error says what was found and what is valid.
    pub fn from_json(v: &Value) -> std::result::Result<Path, String> {
        let kind = v.as_str().or_else(|| v["kind"].as_str());
        let path = match kind.and_then(Path::from_cli) {
            Some(p) => p,
            None => Path::from_json_kind(v, kind)?,
        };
        // The VE noise levels are fixed; a file that records others was not made here.
        for (key, want) in [("sigma_min", VE_SIGMA_MIN), ("sigma_max", VE_SIGMA_MAX)] {
            let Some(found) = v.get(key).filter(|f| !f.is_null()) else {
                continue;
            };
            let ve = matches!(path, Path::Gaussian(g) if g.beta == Beta::Ve);
            if !ve {
                return Err(format!("path {v}: {key} applies to the ve schedule only"));
            }
            if found.as_f64() != Some(want) {
                return Err(format!(
                    "path {v}: {key} {found} is not supported (the ve schedule has {key} {want})"
                ));
            }
        }
        Ok(path)
    }

    fn from_json_kind(v: &Value, kind: Option<&str>) -> std::result::Result<Path, String> {
        match kind {
            Some("gaussian") => {
                let alpha = v["alpha"].as_str().and_then(Alpha::parse);
                let beta = v["beta"].as_str().and_then(Beta::parse);
                match (alpha, beta) {
                    (Some(alpha), Some(beta)) => Ok(Path::Gaussian(GaussianPath { alpha, beta })),
                    _ => Err(format!(
                        "unknown schedules in path {v} (alpha: linear, sin, vp or one; beta: \
                         linear, sqrt, cos, vp or ve)"
                    )),
                }
            }
            Some("linear-interpolant") => Ok(Path::LinearInterpolant),
            _ => Err(format!(
                "unknown path {v} (a kind of gaussian with alpha and beta, linear-interpolant, or \
                 one of {})",
                Path::CLI_NAMES.join(", ")
            )),
        }
    }

    /// The standard deviation of p_init = N(0, std^2 I) (where samplers start): sigma_max for
    /// the VE path, 1 otherwise (the linear interpolant's N(0, I) source).
    pub fn init_std(&self) -> f64 {
        match self {
            Path::Gaussian(g) => g.init_std(),
            Path::LinearInterpolant => 1.0,
        }
    }

    /// The Gaussian path whose marginals this path has when the source is N(0, I): itself, or
    /// CondOT for the linear interpolant. `None` for an interpolant from a data source.
    pub fn as_gaussian(&self, gaussian_source: bool) -> Option<GaussianPath> {
        match self {
            Path::Gaussian(g) => Some(*g),
            Path::LinearInterpolant if gaussian_source => Some(GaussianPath::CONDOT),
            Path::LinearInterpolant => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_specs_round_trip_through_json_and_cli_names() {
        for name in Path::CLI_NAMES {
            let p = Path::from_cli(name).unwrap();
            assert_eq!(Path::from_json(&p.to_json()).unwrap(), p);
            assert_eq!(p.name(), name);
        }
        assert_eq!(
            Path::from_json(&json!({"kind":"gaussian","alpha":"linear","beta":"sqrt"})),
            Ok(Path::Gaussian(GaussianPath::SQRT))
        );
        assert!(
            Path::from_json(&json!({"kind":"gaussian","alpha":"cubic","beta":"sqrt"})).is_err()
        );
        assert!(Path::from_cli("edm").is_none());
        // The command line's names stand for the config form too, bare or as the kind.
        assert_eq!(
            Path::from_json(&json!("condot")),
            Ok(Path::Gaussian(GaussianPath::CONDOT))
        );
        assert_eq!(
            Path::from_json(&json!({"kind": "linear-interp"})),
            Ok(Path::LinearInterpolant)
        );
        let err = Path::from_json(&json!({"kind": "edm"})).unwrap_err();
        assert!(
            err.contains("condot, sqrt, cosine, vp, ve, linear-interp"),
            "{err}"
        );
    }

    /// The VE path records its noise levels; others are refused by name, not misread.
    #[test]
    fn the_ve_path_records_its_noise_levels() {
        let ve = Path::from_cli("ve").unwrap();
        let v = ve.to_json();
        assert_eq!(
            v,
            json!({"kind": "gaussian", "alpha": "one", "beta": "ve", "sigma_min": 0.01,
                   "sigma_max": 50.0})
        );
        assert_eq!(ve.init_std(), 50.0);
        assert_eq!(Path::from_cli("condot").unwrap().init_std(), 1.0);
        // Without the levels (the bare name, or the schedules alone) the defaults stand.
        assert_eq!(
            Path::from_json(&json!({"kind": "gaussian", "alpha": "one", "beta": "ve"})),
            Ok(ve)
        );
        let mut other = v.clone();
        other["sigma_max"] = json!(80);
        let err = Path::from_json(&other).unwrap_err();
        assert!(err.contains("sigma_max 80 is not supported"), "{err}");
        let err = Path::from_json(&json!({"kind": "condot", "sigma_min": 0.01})).unwrap_err();
        assert!(err.contains("ve schedule only"), "{err}");
    }
}
