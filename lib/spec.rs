//! Small specs that name a density, a vector field or a set of initial states on the command
//! line: a shorthand `name:key=value,key=value`, inline JSON, or a JSON file.
//!
//! Every form becomes one JSON object `{"<kind key>": name, key: value, ...}`, so the code that
//! builds densities and fields reads JSON only. In the shorthand a value is a number (`0.25`),
//! a list of numbers separated by `;` (`0;1.5`), or else a string. One key may be declared
//! "greedy": its value is the rest of the string, commas included, so that a spec can nest
//! another (`langevin:sigma=0.6,density=random_2d:nmodes=5,std=0.75`).

use anyhow::{anyhow, bail};
use serde_json::{Map, Number, Value};
use std::collections::BTreeSet;

use crate::Result;

/// Parses `name:key=value,...` (or just `name`) into `{kind_key: name, key: value, ...}`.
///
/// `greedy` names a key whose value is the rest of the string (it must come last).
pub fn parse_shorthand(
    s: &str,
    kind_key: &str,
    greedy: Option<&str>,
) -> Result<Map<String, Value>> {
    let (name, rest) = match s.split_once(':') {
        Some((n, r)) => (n.trim(), Some(r)),
        None => (s.trim(), None),
    };
    if name.is_empty() {
        bail!("'{s}' has no name before ':'");
    }
    let mut obj = Map::new();
    obj.insert(kind_key.to_string(), Value::String(name.to_string()));
    let mut rest = match rest {
        Some(r) => r,
        None => return Ok(obj),
    };
    while !rest.trim().is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| anyhow!("'{rest}' in '{s}' is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            bail!("an empty key in '{s}'");
        }
        let (value, next) = if Some(key) == greedy {
            (after, "")
        } else {
            match after.split_once(',') {
                Some((v, n)) => (v, n),
                None => (after, ""),
            }
        };
        if obj
            .insert(key.to_string(), parse_value(value.trim()))
            .is_some()
        {
            bail!("key '{key}' is given twice in '{s}'");
        }
        rest = next;
    }
    Ok(obj)
}

/// A shorthand value: a number, a `;`-separated list of numbers, or a string.
fn parse_value(v: &str) -> Value {
    if let Some(n) = number(v) {
        return n;
    }
    if v.contains(';') {
        let items: Option<Vec<Value>> = v.split(';').map(|p| number(p.trim())).collect();
        if let Some(items) = items {
            return Value::Array(items);
        }
    }
    Value::String(v.to_string())
}

fn number(v: &str) -> Option<Value> {
    let x: f64 = v.parse().ok()?;
    Number::from_f64(x).map(Value::Number)
}

/// Reads the keys of one spec object, remembering which were used so that a misspelt key is
/// an error rather than silently ignored.
pub struct Keys<'a> {
    obj: &'a Map<String, Value>,
    /// What the object describes, for error messages, e.g. `field ou`.
    what: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Keys<'a> {
    /// Reads `obj`, whose kind is already held in `kind_key` (that key counts as used).
    pub fn new(obj: &'a Map<String, Value>, what: String, kind_key: &'static str) -> Self {
        let mut used = BTreeSet::new();
        used.insert(kind_key);
        Keys { obj, what, used }
    }

    /// The raw value of `key`, if given.
    pub fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A finite number, or `default` when absent (an error when absent without a default).
    pub fn num(&mut self, key: &'static str, default: Option<f64>) -> Result<f64> {
        match self.raw(key) {
            None => default.ok_or_else(|| anyhow!("{} needs '{key}'", self.what)),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(x),
                _ => bail!("{}: '{key}' must be a finite number, got {v}", self.what),
            },
        }
    }

    /// A whole number >= `min`, or `default` when absent.
    pub fn count(&mut self, key: &'static str, default: Option<u64>, min: u64) -> Result<u64> {
        let x = self.num(key, default.map(|d| d as f64))?;
        if x.fract() != 0.0 || x < min as f64 {
            bail!(
                "{}: '{key}' must be a whole number >= {min}, got {x}",
                self.what
            );
        }
        Ok(x as u64)
    }

    /// A number or a list of numbers (a scalar becomes a list of one), if given.
    pub fn list(&mut self, key: &'static str) -> Result<Option<Vec<f64>>> {
        let what = self.what.clone();
        match self.raw(key) {
            None => Ok(None),
            Some(v) => numbers(v).map(Some).ok_or_else(|| {
                anyhow!("{what}: '{key}' must be a number or a list of numbers, got {v}")
            }),
        }
    }

    /// A list of lists of numbers (rows), if given.
    pub fn rows(&mut self, key: &'static str) -> Result<Option<Vec<Vec<f64>>>> {
        let what = self.what.clone();
        match self.raw(key) {
            None => Ok(None),
            Some(Value::Array(rows)) => rows
                .iter()
                .map(numbers)
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| anyhow!("{what}: '{key}' must be a list of lists of numbers")),
            Some(v) => bail!("{what}: '{key}' must be a list of lists of numbers, got {v}"),
        }
    }

    /// Fails on any key that was never asked for, listing the known ones.
    pub fn finish(self) -> Result<()> {
        if let Some(k) = self.obj.keys().find(|k| !self.used.contains(k.as_str())) {
            let known: Vec<&str> = self.used.iter().copied().collect();
            bail!(
                "{}: unknown key '{k}' (known: {})",
                self.what,
                known.join(", ")
            );
        }
        Ok(())
    }
}

/// A number or a list of numbers as a list; `None` if anything is not a finite number.
fn numbers(v: &Value) -> Option<Vec<f64>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_f64().filter(|x| x.is_finite()))
            .collect(),
        _ => v.as_f64().filter(|x| x.is_finite()).map(|x| vec![x]),
    }
}

/// Turns a spec (shorthand, inline JSON `{...}`, or the path of a JSON file) into one object.
///
/// A path wins over a shorthand of the same text. A JSON file is recognised by its content.
pub fn load_object(spec: &str, kind_key: &str, greedy: Option<&str>) -> Result<Map<String, Value>> {
    let text = spec.trim();
    let value = if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| anyhow!("the inline JSON spec is not valid: {e}"))?
    } else if is_file(spec) {
        let bytes = crate::io::read_bytes(spec)?;
        match crate::io::sniff(&bytes) {
            crate::io::Format::Json => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow!("{spec} is not valid JSON: {e}"))?,
            other => bail!("{spec}: expected a JSON spec, found {other}"),
        }
    } else {
        return parse_shorthand(text, kind_key, greedy);
    };
    match value {
        Value::Object(mut obj) => {
            if is_file(spec) {
                resolve_beside(&mut obj, spec)?;
            }
            Ok(obj)
        }
        other => bail!("a spec must be a JSON object, got {other}"),
    }
}

/// The keys of a spec whose values name files: the model (and score model) of a field, a
/// guided field's labels.
const FILE_KEYS: [&str; 3] = ["model", "score", "labels_file"];

/// A spec file's relative file names resolve from the current folder, as on the command line,
/// or else from the spec's own folder (a spec written next to its model keeps working when
/// read from elsewhere); when neither holds the file, the error says both places it looked.
fn resolve_beside(obj: &mut Map<String, Value>, spec: &str) -> Result<()> {
    let folder = std::path::Path::new(spec)
        .parent()
        .unwrap_or(std::path::Path::new(""));
    if folder.as_os_str().is_empty() {
        return Ok(());
    }
    for key in FILE_KEYS {
        let Some(Value::String(name)) = obj.get(key) else {
            continue;
        };
        let path = std::path::Path::new(name);
        if name == "-" || path.is_absolute() || path.exists() {
            continue;
        }
        let beside = folder.join(path);
        if beside.exists() {
            let beside = beside.to_string_lossy().into_owned();
            obj.insert(key.to_string(), Value::String(beside));
        } else {
            bail!(
                "{spec}: '{key}' names {name}, which is neither in the current folder nor beside \
                 the spec (looked for {name} and {})",
                beside.display()
            );
        }
    }
    Ok(())
}

/// Whether `spec` names an existing file (then errors in it are input errors, exit 1;
/// otherwise the spec is flag text and its errors are usage errors, exit 2).
pub fn is_file(spec: &str) -> bool {
    !spec.trim_start().starts_with('{') && std::path::Path::new(spec).is_file()
}

/// Marks an error about `spec` as a usage error when the spec was typed on the command line.
pub fn blame<T>(spec: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        if is_file(spec) {
            e
        } else {
            anyhow::Error::new(crate::error::UsageError(format!("{e:#}")))
        }
    })
}

/// The kind named in a spec object, e.g. `ou` from `{"field": "ou"}`.
pub fn kind<'a>(obj: &'a Map<String, Value>, kind_key: &str) -> Result<&'a str> {
    obj.get(kind_key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the spec has no \"{kind_key}\" naming what it is"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_spec_files_models_resolve_beside_it_when_not_found_here() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("run");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("flow.safetensors"), b"x").unwrap();
        let spec = sub.join("guided.json");
        std::fs::write(&spec, r#"{"field": "guided", "model": "flow.safetensors"}"#).unwrap();
        let obj = load_object(spec.to_str().unwrap(), "field", None).unwrap();
        let want = sub.join("flow.safetensors");
        assert_eq!(
            obj["model"],
            Value::String(want.to_string_lossy().into_owned())
        );
        std::fs::write(
            &spec,
            r#"{"field": "guided", "score": "missing.safetensors"}"#,
        )
        .unwrap();
        let err = load_object(spec.to_str().unwrap(), "field", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'score' names missing.safetensors")
                && err.contains(&sub.join("missing.safetensors").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn shorthand_numbers_lists_strings_and_greedy_keys() {
        let o = parse_shorthand("ou:theta=0.25,sigma=1", "field", None).unwrap();
        assert_eq!(
            Value::Object(o),
            json!({"field": "ou", "theta": 0.25, "sigma": 1.0})
        );
        let o = parse_shorthand("gaussian:mean=0;-1.5,std=2", "density", None).unwrap();
        assert_eq!(o["mean"], json!([0.0, -1.5]));
        let o = parse_shorthand(
            "langevin:sigma=0.6,density=random_2d:nmodes=5,std=0.75",
            "field",
            Some("density"),
        )
        .unwrap();
        assert_eq!(o["density"], json!("random_2d:nmodes=5,std=0.75"));
        assert_eq!(parse_shorthand("linear", "field", None).unwrap().len(), 1);
        assert!(parse_shorthand("ou:theta", "field", None).is_err());
        assert!(parse_shorthand("ou:theta=1,theta=2", "field", None).is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let o = parse_shorthand("ou:thta=1", "field", None).unwrap();
        let mut k = Keys::new(&o, "field ou".into(), "field");
        assert_eq!(k.num("theta", Some(1.0)).unwrap(), 1.0);
        let err = k.finish().unwrap_err().to_string();
        assert!(
            err.contains("unknown key 'thta'") && err.contains("theta"),
            "{err}"
        );
    }
}
