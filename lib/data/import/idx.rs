//! IDX files (LeCun's MNIST format, also Fashion-MNIST, KMNIST and EMNIST), raw or gzipped:
//! parsing the header and data, and reading images, labels or a pair of them.

use anyhow::{anyhow, bail};
use std::borrow::Cow;

use super::{gunzip_if_needed, ImageSet, Labelled};
use crate::io::npy::shape_str;
use crate::io::{display_name, read_bytes};
use crate::Result;

/// IDX magic of an unsigned-byte 3-D array: images (N, H, W).
pub const IDX_IMAGES: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte 1-D array: labels (N,).
pub const IDX_LABELS: u32 = 0x0000_0801;

/// A parsed IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Idx {
    pub magic: u32,
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The name of an IDX data-type code, for error messages.
fn idx_type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "int16",
        0x0C => "int32",
        0x0D => "float32",
        0x0E => "float64",
        _ => "unknown type",
    }
}

/// Parses an IDX file of unsigned bytes (gzipped or not), checking the header against the
/// file's length. `name` is the file's name for errors.
pub fn parse_idx(bytes: &[u8], name: &str) -> Result<Idx> {
    let bytes = gunzip_if_needed(bytes, name)?;
    if bytes.len() < 4 {
        bail!(
            "{name} is truncated: {} bytes, too short for an IDX header",
            bytes.len()
        );
    }
    let magic = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    if bytes[0] != 0 || bytes[1] != 0 || bytes[3] == 0 {
        bail!(
            "{name} is not an IDX file: magic number 0x{magic:08x} \
             (expected 0x{IDX_IMAGES:08x} for images or 0x{IDX_LABELS:08x} for labels)"
        );
    }
    if bytes[2] != 0x08 {
        bail!(
            "{name} holds IDX data of type 0x{:02x} ({}): only unsigned bytes (0x08) are supported",
            bytes[2],
            idx_type_name(bytes[2])
        );
    }
    let rank = bytes[3] as usize;
    let start = 4 + 4 * rank;
    if bytes.len() < start {
        bail!(
            "{name} is truncated: its IDX header for {rank} dimensions needs {start} bytes, found {}",
            bytes.len()
        );
    }
    let dims: Vec<usize> = bytes[4..start]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let want = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| anyhow!("{name}: IDX dimensions {} are too large", shape_str(&dims)))?;
    let have = bytes.len() - start;
    if have < want {
        bail!(
            "{name} is truncated: IDX dimensions {} need {want} data bytes, found {have}",
            shape_str(&dims)
        );
    }
    if have > want {
        bail!(
            "{name} has {} bytes beyond what its IDX dimensions {} describe ({want}): \
             wrong header or not an IDX file",
            have - want,
            shape_str(&dims)
        );
    }
    let data = match bytes {
        Cow::Owned(mut v) => {
            v.drain(..start);
            v
        }
        Cow::Borrowed(b) => b[start..].to_vec(),
    };
    Ok(Idx { magic, dims, data })
}

/// What an IDX magic number holds, for error messages.
fn idx_kind(idx: &Idx) -> String {
    match idx.magic {
        IDX_IMAGES => "IDX images".to_string(),
        IDX_LABELS => "IDX labels".to_string(),
        _ => format!("a {}-dimensional IDX array", idx.dims.len()),
    }
}

/// Parses in-memory IDX images (magic 0x00000803: N, H, W).
pub fn decode_idx_images(bytes: &[u8], name: &str) -> Result<ImageSet> {
    let idx = parse_idx(bytes, name)?;
    if idx.magic != IDX_IMAGES {
        bail!(
            "{name} holds {} (magic 0x{:08x}), expected images (0x{IDX_IMAGES:08x})",
            idx_kind(&idx),
            idx.magic
        );
    }
    let (count, height, width) = (idx.dims[0], idx.dims[1], idx.dims[2]);
    if count == 0 || height == 0 || width == 0 {
        bail!(
            "{name} holds no images: IDX dimensions {}",
            shape_str(&idx.dims)
        );
    }
    Ok(ImageSet {
        count,
        height,
        width,
        pixels: idx.data,
    })
}

/// Parses in-memory IDX labels (magic 0x00000801: N).
pub fn decode_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<i64>> {
    let idx = parse_idx(bytes, name)?;
    if idx.magic != IDX_LABELS {
        bail!(
            "{name} holds {} (magic 0x{:08x}), expected labels (0x{IDX_LABELS:08x})",
            idx_kind(&idx),
            idx.magic
        );
    }
    Ok(idx.data.into_iter().map(i64::from).collect())
}

/// Reads IDX images from a path (or stdin for `-`).
pub fn read_idx_images(path: &str) -> Result<ImageSet> {
    decode_idx_images(&read_bytes(path)?, &display_name(path))
}

/// Reads IDX labels from a path (or stdin for `-`).
pub fn read_idx_labels(path: &str) -> Result<Vec<i64>> {
    decode_idx_labels(&read_bytes(path)?, &display_name(path))
}

/// Reads an IDX pair of images and labels, checking that their counts agree.
pub fn read_idx_pair(images: &str, labels: &str) -> Result<Labelled> {
    let set = read_idx_images(images)?;
    let lab = read_idx_labels(labels)?;
    Labelled::new(set, lab, &display_name(images), &display_name(labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::import::testing::{gzip, idx, pixels};

    #[test]
    fn idx_round_trips_plain_and_gzipped() {
        let data = pixels(3 * 4 * 5);
        let file = idx(IDX_IMAGES, &[3, 4, 5], &data);
        let want = ImageSet {
            count: 3,
            height: 4,
            width: 5,
            pixels: data,
        };
        assert_eq!(decode_idx_images(&file, "a").unwrap(), want);
        assert_eq!(decode_idx_images(&gzip(&file), "a.gz").unwrap(), want);
        let labels = idx(IDX_LABELS, &[3], &[7, 0, 9]);
        assert_eq!(
            decode_idx_labels(&gzip(&labels), "l").unwrap(),
            vec![7, 0, 9]
        );
    }

    #[test]
    fn wrong_magic_is_named() {
        let err = decode_idx_images(b"\x89PNG\r\n\x1a\n....", "x.png")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.png is not an IDX file") && err.contains("0x89504e47"),
            "{err}"
        );
        // labels given where images are expected, and the other way round
        let labels = idx(IDX_LABELS, &[2], &[1, 2]);
        let err = decode_idx_images(&labels, "l.idx").unwrap_err().to_string();
        assert!(
            err.contains("holds IDX labels") && err.contains("expected images (0x00000803)"),
            "{err}"
        );
        let images = idx(IDX_IMAGES, &[1, 1, 2], &[1, 2]);
        let err = decode_idx_labels(&images, "i.idx").unwrap_err().to_string();
        assert!(
            err.contains("holds IDX images") && err.contains("expected labels"),
            "{err}"
        );
        let floats = idx(0x0000_0D03, &[1, 1, 1], &[0; 4]);
        let err = decode_idx_images(&floats, "f").unwrap_err().to_string();
        assert!(err.contains("type 0x0d (float32)"), "{err}");
    }

    #[test]
    fn truncated_and_oversized_data_are_errors() {
        let file = idx(IDX_IMAGES, &[3, 4, 5], &pixels(60));
        let err = decode_idx_images(&file[..file.len() - 1], "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t is truncated")
                && err.contains("(3, 4, 5) need 60 data bytes, found 59"),
            "{err}"
        );
        let err = decode_idx_images(&file[..10], "h").unwrap_err().to_string();
        assert!(
            err.contains("h is truncated") && err.contains("needs 16 bytes"),
            "{err}"
        );
        let mut long = file.clone();
        long.push(0);
        let err = decode_idx_images(&long, "x").unwrap_err().to_string();
        assert!(err.contains("1 bytes beyond"), "{err}");
        let gz = gzip(&file);
        let err = decode_idx_images(&gz[..gz.len() / 2], "c.gz")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.gz: corrupt or truncated gzip"), "{err}");
    }
}
