//! [`Path`]: a probability path as named on the command line (`--path`) and in a model file's
//! JSON config.

use serde_json::{json, Value};

use super::{Alpha, Beta, GaussianPath};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Gaussian(GaussianPath),
    LinearInterpolant,
}

impl Path {
    /// The `--path` names: `condot`, `sqrt`, `cosine`, `vp`, `linear-interp`.
    pub const CLI_NAMES: [&'static str; 5] = ["condot", "sqrt", "cosine", "vp", "linear-interp"];

    /// Parses a `--path` value.
    pub fn from_cli(s: &str) -> Option<Path> {
        match s {
            "condot" => Some(Path::Gaussian(GaussianPath::CONDOT)),
            "sqrt" => Some(Path::Gaussian(GaussianPath::SQRT)),
            "cosine" => Some(Path::Gaussian(GaussianPath::COSINE)),
            "vp" => Some(Path::Gaussian(GaussianPath::VP)),
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
    /// `{"kind":"linear-interpolant"}`.
    pub fn to_json(&self) -> Value {
        match self {
            Path::Gaussian(g) => {
                json!({"kind": "gaussian", "alpha": g.alpha.name(), "beta": g.beta.name()})
            }
            Path::LinearInterpolant => json!({"kind": "linear-interpolant"}),
        }
    }

    /// Parses the config form, or a `--path` name in its place (`"condot"` or
    /// `{"kind": "condot"}`); the error says what was found and what is valid.
    pub fn from_json(v: &Value) -> std::result::Result<Path, String> {
        let kind = v.as_str().or_else(|| v["kind"].as_str());
        if let Some(p) = kind.and_then(Path::from_cli) {
            return Ok(p);
        }
        match kind {
            Some("gaussian") => {
                let alpha = v["alpha"].as_str().and_then(Alpha::parse);
                let beta = v["beta"].as_str().and_then(Beta::parse);
                match (alpha, beta) {
                    (Some(alpha), Some(beta)) => Ok(Path::Gaussian(GaussianPath { alpha, beta })),
                    _ => Err(format!(
                        "unknown schedules in path {v} (alpha: linear, sin or vp; beta: linear, \
                         sqrt, cos or vp)"
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
        assert!(Path::from_cli("ve").is_none());
        // The command line's names stand for the config form too, bare or as the kind.
        assert_eq!(
            Path::from_json(&json!("condot")),
            Ok(Path::Gaussian(GaussianPath::CONDOT))
        );
        assert_eq!(
            Path::from_json(&json!({"kind": "linear-interp"})),
            Ok(Path::LinearInterpolant)
        );
        let err = Path::from_json(&json!({"kind": "ve"})).unwrap_err();
        assert!(
            err.contains("condot, sqrt, cosine, vp, linear-interp"),
            "{err}"
        );
    }
}
