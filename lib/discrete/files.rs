//! Token files (notes section 8's data on the wire): reading a vocabulary (from its JSON or a
//! denoiser model), (N, L) int64 tokens checked against it, infilling prompts and class labels,
//! each error naming the file. The vocabulary itself is [`super::tokens::Vocab`].

use anyhow::{anyhow, bail};
use ndarray::ArrayD;
use serde_json::Value;

use super::tokens::{ids, Vocab};
use crate::Result;

/// Reads a vocabulary from its JSON file, or from a denoiser model file (or checkpoint) that
/// carries one in its config; recognised by magic bytes.
pub fn read_vocab(path: &str) -> Result<Vocab> {
    let name = crate::io::display_name(path);
    let bytes = crate::io::read_bytes(path)?;
    match crate::io::sniff(&bytes) {
        crate::io::Format::Json => {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow!("{name} is not valid JSON: {e}"))?;
            Vocab::from_json(&v, &name)
        }
        crate::io::Format::Safetensors => {
            let m = crate::io::model::decode(&bytes, &name, &candle_core::Device::Cpu)?;
            let c = if m.kind() == "checkpoint" {
                &m.config["model"]
            } else {
                &m.config
            };
            if c["vocab"].is_null() {
                bail!(
                    "{name}: a {} model has no vocabulary (expected a denoiser)",
                    m.kind()
                );
            }
            Vocab::from_json(&c["vocab"], &name)
        }
        other => bail!("{name}: expected a vocabulary (.json) or a denoiser model, found {other}"),
    }
}

/// Reads (N, L) int64 tokens and checks them against `vocab` (and the length `len`, if given).
pub fn read_tokens(
    path: &str,
    vocab: &Vocab,
    len: Option<usize>,
    allow_mask: bool,
) -> Result<ArrayD<i64>> {
    let name = crate::io::display_name(path);
    let bytes = crate::io::read_bytes(path)?;
    let header = crate::io::npy::parse_header(&bytes, &name)?;
    if !matches!(header.descr.as_str(), "<i8" | "<i4" | "|u1" | "<u1") {
        bail!(
            "{name}: expected int64 tokens (N, L), found {}",
            header.dtype_name()
        );
    }
    let arr = crate::io::npy::decode_i64(&bytes, &name)?;
    if let Some(l) = len {
        crate::io::npy::expect_shape(arr.shape(), &format!("N,{l}"), "tokens", &name)?;
    }
    vocab.check_tokens(&arr, &name, allow_mask)?;
    Ok(arr)
}

/// Reads prompts for infilling: (P, L) int64 tokens where [MASK] marks the free positions, or
/// text lines (see [`Vocab::encode_prompt`]); recognised by magic bytes. -> P rows of L.
pub fn read_prompts(path: &str, vocab: &Vocab, len: usize) -> Result<Vec<Vec<Option<u32>>>> {
    let name = crate::io::display_name(path);
    let bytes = crate::io::read_bytes(path)?;
    let rows: Vec<Vec<Option<u32>>> = if crate::io::sniff(&bytes) == crate::io::Format::Npy {
        let arr = crate::io::npy::decode_i64(&bytes, &name)?;
        crate::io::npy::expect_shape(arr.shape(), &format!("P,{len}"), "prompt tokens", &name)?;
        vocab.check_tokens(&arr, &name, true)?;
        let free = |v: u32| (v != vocab.mask()).then_some(v);
        ids(&arr)
            .chunks(len)
            .map(|r| r.iter().map(|&v| free(v)).collect())
            .collect()
    } else {
        let text = String::from_utf8(bytes).map_err(|_| anyhow!("{name} is not UTF-8 text"))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                vocab
                    .encode_prompt(l, len)
                    .map_err(|e| anyhow!("{name}, line {}: {e}", i + 1))
            })
            .collect::<Result<_>>()?
    };
    if rows.is_empty() {
        bail!("{name} holds no prompts");
    }
    Ok(rows)
}

/// Reads (N,) int64 class labels, all in 0..=max (when given) and, when `n` is given, one per
/// sequence; errors name the file.
pub fn read_labels(path: &str, n: Option<usize>, max: Option<u32>) -> Result<Vec<u32>> {
    let name = crate::io::display_name(path);
    let y = crate::io::npy::read_i64(path)?;
    let pattern = n.map_or("N".to_string(), |n| n.to_string());
    crate::io::npy::expect_shape(y.shape(), &pattern, "one label per sequence", &name)?;
    crate::train::check_labels(y.iter().filter(|&&v| v >= 0), &name)?;
    let top = max.map_or(crate::train::MAX_CLASSES as i64 - 1, i64::from);
    if let Some(v) = y.iter().find(|&&v| v < 0 || v > top) {
        bail!("{name} holds the label {v}: expected labels in 0..={top}");
    }
    Ok(y.iter().map(|&v| v as u32).collect())
}
