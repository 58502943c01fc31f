//! `.npy` arrays: the wire format between every pair of tools (NumPy format version 1-3).
//!
//! The header is parsed here first, so that a wrong dtype, a truncated body or an unexpected
//! shape is reported with the file's name and what was expected and found. The body of
//! little-endian f32 in C order (what every tool writes) is read or copied in one pass; other
//! bodies are decoded by `ndarray-npy`. f32 is the working float; f64 input is accepted and
//! converted (NumPy's default dtype), labels are i64 (i32/u8 accepted and widened).

use anyhow::{anyhow, bail, Context};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};
use std::io::{Cursor, Read};

use super::{display_name, empty_input, open_input, read_bytes, sniff, write_bytes, Format};
use crate::Result;

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// NumPy dtype descriptor, e.g. `<f4`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset where the data starts.
    pub data_offset: usize,
}

impl Header {
    /// Size in bytes of one element, from the descriptor (`<f4` -> 4).
    pub fn item_size(&self) -> Option<usize> {
        self.descr.get(2..)?.parse().ok()
    }

    /// A readable dtype name: `float32`, `int64`, ...
    pub fn dtype_name(&self) -> String {
        dtype_name(&self.descr)
    }

    /// The number of elements the shape declares (checked not to overflow when parsed).
    pub fn count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The body's size in bytes, when the dtype has a known item size.
    pub fn data_len(&self) -> Option<usize> {
        self.count().checked_mul(self.item_size()?)
    }
}

/// Maps a NumPy descriptor to the name NumPy users know, with the byte order when it is not
/// the little-endian order every tool reads: `float32`, `big-endian float32`.
pub fn dtype_name(descr: &str) -> String {
    let kind = descr.get(1..2).unwrap_or("");
    let size: usize = descr.get(2..).and_then(|s| s.parse().ok()).unwrap_or(0);
    let name = match kind {
        "f" => format!("float{}", size.saturating_mul(8)),
        "i" => format!("int{}", size.saturating_mul(8)),
        "u" => format!("uint{}", size.saturating_mul(8)),
        "b" => "bool".to_string(),
        _ => return descr.to_string(),
    };
    if descr.starts_with('>') && size > 1 {
        format!("big-endian {name}")
    } else {
        name
    }
}

/// Formats a shape the way NumPy prints it: `(16, 1, 28, 28)`.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Parses and validates the header of an in-memory `.npy` file named `name`, and checks that
/// the body is complete.
pub fn parse_header(bytes: &[u8], name: &str) -> Result<Header> {
    let header = parse_header_only(bytes, name)?;
    if let Some(want) = header.data_len() {
        let have = bytes.len() - header.data_offset;
        if have < want {
            return Err(truncated(name, &header, want, have));
        }
    }
    Ok(header)
}

fn truncated(name: &str, header: &Header, want: usize, have: usize) -> anyhow::Error {
    anyhow!(
        "{name} is truncated: shape {} of {} needs {want} data bytes, found {have}",
        shape_str(&header.shape),
        header.dtype_name()
    )
}

/// The length of the magic, version, header length and header of a `.npy` file, from its
/// first 12 bytes; `None` when they are not a `.npy` prefix of a known version.
fn prefix_len(first: &[u8]) -> Option<usize> {
    if sniff(first) != Format::Npy || first.len() < 12 {
        return None;
    }
    match first[6] {
        1 => Some(10 + u16::from_le_bytes([first[8], first[9]]) as usize),
        2 | 3 => Some(12 + u32::from_le_bytes(first[8..12].try_into().unwrap()) as usize),
        _ => None,
    }
}

/// Parses and validates the header of a `.npy` file whose first bytes are `bytes`.
fn parse_header_only(bytes: &[u8], name: &str) -> Result<Header> {
    let found = sniff(bytes);
    if found != Format::Npy {
        bail!("{name} is not a .npy file (found {found})");
    }
    if bytes.len() < 10 {
        bail!("{name} is truncated: the .npy header is incomplete");
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("{name} is truncated: the .npy header is incomplete");
            }
            (
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
                12,
            )
        }
        v => bail!("{name}: unsupported .npy format version {v}"),
    };
    let end = start + len;
    if bytes.len() < end {
        bail!("{name} is truncated: the .npy header is incomplete");
    }
    let text = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| anyhow!("{name}: the .npy header is not text"))?;
    let descr = dict_value(text, "descr")
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
        .ok_or_else(|| anyhow!("{name}: the .npy header has no 'descr'"))?;
    let fortran_order = dict_value(text, "fortran_order")
        .map(|v| v.trim() == "True")
        .unwrap_or(false);
    let shape_text = dict_value(text, "shape")
        .ok_or_else(|| anyhow!("{name}: the .npy header has no 'shape'"))?;
    let shape = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| anyhow!("{name}: bad shape {shape_text} in the .npy header"))?;
    let header = Header {
        descr,
        fortran_order,
        shape,
        data_offset: end,
    };
    // The bytes of the body, and (ndarray's rule, which would panic) the product of the
    // non-zero axes, must fit an isize.
    let product = |skip_zeros: bool| {
        header
            .shape
            .iter()
            .filter(|&&d| d > 0 || !skip_zeros)
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize)
    };
    let bytes = product(false)
        .and_then(|n| n.checked_mul(header.item_size().unwrap_or(1)))
        .filter(|&b| b <= isize::MAX as usize);
    let nonzero = product(true);
    if bytes.is_none() || nonzero.is_none() {
        bail!(
            "{name}: the .npy header's shape {} has more elements than memory can hold",
            shape_str(&header.shape)
        );
    }
    Ok(header)
}

/// Reads the header of the `.npy` stream `input` (the file `path`, or stdin for `-`), leaving
/// the stream at the first byte of the body: for tools that stream bodies instead of reading
/// them whole.
pub fn read_header_from(input: &mut dyn Read, path: &str) -> Result<Header> {
    let name = display_name(path);
    let mut head = Vec::with_capacity(256);
    input
        .take(12)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {name}"))?;
    if head.is_empty() {
        return Err(empty_input(path));
    }
    let Some(prefix) = prefix_len(&head) else {
        return parse_header_only(&head, &name); // the error that says what it is instead
    };
    let rest = prefix.saturating_sub(head.len()) as u64;
    input
        .take(rest)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {name}"))?;
    parse_header_only(&head, &name)
}

/// The header bytes of a C-order `.npy` array of dtype `descr` (`<f4`) and `shape`, exactly
/// as [`encode`] writes them (ndarray-npy's layout: version 1.0 unless the dict needs more
/// than 65,535 bytes, padded with spaces to a multiple of 64 bytes, ending in a newline), so
/// that a body written after it gives the same file as [`encode`] of the whole array.
pub fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = shape_str(shape);
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}}}");
    // magic (6) + version (2) + length (2 or 4), then the dict and at least the newline.
    let total = |len_bytes: usize| (8 + len_bytes + dict.len() + 1).div_ceil(64) * 64;
    let (version, len_bytes) = if total(2) - 10 <= u16::MAX as usize {
        (1u8, 2)
    } else {
        (2, 4)
    };
    let total = total(len_bytes);
    let header_len = total - 8 - len_bytes;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Finds the raw text of `key`'s value in the header's Python dict literal.
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))?;
    let rest = &text[at + key.len() + 2..];
    let rest = rest[rest.find(':')? + 1..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

fn decode<T: ReadableElement + Clone>(bytes: &[u8], name: &str) -> Result<ArrayD<T>> {
    let arr = ArrayD::<T>::read_npy(Cursor::new(bytes))
        .map_err(|e| anyhow!("{name}: cannot decode .npy: {e}"))?;
    if arr.is_standard_layout() {
        return Ok(arr);
    }
    Ok(arr.as_standard_layout().into_owned())
}

/// Decodes an in-memory `.npy` into f32 (f32 as is, f64 converted).
pub fn decode_f32(bytes: &[u8], name: &str) -> Result<ArrayD<f32>> {
    let header = parse_header(bytes, name)?;
    match header.descr.as_str() {
        "<f4" if !header.fortran_order => {
            let body = &bytes[header.data_offset..];
            read_f32_body(body, &header, name, Some(body.len() as u64))
        }
        "<f4" | "|f4" => decode::<f32>(bytes, name),
        "<f8" | "|f8" => Ok(decode::<f64>(bytes, name)?.mapv(|v| v as f32)),
        _ => bail!(
            "{name}: expected float32 (or float64) data, found {}",
            header.dtype_name()
        ),
    }
}

/// Decodes an in-memory `.npy` of integer labels into i64 (i64, i32, u8 accepted).
pub fn decode_i64(bytes: &[u8], name: &str) -> Result<ArrayD<i64>> {
    let header = parse_header(bytes, name)?;
    match header.descr.as_str() {
        "<i8" => decode::<i64>(bytes, name),
        "<i4" => Ok(decode::<i32>(bytes, name)?.mapv(i64::from)),
        "|u1" | "<u1" => Ok(decode::<u8>(bytes, name)?.mapv(i64::from)),
        _ => bail!(
            "{name}: expected int64 labels, found {}",
            header.dtype_name()
        ),
    }
}

/// Decodes an in-memory `.npy` of bytes (u8).
pub fn decode_u8(bytes: &[u8], name: &str) -> Result<ArrayD<u8>> {
    let header = parse_header(bytes, name)?;
    match header.descr.as_str() {
        "|u1" | "<u1" => decode::<u8>(bytes, name),
        _ => bail!("{name}: expected uint8 data, found {}", header.dtype_name()),
    }
}

/// Reads an f32 array from a path or stdin (`-`). A file's declared size is checked against
/// its length before the body is allocated; stdin's buffer grows as its bytes arrive.
pub fn read_f32(path: &str) -> Result<ArrayD<f32>> {
    let len = match path {
        "-" => None,
        _ => std::fs::metadata(path)
            .ok()
            .map(|m| m.len())
            .filter(|&n| n > 0),
    };
    read_f32_sized(open_input(path)?, path, len)
}

/// Reads an f32 array from `input` (the file `path`, or stdin for `-`). The body of the common
/// case, little-endian f32 in C order, is read straight into the array's memory: no byte
/// buffer, no second pass over 4 bytes a value. Every other case is read whole and decoded.
pub fn read_f32_from(input: impl Read, path: &str) -> Result<ArrayD<f32>> {
    read_f32_sized(input, path, None)
}

/// [`read_f32_from`] of an input whose length in bytes is `len` when known (a regular file).
fn read_f32_sized(mut input: impl Read, path: &str, len: Option<u64>) -> Result<ArrayD<f32>> {
    let name = display_name(path);
    let reading = || format!("reading {name}");
    let mut head = Vec::with_capacity(256);
    (&mut input)
        .take(12)
        .read_to_end(&mut head)
        .with_context(reading)?;
    if head.is_empty() {
        return Err(empty_input(path));
    }
    if let Some(prefix) = prefix_len(&head) {
        let rest = prefix.saturating_sub(head.len()) as u64;
        (&mut input)
            .take(rest)
            .read_to_end(&mut head)
            .with_context(reading)?;
        let header = parse_header_only(&head, &name)?;
        if header.descr == "<f4" && !header.fortran_order {
            let body = len.map(|n| n.saturating_sub(head.len() as u64));
            return read_f32_body(input, &header, &name, body);
        }
    }
    input.read_to_end(&mut head).with_context(reading)?;
    decode_f32(&head, &name)
}

/// Values a body of unknown length (stdin) is first read into; the buffer doubles from there
/// as bytes arrive, so a header that claims more than the input holds allocates little.
const FIRST_READ: usize = 1 << 21;

/// The body after `header` (little-endian f32, C order), read into the array's own memory in
/// one pass (ndarray-npy's decoder goes value by value): the common case of every pipe.
/// `available` is the body's length in bytes when known: a shorter one fails before any
/// allocation.
fn read_f32_body(
    mut input: impl Read,
    header: &Header,
    name: &str,
    available: Option<u64>,
) -> Result<ArrayD<f32>> {
    let count = header.count();
    let want = 4 * count; // checked not to overflow when the header was parsed
    if let Some(have) = available {
        if have < want as u64 {
            return Err(truncated(name, header, want, have as usize));
        }
    }
    let mut data = vec![
        0f32;
        if available.is_some() {
            count
        } else {
            count.min(FIRST_READ)
        }
    ];
    let mut have = 0;
    while have < want {
        if have == 4 * data.len() {
            data.resize(count.min(2 * data.len()), 0.0);
        }
        // SAFETY: the bytes of an f32 slice are plain bytes, and every bit pattern is an f32.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), 4 * data.len())
        };
        match input.read(&mut bytes[have..]) {
            Ok(0) => return Err(truncated(name, header, want, have)),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        }
    }
    if cfg!(target_endian = "big") {
        data.iter_mut()
            .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&header.shape), data)?)
}

/// Reads i64 labels from a path or stdin (`-`).
pub fn read_i64(path: &str) -> Result<ArrayD<i64>> {
    decode_i64(&read_bytes(path)?, &display_name(path))
}

/// Reads a u8 array from a path or stdin (`-`).
pub fn read_u8(path: &str) -> Result<ArrayD<u8>> {
    decode_u8(&read_bytes(path)?, &display_name(path))
}

/// Serialises an array as `.npy` bytes (C order).
pub fn encode<T: WritableElement + Clone>(arr: &ArrayD<T>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(arr.len() * std::mem::size_of::<T>() + 128);
    arr.as_standard_layout()
        .write_npy(&mut out)
        .context("encoding .npy")?;
    Ok(out)
}

/// Writes an array to a path (atomically) or stdout (`-`).
pub fn write<T: WritableElement + Clone>(path: &str, arr: &ArrayD<T>) -> Result<()> {
    write_bytes(path, &encode(arr)?, true)
}

/// Builds an f32 array from a shape and row-major data.
pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(shape), data).context("building an array")
}

/// Checks `shape` against a pattern such as `"N,2"`, `"N,C,H,W"` or `"N,..."`.
///
/// Numbers must match exactly, names match anything, and a trailing `...` matches any number
/// of further axes. The error reads: `expected points (N, 2), got (16, 3) in x.npy`.
pub fn expect_shape(shape: &[usize], pattern: &str, what: &str, name: &str) -> Result<()> {
    let parts: Vec<&str> = pattern.split(',').map(str::trim).collect();
    let open = parts.last() == Some(&"...");
    let fixed = if open {
        &parts[..parts.len() - 1]
    } else {
        &parts[..]
    };
    let rank_ok = if open {
        shape.len() >= fixed.len()
    } else {
        shape.len() == fixed.len()
    };
    let dims_ok = rank_ok
        && fixed
            .iter()
            .zip(shape)
            .all(|(p, &d)| p.parse::<usize>().map_or(true, |want| want == d));
    if !dims_ok {
        bail!(
            "expected {what} ({}), got {} in {name}",
            parts.join(", "),
            shape_str(shape)
        );
    }
    Ok(())
}

/// Fails when any value is NaN or infinite, naming the file and the first bad index.
pub fn expect_finite(arr: &ArrayD<f32>, name: &str) -> Result<()> {
    if let Some(i) = arr.iter().position(|v| !v.is_finite()) {
        bail!(
            "{name} holds a non-finite value ({}) at flat index {i}",
            arr.as_slice().map_or(f32::NAN, |s| s[i])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_and_i64() {
        let a = from_vec(&[2, 3], (0..6).map(|v| v as f32 * 0.5).collect()).unwrap();
        let bytes = encode(&a).unwrap();
        assert_eq!(decode_f32(&bytes, "a").unwrap(), a);
        let l = ArrayD::from_shape_vec(IxDyn(&[4]), vec![3i64, -1, 0, 9]).unwrap();
        assert_eq!(decode_i64(&encode(&l).unwrap(), "l").unwrap(), l);
        let e = ArrayD::<f32>::zeros(IxDyn(&[0, 2]));
        assert_eq!(
            decode_f32(&encode(&e).unwrap(), "e").unwrap().shape(),
            &[0, 2]
        );
    }

    #[test]
    fn f64_is_converted_and_wrong_dtype_named() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5f64, -2.0]).unwrap();
        let b = decode_f32(&encode(&a).unwrap(), "a.npy").unwrap();
        assert_eq!(b.as_slice().unwrap(), &[1.5f32, -2.0]);
        let l = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1i64, 2]).unwrap();
        let err = decode_f32(&encode(&l).unwrap(), "l.npy")
            .unwrap_err()
            .to_string();
        assert!(err.contains("l.npy") && err.contains("int64"), "{err}");
    }

    #[test]
    fn fortran_order_is_decoded_into_c_order() {
        use ndarray::ShapeBuilder;
        let values: Vec<f32> = (0..6).map(|v| v as f32 - 2.5).collect();
        let f = ArrayD::from_shape_vec(IxDyn(&[2, 3]).f(), values).unwrap();
        let mut bytes = Vec::new();
        f.write_npy(&mut bytes).unwrap();
        assert!(parse_header(&bytes, "f").unwrap().fortran_order);
        let decoded = decode_f32(&bytes, "f").unwrap();
        assert!(decoded.is_standard_layout());
        assert_eq!(decoded, f);
        // The one-pass C-order path gives the same array.
        assert_eq!(decode_f32(&encode(&f).unwrap(), "c").unwrap(), f);
    }

    #[test]
    fn truncated_file_is_named() {
        let a = from_vec(&[4, 4], vec![0.0; 16]).unwrap();
        let bytes = encode(&a).unwrap();
        let err = decode_f32(&bytes[..bytes.len() - 5], "x.npy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.npy is truncated") && err.contains("(4, 4)"),
            "{err}"
        );
    }

    #[test]
    fn streamed_reads_match_decoding_in_memory() {
        let a = from_vec(&[3, 1, 2, 2], (0..12).map(|v| v as f32 / 3.0).collect()).unwrap();
        let bytes = encode(&a).unwrap();
        // Fed a few bytes a read, as a pipe may.
        let trickle = Trickle(Cursor::new(bytes.clone()));
        assert_eq!(read_f32_from(trickle, "-").unwrap(), a);
        let d = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.25f64, -4.0]).unwrap();
        let got = read_f32_from(Cursor::new(encode(&d).unwrap()), "d.npy").unwrap();
        assert_eq!(got.as_slice().unwrap(), &[0.25f32, -4.0]);
        let err = read_f32_from(Cursor::new(&bytes[..bytes.len() - 6]), "-")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "stdin is truncated: shape (3, 1, 2, 2) of float32 needs 48 data bytes, found 42"
        );
        let err = read_f32_from(Cursor::new(&bytes[..20]), "x.npy").unwrap_err();
        assert!(err.to_string().contains("header is incomplete"), "{err}");
        let err = read_f32_from(Cursor::new(b""), "-").unwrap_err();
        assert!(err.to_string().starts_with("stdin is empty"), "{err}");
        let err = read_f32_from(Cursor::new(b"{\"a\": 1}"), "f.json").unwrap_err();
        assert_eq!(err.to_string(), "f.json is not a .npy file (found JSON)");
    }

    /// A version-1 `.npy` with the given descriptor and shape text, and `body` data bytes.
    pub(crate) fn forged(descr: &str, shape: &str, body: usize) -> Vec<u8> {
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.resize(bytes.len() + body, 0);
        bytes
    }

    #[test]
    fn huge_declared_shapes_fail_before_allocating() {
        // 4 TB declared, 8 bytes present: on stdin, as a file, and in memory.
        let bytes = forged("<f4", "(1000000, 1000000)", 8);
        let want = "shape (1000000, 1000000) of float32 needs 4000000000000 data bytes, found 8";
        let err = read_f32_from(Cursor::new(bytes.clone()), "-").unwrap_err();
        assert_eq!(err.to_string(), format!("stdin is truncated: {want}"));
        let err = decode_f32(&bytes, "x.npy").unwrap_err();
        assert_eq!(err.to_string(), format!("x.npy is truncated: {want}"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        std::fs::write(&path, &bytes).unwrap();
        let p = path.to_str().unwrap();
        let err = read_f32(p).unwrap_err();
        assert_eq!(err.to_string(), format!("{p} is truncated: {want}"));
        for descr in ["<f8", "<i8"] {
            let b = forged(descr, "(1000000, 1000000)", 8);
            assert!(decode_f32(&b, "y").is_err() && decode_i64(&b, "y").is_err());
        }
    }

    #[test]
    fn overflowing_shapes_are_named() {
        for shape in [
            "(18446744073709551615, 2)",
            "(4294967296, 4294967296)",
            "(4611686018427387904,)",
        ] {
            let bytes = forged("<f4", shape, 0);
            let err = read_f32_from(Cursor::new(bytes.clone()), "-").unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("stdin: the .npy header's shape (")
                    && err
                        .to_string()
                        .ends_with("has more elements than memory can hold"),
                "{err}"
            );
            let err = decode_i64(&forged("<i8", shape, 0), "l.npy").unwrap_err();
            assert!(
                err.to_string().starts_with("l.npy: the .npy header"),
                "{err}"
            );
        }
    }

    #[test]
    fn big_endian_data_names_its_byte_order() {
        let err = decode_f32(&forged(">f4", "(2,)", 8), "b.npy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.npy: expected float32 (or float64) data, found big-endian float32"
        );
        let err = read_f32_from(Cursor::new(forged(">f4", "(2,)", 8)), "-").unwrap_err();
        assert!(
            err.to_string().contains("found big-endian float32"),
            "{err}"
        );
        assert_eq!(dtype_name("<f4"), "float32");
        assert_eq!(dtype_name("|u1"), "uint8");
    }

    /// A reader that hands out at most 5 bytes a call.
    struct Trickle(Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(5);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn shape_patterns() {
        assert!(expect_shape(&[5, 2], "N,2", "points", "x").is_ok());
        assert!(expect_shape(&[5, 1, 28, 28], "N,...", "batch", "x").is_ok());
        let err = expect_shape(&[16, 1, 28, 28], "N,4,8,8", "latents", "x.npy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected latents (N, 4, 8, 8), got (16, 1, 28, 28) in x.npy"
        );
        assert!(expect_shape(&[5], "N,2", "points", "x").is_err());
    }
}
