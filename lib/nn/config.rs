//! Reading architecture sizes from a model file's JSON config: every key optional with a
//! default unless said otherwise, every error naming the key, the expectation and the value.

use serde_json::Value;

pub type ConfigResult<T> = std::result::Result<T, String>;

/// `config[key]` as a list of sizes (`None` when absent).
pub fn sizes(config: &Value, key: &str) -> ConfigResult<Option<Vec<usize>>> {
    match &config[key] {
        Value::Null => Ok(None),
        v => v
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect())
            .map(Some)
            .ok_or_else(|| format!("'{key}' must be a list of sizes, found {v}")),
    }
}

/// `config[key]` as a size, `default` when absent.
pub fn size(config: &Value, key: &str, default: usize) -> ConfigResult<usize> {
    match &config[key] {
        Value::Null => Ok(default),
        v => v
            .as_u64()
            .map(|u| u as usize)
            .ok_or_else(|| format!("'{key}' must be a non-negative integer, found {v}")),
    }
}

/// `config[key]` as a positive size, `default` when absent.
pub fn positive(config: &Value, key: &str, default: usize) -> ConfigResult<usize> {
    match size(config, key, default)? {
        0 => Err(format!("'{key}' must be positive, found 0")),
        n => Ok(n),
    }
}

/// GroupNorm's group count `groups` (required: a model file's tensors cannot tell it, and a
/// silent default would misread a file written with another), dividing every channel count.
pub fn groups(config: &Value, arch: &str, channels: &[usize]) -> ConfigResult<usize> {
    if config["groups"].is_null() {
        return Err(format!(
            "the {arch} config has no 'groups' (the GroupNorm group count, dividing every \
             channel count {channels:?}; its tensors cannot tell it)"
        ));
    }
    let groups = positive(config, "groups", 1)?;
    match channels.iter().find(|&&c| c % groups != 0) {
        Some(c) => Err(format!(
            "{groups} GroupNorm groups do not divide {c} channels"
        )),
        None => Ok(groups),
    }
}

/// The image shape [C, H, W] of `data_shape` (required).
pub fn image_shape(config: &Value, arch: &str) -> ConfigResult<[usize; 3]> {
    match sizes(config, "data_shape")?.as_deref() {
        Some(&[c, h, w]) if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        other => Err(format!(
            "a {arch} needs data_shape [C, H, W], found {}",
            other.map_or("nothing".into(), |s| format!("{s:?}"))
        )),
    }
}
