//! Token sequences on the wire and their vocabulary (notes section 8: data in a finite
//! vocabulary V, sequences x = (x^1, ..., x^L)).
//!
//! Tokens are an (N, L) int64 `.npy`. The vocabulary is a small JSON file
//! `{"format": "flowpipe-vocab/1", "unit": "chars" | "words" | "pixels", "symbols": [...],
//! "pad": id or null, "mask": id, "image_shape": [C, H, W] (pixels only)}`: `symbols[i]` is the
//! text of token i. The [MASK] token is always the last id, K = symbols.len() - 1, so the data
//! symbols are 0..K-1 and a denoiser's K logits are indexed by token id.
//!
//! **Padding.** Text lines shorter than L are padded with [PAD] (id 0), which is an ordinary
//! data symbol: the model learns where words end and generates words of every length.
//! Rendering drops trailing pads and shows a pad inside a sequence as a space, so a sample with
//! a gap is never mistaken for a word. [MASK] renders as `_`.
//!
//! **Binarised images** are tokens too: pixel > threshold -> "1", else "0", (N, C, H, W) ->
//! (N, C H W), vocabulary {"0", "1", "[MASK]"} without padding.
//!
//! This file holds the vocabulary and text <-> tokens; the readers of token files (vocabulary,
//! tokens, prompts, labels) are in [`super::files`], the images in [`super::pixels`], both
//! re-exported here.

use anyhow::{anyhow, bail, Context};
use ndarray::{ArrayD, IxDyn};
use rand::seq::SliceRandom;
use serde_json::{json, Value};
use std::collections::BTreeSet;

use crate::io::npy::shape_str;

pub use super::files::{read_labels, read_prompts, read_tokens, read_vocab};
pub use super::pixels::{binarise, downsample, pixels_to_images, tokenise_images};
use crate::rng::{self, Purpose};
use crate::Result;

pub const PAD: &str = "[PAD]";
pub const MASK: &str = "[MASK]";
pub const FORMAT: &str = "flowpipe-vocab/1";

/// What one token of text is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unit {
    /// One character per token
    Chars,
    /// One whitespace-separated word per token
    Words,
    /// One binarised pixel per token
    Pixels,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Chars => "chars",
            Unit::Words => "words",
            Unit::Pixels => "pixels",
        }
    }
}

/// A vocabulary: data symbols 0..K-1 (the pad among them, when there is one) and [MASK] = K.
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub unit: Unit,
    /// Every symbol, [MASK] last.
    pub symbols: Vec<String>,
    pub pad: Option<u32>,
    /// [C, H, W] for pixels.
    pub image_shape: Option<[usize; 3]>,
}

impl Vocab {
    /// The vocabulary of `lines`: [PAD] = 0, the distinct units in sorted order, [MASK] last.
    pub fn from_lines(lines: &[&str], unit: Unit) -> Vocab {
        let mut set = BTreeSet::new();
        for line in lines {
            for s in split(line, unit) {
                set.insert(s.to_string());
            }
        }
        let mut symbols = vec![PAD.to_string()];
        symbols.extend(set);
        symbols.push(MASK.to_string());
        Vocab {
            unit,
            symbols,
            pad: Some(0),
            image_shape: None,
        }
    }

    /// {"0", "1", [MASK]} for binarised images of `shape`.
    pub fn binary_pixels(shape: [usize; 3]) -> Vocab {
        Vocab {
            unit: Unit::Pixels,
            symbols: vec!["0".into(), "1".into(), MASK.into()],
            pad: None,
            image_shape: Some(shape),
        }
    }

    /// K, the number of data symbols (every id but [MASK]).
    pub fn data_symbols(&self) -> usize {
        self.symbols.len() - 1
    }

    pub fn mask(&self) -> u32 {
        self.data_symbols() as u32
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": FORMAT,
            "unit": self.unit.name(),
            "symbols": self.symbols,
            "pad": self.pad,
            "mask": self.mask(),
            "image_shape": self.image_shape,
        })
    }

    /// Reads and checks a vocabulary (`name` names its file in errors).
    pub fn from_json(v: &Value, name: &str) -> Result<Vocab> {
        let bad = |what: &str| anyhow!("{name}: not a flowpipe vocabulary ({what})");
        let symbols: Vec<String> = v["symbols"]
            .as_array()
            .ok_or_else(|| bad("no 'symbols' list"))?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a symbol is not a string"))?;
        if symbols.len() < 3 {
            bail!(
                "{name}: a vocabulary needs at least two symbols and [MASK], found {}",
                symbols.len()
            );
        }
        let unit = match v["unit"].as_str() {
            Some("chars") => Unit::Chars,
            Some("words") => Unit::Words,
            Some("pixels") => Unit::Pixels,
            _ => return Err(bad("'unit' must be chars, words or pixels")),
        };
        let mask = v["mask"].as_u64().ok_or_else(|| bad("no 'mask' id"))?;
        if mask as usize != symbols.len() - 1 {
            bail!(
                "{name}: [MASK] must be the last id ({}), found {mask}",
                symbols.len() - 1
            );
        }
        let pad = match &v["pad"] {
            Value::Null => None,
            p => Some(
                p.as_u64()
                    .filter(|&p| p < mask)
                    .ok_or_else(|| bad("bad 'pad' id"))? as u32,
            ),
        };
        let image_shape = match &v["image_shape"] {
            Value::Null => None,
            s => {
                let d: Vec<usize> =
                    serde_json::from_value(s.clone()).map_err(|_| bad("bad image_shape"))?;
                match d[..] {
                    [c, h, w] => Some([c, h, w]),
                    _ => return Err(bad("image_shape must be [C, H, W]")),
                }
            }
        };
        Ok(Vocab {
            unit,
            symbols,
            pad,
            image_shape,
        })
    }

    /// The tokens of one line, padded to `len`; an unknown symbol or a line longer than `len`
    /// is an error naming it.
    pub fn encode(&self, line: &str, len: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(len);
        for s in split(line, self.unit) {
            let id = self
                .symbols
                .iter()
                .position(|v| v == s)
                .filter(|&i| i < self.data_symbols())
                .ok_or_else(|| anyhow!("the symbol {s:?} is not in the vocabulary"))?;
            ids.push(id as u32);
        }
        if ids.len() > len {
            bail!("{} tokens is longer than the length {len}", ids.len());
        }
        let pad = self.pad.ok_or_else(|| {
            anyhow!(
                "the vocabulary has no [PAD] to fill {} tokens to {len}",
                ids.len()
            )
        });
        if ids.len() < len {
            let pad = pad?;
            ids.resize(len, pad);
        }
        Ok(ids)
    }

    /// The text of one sequence: trailing pads dropped, inner pads as spaces, [MASK] as `_`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let end = ids
            .iter()
            .rposition(|&i| Some(i) != self.pad)
            .map_or(0, |p| p + 1);
        let parts: Vec<&str> = ids[..end]
            .iter()
            .map(|&i| {
                if Some(i) == self.pad {
                    " "
                } else if i == self.mask() {
                    "_"
                } else {
                    self.symbols.get(i as usize).map_or("?", String::as_str)
                }
            })
            .collect();
        match self.unit {
            Unit::Words => parts.join(" "),
            _ => parts.concat(),
        }
    }

    /// Checks that `arr` is (N, L) tokens with ids below K (or up to K when `allow_mask`).
    pub fn check_tokens(&self, arr: &ArrayD<i64>, name: &str, allow_mask: bool) -> Result<()> {
        if arr.ndim() != 2 {
            bail!(
                "expected tokens (N, L), got {} in {name}",
                shape_str(arr.shape())
            );
        }
        let top = if allow_mask {
            self.mask() as i64
        } else {
            self.mask() as i64 - 1
        };
        if let Some((i, v)) = arr.iter().enumerate().find(|(_, &v)| v < 0 || v > top) {
            bail!(
                "{name} holds the token {v} at flat index {i}: expected ids in 0..={top} for a vocabulary of {} symbols{}",
                self.data_symbols(),
                if allow_mask { " and [MASK]" } else { "" }
            );
        }
        Ok(())
    }
}

/// The units of a line.
fn split(line: &str, unit: Unit) -> Vec<&str> {
    match unit {
        Unit::Words => line.split_whitespace().collect(),
        _ => line
            .char_indices()
            .map(|(i, c)| &line[i..i + c.len_utf8()])
            .collect(),
    }
}

/// The length of a line in tokens.
pub fn token_count(line: &str, unit: Unit) -> usize {
    split(line, unit).len()
}

/// (N, L) i64 tokens from rows of ids.
pub fn to_array(rows: &[Vec<u32>], len: usize) -> ArrayD<i64> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&v| v as i64).collect();
    ArrayD::from_shape_vec(IxDyn(&[rows.len(), len]), flat).expect("rows of equal length")
}

/// The flat u32 ids of checked tokens.
pub fn ids(arr: &ArrayD<i64>) -> Vec<u32> {
    arr.iter().map(|&v| v as u32).collect()
}

/// A seeded split of 0..n into (kept, held out), each in increasing order: round(fraction n)
/// indices chosen by a shuffle from stream (seed, Shuffle, 0).
pub fn holdout_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng::stream(seed, Purpose::Shuffle, 0));
    let m = (fraction * n as f64).round() as usize;
    let mut held = idx[..m.min(n)].to_vec();
    let mut kept = idx[m.min(n)..].to_vec();
    held.sort_unstable();
    kept.sort_unstable();
    (kept, held)
}

/// Token sequences made from an input: their vocabulary, the rows of ids, their length L.
pub struct Tokenised {
    pub vocab: Vocab,
    pub rows: Vec<Vec<u32>>,
    pub len: usize,
}

/// The non-empty lines of `text` (named `name`) as sequences of `unit` tokens of length L =
/// `max_len` (default: the longest line's), padded; lines longer than L are dropped. Encoded
/// with `vocab` when given (a symbol outside it is an error naming the line), else with the
/// vocabulary of the kept lines. Also returns the number of non-empty lines and of those
/// dropped.
pub fn tokenise_lines(
    text: &str,
    vocab: Option<Vocab>,
    unit: Unit,
    max_len: Option<usize>,
    name: &str,
) -> Result<(Tokenised, usize, usize)> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        bail!("{name} holds no non-empty lines");
    }
    let longest = lines
        .iter()
        .map(|l| token_count(l, unit))
        .max()
        .unwrap_or(1);
    let len = max_len.unwrap_or(longest);
    let kept: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| token_count(l, unit) <= len)
        .collect();
    let vocab = vocab.unwrap_or_else(|| Vocab::from_lines(&kept, unit));
    let rows = kept
        .iter()
        .enumerate()
        .map(|(i, l)| {
            vocab
                .encode(l, len)
                .with_context(|| format!("{name}, line {}", i + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    let dropped = lines.len() - kept.len();
    Ok((Tokenised { vocab, rows, len }, lines.len(), dropped))
}

/// The symbol of a free position in a text prompt.
pub const FREE: char = '_';

impl Vocab {
    /// A prompt from one line of text: `_` (and every position past the line's end) is free
    /// (None), any other unit a fixed token.
    pub fn encode_prompt(&self, line: &str, len: usize) -> Result<Vec<Option<u32>>> {
        let units = split(line, self.unit);
        if units.len() > len {
            bail!("{} tokens is longer than the length {len}", units.len());
        }
        let mut out = vec![None; len];
        for (slot, s) in out.iter_mut().zip(units) {
            if s != FREE.to_string() {
                let id = self.symbols[..self.data_symbols()]
                    .iter()
                    .position(|v| v == s)
                    .ok_or_else(|| anyhow!("the symbol {s:?} is not in the vocabulary"))?;
                *slot = Some(id as u32);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_with_padding() {
        let lines = ["cab", "a", "bead"];
        let v = Vocab::from_lines(&lines, Unit::Chars);
        assert_eq!(v.symbols, vec![PAD, "a", "b", "c", "d", "e", MASK]);
        assert_eq!(v.mask(), 6);
        let again = Vocab::from_json(&v.to_json(), "v.json").unwrap();
        assert_eq!(again, v);
        for line in lines {
            let ids = v.encode(line, 5).unwrap();
            assert_eq!(ids.len(), 5);
            assert_eq!(v.decode(&ids), line);
        }
        assert_eq!(v.decode(&[3, 0, 1, 6, 0]), "c a_");
        assert!(v
            .encode("abcdeab", 5)
            .unwrap_err()
            .to_string()
            .contains("longer"));
        assert!(v.encode("x", 5).unwrap_err().to_string().contains("\"x\""));
        let w = Vocab::from_lines(&["the cat", "a cat"], Unit::Words);
        assert_eq!(w.decode(&w.encode("a cat", 3).unwrap()), "a cat");
    }

    #[test]
    fn bad_vocabularies_and_tokens_are_named() {
        let v = Vocab::from_lines(&["ab"], Unit::Chars);
        let mut j = v.to_json();
        j["mask"] = json!(1);
        assert!(Vocab::from_json(&j, "v.json")
            .unwrap_err()
            .to_string()
            .contains("last id"));
        let arr = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![0i64, 3]).unwrap();
        let err = v
            .check_tokens(&arr, "t.npy", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.npy") && err.contains("token 3") && err.contains("0..=2"),
            "{err}"
        );
        assert!(v.check_tokens(&arr, "t.npy", true).is_ok());
        let flat = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0i64, 1]).unwrap();
        assert!(v
            .check_tokens(&flat, "t.npy", true)
            .unwrap_err()
            .to_string()
            .contains("(N, L)"));
    }

    #[test]
    fn holdout_split_is_a_seeded_partition() {
        let (a, b) = holdout_split(100, 0.1, 4);
        assert_eq!((a.len(), b.len()), (90, 10));
        let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(holdout_split(100, 0.1, 4), (a, b.clone()));
        assert_ne!(holdout_split(100, 0.1, 5).1, b);
    }
}
