//! Model files: one `.safetensors` for every trained thing, self-describing.
//!
//! `__metadata__` holds one string entry, `flowpipe`: the JSON config that rebuilds the network
//! without any repeated flag: `format` (`flowpipe-model/1`), `kind` (`velocity`, `score`, `vae`,
//! `classifier`, `checkpoint`, ...), architecture and sizes, probability path, data shape,
//! training arguments, the flowpipe version and the time convention (t = 0 noise, t = 1 data).
//! One entry, not several: safetensors writes its metadata map in hash order, so several
//! entries would make the same model serialise to different bytes from run to run.
//!
//! The files load in Python:
//! `json.loads(safetensors.safe_open(path, "np").metadata()["flowpipe"])["kind"]`.

use anyhow::{anyhow, bail, Context};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

use super::{display_name, read_bytes, sniff, write_atomic, write_bytes, Format};
use crate::Result;

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "flowpipe-model/1";

/// A loaded model file: its config and its named tensors.
pub struct ModelFile {
    /// The JSON config from `__metadata__["flowpipe"]`; always has `kind`.
    pub config: Value,
    pub tensors: HashMap<String, Tensor>,
    /// Where it came from, for error messages.
    pub name: String,
}

impl ModelFile {
    /// The model's kind (`velocity`, `vae`, ...).
    pub fn kind(&self) -> &str {
        self.config["kind"].as_str().unwrap_or("unknown")
    }

    /// A tensor by name, with an error naming the file when it is missing.
    pub fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: the model file has no tensor '{key}'", self.name))
    }

    /// A config entry by name, with an error naming the file when it is missing.
    pub fn field(&self, key: &str) -> Result<&Value> {
        match self.config.get(key) {
            Some(v) if !v.is_null() => Ok(v),
            _ => bail!("{}: the model config has no '{key}'", self.name),
        }
    }

    /// Fails unless the kind is one of `kinds`.
    pub fn expect_kind(&self, kinds: &[&str]) -> Result<()> {
        if !kinds.contains(&self.kind()) {
            bail!(
                "{}: expected a {} model, found a {} model",
                self.name,
                kinds.join(" or "),
                self.kind()
            );
        }
        Ok(())
    }
}

/// Adds the fields every model file carries: version and time convention.
pub fn stamp(config: &Value) -> Result<Value> {
    let mut config = config.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("a model config must be a JSON object"))?;
    if !obj.contains_key("kind") {
        bail!("a model config must have a 'kind'");
    }
    obj.insert("format".into(), json!(FORMAT));
    obj.insert("flowpipe_version".into(), json!(crate::VERSION));
    obj.insert("time_convention".into(), json!(crate::TIME_CONVENTION));
    Ok(config)
}

/// Serialises tensors and config into safetensors bytes. Tensors are written in name order.
pub fn encode(config: &Value, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let config = stamp(config)?;
    let metadata: HashMap<String, String> =
        [("flowpipe".to_string(), serde_json::to_string(&config)?)].into();
    let mut sorted: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // safetensors panics on a repeated name: refuse it here.
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("two tensors named '{}' in one model file", w[0].0);
    }
    safetensors::serialize(sorted, Some(metadata)).context("serialising safetensors")
}

/// Writes a model file atomically (or to stdout when `path` is `-`).
pub fn save(path: &str, config: &Value, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = encode(config, tensors)?;
    if path == "-" {
        return write_bytes(path, &bytes, true);
    }
    write_atomic(Path::new(path), |w| w.write_all(&bytes).map_err(Into::into))
}

/// Saves every variable of a `VarMap` under its name.
pub fn save_varmap(path: &str, config: &Value, vars: &candle_nn::VarMap) -> Result<()> {
    save(path, config, &varmap_tensors(vars))
}

/// The (name, tensor) pairs of a `VarMap`.
pub fn varmap_tensors(vars: &candle_nn::VarMap) -> Vec<(String, Tensor)> {
    let data = vars.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect()
}

/// Decodes in-memory safetensors bytes named `name`.
pub fn decode(bytes: &[u8], name: &str, device: &Device) -> Result<ModelFile> {
    let found = sniff(bytes);
    if found != Format::Safetensors {
        bail!("{name}: expected a .safetensors model file, found {found}");
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{name}: bad safetensors header: {e}"))?;
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("flowpipe"))
        .ok_or_else(|| {
            anyhow!("{name}: not a flowpipe model (no 'flowpipe' config in its metadata)")
        })?;
    let config: Value = serde_json::from_str(text)
        .with_context(|| format!("{name}: the model config is not valid JSON"))?;
    check_finite(bytes, name)?;
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| anyhow!("{name}: cannot load tensors: {e}"))?;
    Ok(ModelFile {
        config,
        tensors,
        name: name.to_string(),
    })
}

/// Fails when a float tensor holds a NaN or an infinity, naming the tensor: a broken model is
/// refused when it is loaded, not blamed for whatever fails later.
fn check_finite(bytes: &[u8], name: &str) -> Result<()> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{name}: bad safetensors file: {e}"))?;
    let mut names = st.names();
    names.sort();
    for key in names {
        let view = st.tensor(key)?;
        let data = view.data();
        let bad = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .enumerate()
                .find(|(_, v)| !v.is_finite()),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .enumerate()
                .find(|(_, v)| !v.is_finite()),
            _ => None,
        };
        if let Some((i, v)) = bad {
            bail!("{name}: the tensor '{key}' holds a non-finite value ({v}) at flat index {i}");
        }
    }
    Ok(())
}

/// Loads a model file from a path (or stdin).
pub fn load(path: &str, device: &Device) -> Result<ModelFile> {
    decode(&read_bytes(path)?, &display_name(path), device)
}

/// Loads a model file and checks its kind.
pub fn load_kind(path: &str, kinds: &[&str], device: &Device) -> Result<ModelFile> {
    let model = load(path, device)?;
    model.expect_kind(kinds)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_config() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let bytes = encode(
            &json!({"kind": "velocity", "hidden": [4, 4]}),
            &[("w".into(), t.clone())],
        )
        .unwrap();
        let again = encode(
            &json!({"kind": "velocity", "hidden": [4, 4]}),
            &[("w".into(), t.clone())],
        )
        .unwrap();
        assert_eq!(
            bytes, again,
            "the same model must serialise to the same bytes"
        );
        let m = decode(&bytes, "m.safetensors", &Device::Cpu).unwrap();
        assert_eq!(m.kind(), "velocity");
        assert_eq!(m.config["hidden"], json!([4, 4]));
        assert_eq!(m.config["time_convention"], json!(crate::TIME_CONVENTION));
        let w = m.tensor("w").unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(w, vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]);
        let err = m.expect_kind(&["vae"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "m.safetensors: expected a vae model, found a velocity model"
        );
    }

    #[test]
    fn config_needs_a_kind() {
        assert!(encode(&json!({"hidden": 3}), &[]).is_err());
    }
}
