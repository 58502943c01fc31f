//! Shards: one large sampling, decoding or encoding job run as K independent processes (on one
//! machine with `make -j`, across machines with a Slurm job array or GNU parallel), and the
//! `.npy` files they write merged back into one, or one file split into K.
//!
//! Sharding needs no coordination because every per-sample random draw comes from its own
//! stream, keyed by the sample's index (lib/rng.rs): a tool run with `--first F -n C` (or on
//! rows F..F+C of its input, with `--first F`) writes exactly rows F..F+C of the one run over
//! all N. A guided field's labels are indexed the same way, so one `guide` spec serves every
//! shard. Shard i of K covers the rows of [`range`]; the Makefile and the Slurm script in the
//! README compute the same bounds.
//!
//! [`concat`] writes one header and then streams each shard's body through a fixed buffer:
//! memory stays bounded however large N is. Every input's header is read and checked first
//! (dtype, trailing shape, C order, and for a regular file its length), so that shards that do
//! not belong together fail before a byte is written.

use anyhow::{anyhow, bail, Context};
use std::io::{Read, Write};
use std::ops::Range;

use super::npy::{self, Header};
use super::{display_name, open_input};
use crate::Result;

/// The rows of shard `i` of `k` over `n` rows: [i n / k, (i + 1) n / k), so that the shards'
/// sizes differ by at most one and together cover 0..n in order.
pub fn range(n: u64, k: u64, i: u64) -> Range<u64> {
    assert!(k > 0 && i < k, "shard {i} of {k}");
    let at = |j: u64| ((j as u128 * n as u128) / k as u128) as u64;
    at(i)..at(i + 1)
}

/// A `.npy` input whose header has been read and checked, positioned at its body.
pub struct Input {
    /// The name errors use (`stdin` for `-`).
    pub name: String,
    pub header: Header,
    /// The size of one row (one index of the first axis) in bytes.
    row_bytes: u64,
    reader: Box<dyn Read>,
}

impl Input {
    /// Opens `path` (`-`: stdin) and reads its header: an array of at least one axis, in C
    /// order, of a dtype with a known item size; a regular file must hold the whole body.
    pub fn open(path: &str) -> Result<Input> {
        let name = display_name(path);
        let mut reader = open_input(path)?;
        let header = npy::read_header_from(&mut reader, path)?;
        if header.fortran_order {
            bail!("{name}: expected a C-order .npy, found Fortran order (save it with np.ascontiguousarray)");
        }
        if header.shape.is_empty() {
            bail!("{name}: expected an array with a first axis to join along, found a 0-d array");
        }
        let item = header
            .item_size()
            .ok_or_else(|| anyhow!("{name}: unsupported dtype {}", header.descr))?;
        let row_bytes = (header.shape[1..].iter().product::<usize>() * item) as u64;
        if path != "-" {
            let have = std::fs::metadata(path)
                .with_context(|| format!("cannot read {path}"))?
                .len();
            let want = header.data_offset as u64 + row_bytes * header.shape[0] as u64;
            if have < want {
                bail!(
                    "{name} is truncated: shape {} of {} needs {} data bytes, found {}",
                    npy::shape_str(&header.shape),
                    header.dtype_name(),
                    want - header.data_offset as u64,
                    have.saturating_sub(header.data_offset as u64)
                );
            }
        }
        Ok(Input {
            name,
            header,
            row_bytes,
            reader,
        })
    }

    /// The number of rows (the first axis).
    pub fn rows(&self) -> usize {
        self.header.shape[0]
    }

    /// Copies the next `rows` rows of the body to `out`.
    fn copy_rows(&mut self, rows: u64, out: &mut dyn Write) -> Result<()> {
        let want = rows * self.row_bytes;
        let copied = std::io::copy(&mut (&mut self.reader).take(want), out)
            .with_context(|| format!("copying {}", self.name))?;
        if copied < want {
            bail!(
                "{} is truncated: shape {} of {} stops after {} of its data bytes",
                self.name,
                npy::shape_str(&self.header.shape),
                self.header.dtype_name(),
                copied
            );
        }
        Ok(())
    }
}

/// The dtype and the shape of `inputs` joined along the first axis, or an error naming the
/// first input that does not match the first one.
pub fn joined_shape(inputs: &[Input]) -> Result<(String, Vec<usize>)> {
    let first = inputs.first().ok_or_else(|| anyhow!("no inputs to join"))?;
    let (descr, rest) = (&first.header.descr, &first.header.shape[1..]);
    let mut rows = 0usize;
    for input in inputs {
        let h = &input.header;
        if &h.descr != descr {
            bail!(
                "{}: expected dtype {} (as {}), found {}",
                input.name,
                first.header.dtype_name(),
                first.name,
                h.dtype_name()
            );
        }
        if &h.shape[1..] != rest {
            bail!(
                "{}: expected shape (N, {}) (as {}), found {}",
                input.name,
                rest.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                first.name,
                npy::shape_str(&h.shape)
            );
        }
        rows = rows
            .checked_add(h.shape[0])
            .ok_or_else(|| anyhow!("the joined array has too many rows"))?;
    }
    let mut shape = first.header.shape.clone();
    shape[0] = rows;
    Ok((descr.clone(), shape))
}

/// Writes `inputs` joined along the first axis to `out`: one header, then each body in turn.
pub fn concat(mut inputs: Vec<Input>, out: &mut dyn Write) -> Result<()> {
    let (descr, shape) = joined_shape(&inputs)?;
    out.write_all(&npy::header_bytes(&descr, &shape))?;
    for input in &mut inputs {
        let rows = input.rows() as u64;
        input.copy_rows(rows, out)?;
    }
    Ok(())
}

/// Writes shard `i` of `k` of `input` (the rows of [`range`]) to `out`; shards must be asked
/// for in order 0, 1, ..., as the input is read once, front to back.
pub fn write_shard(input: &mut Input, k: u64, i: u64, out: &mut dyn Write) -> Result<()> {
    let r = range(input.rows() as u64, k, i);
    let mut shape = input.header.shape.clone();
    shape[0] = (r.end - r.start) as usize;
    out.write_all(&npy::header_bytes(&input.header.descr, &shape))?;
    input.copy_rows(r.end - r.start, out)
}

/// The file name of shard `i` from a template holding `{}` (`part-{}.npy` -> `part-3.npy`).
pub fn shard_path(template: &str, i: u64) -> String {
    template.replacen("{}", &i.to_string(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn shard_ranges_cover_the_rows_in_order_with_sizes_one_apart() {
        for n in [0u64, 1, 7, 10, 1000, 50_000] {
            for k in [1u64, 2, 3, 7, 16] {
                let parts: Vec<_> = (0..k).map(|i| range(n, k, i)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[k as usize - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let sizes: Vec<u64> = parts.iter().map(|r| r.end - r.start).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} k {k}: {sizes:?}");
            }
        }
    }

    #[test]
    fn header_bytes_are_those_of_encode() {
        let f = |shape: &[usize]| ArrayD::<f32>::zeros(IxDyn(shape));
        for shape in [
            &[3usize, 2][..],
            &[5],
            &[2, 1, 28, 28],
            &[0, 4],
            &[1, 1, 1, 1, 1, 1, 1],
        ] {
            let want = npy::encode(&f(shape)).unwrap();
            let got = npy::header_bytes("<f4", shape);
            assert_eq!(&want[..got.len()], &got[..], "{shape:?}");
        }
        let l = ArrayD::<i64>::zeros(IxDyn(&[512]));
        let want = npy::encode(&l).unwrap();
        let got = npy::header_bytes("<i8", &[512]);
        assert_eq!(&want[..got.len()], &got[..]);
        assert_eq!(want.len(), got.len() + 512 * 8);
    }

    fn file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn shards_joined_are_the_whole_array_byte_for_byte_and_split_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let whole = ArrayD::from_shape_vec(
            IxDyn(&[10, 2, 3]),
            (0..60).map(|v| v as f32 * 0.5 - 7.0).collect(),
        )
        .unwrap();
        let bytes = npy::encode(&whole).unwrap();
        let whole_path = file(dir.path(), "whole.npy", &bytes);
        for k in [1u64, 3, 4, 10, 12] {
            let mut input = Input::open(&whole_path).unwrap();
            let mut paths = Vec::new();
            for i in 0..k {
                let mut out = Vec::new();
                write_shard(&mut input, k, i, &mut out).unwrap();
                let r = range(10, k, i);
                let part = whole
                    .slice_axis(
                        ndarray::Axis(0),
                        ndarray::Slice::from(r.start as usize..r.end as usize),
                    )
                    .to_owned();
                assert_eq!(out, npy::encode(&part).unwrap(), "shard {i} of {k}");
                paths.push(file(dir.path(), &format!("part-{i}.npy"), &out));
            }
            let inputs = paths.iter().map(|p| Input::open(p).unwrap()).collect();
            let mut joined = Vec::new();
            concat(inputs, &mut joined).unwrap();
            assert_eq!(joined, bytes, "{k} shards joined");
        }
    }

    #[test]
    fn shards_that_do_not_belong_together_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(
            dir.path(),
            "a.npy",
            &npy::encode(&ArrayD::<f32>::zeros(IxDyn(&[2, 3]))).unwrap(),
        );
        let b = file(
            dir.path(),
            "b.npy",
            &npy::encode(&ArrayD::<f32>::zeros(IxDyn(&[2, 4]))).unwrap(),
        );
        let c = file(
            dir.path(),
            "c.npy",
            &npy::encode(&ArrayD::<i64>::zeros(IxDyn(&[2, 3]))).unwrap(),
        );
        let open = |ps: &[&String]| {
            ps.iter()
                .map(|p| Input::open(p).unwrap())
                .collect::<Vec<_>>()
        };
        let e = joined_shape(&open(&[&a, &b])).unwrap_err().to_string();
        assert!(
            e.contains("b.npy") && e.contains("(N, 3)") && e.contains("(2, 4)"),
            "{e}"
        );
        let e = joined_shape(&open(&[&a, &c])).unwrap_err().to_string();
        assert!(
            e.contains("c.npy") && e.contains("float32") && e.contains("int64"),
            "{e}"
        );
        let full = std::fs::read(&a).unwrap();
        let cut = file(dir.path(), "cut.npy", &full[..full.len() - 4]);
        let e = Input::open(&cut).err().unwrap().to_string();
        assert!(e.contains("cut.npy is truncated"), "{e}");
    }
}
