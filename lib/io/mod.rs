//! Files on the wire: `.npy` tensors ([`npy`]), self-describing `.safetensors` models
//! ([`model`]), JSON field specs, and the atomic, pipe-aware reading and writing they share.
//!
//! A path of `-` means stdin for an input and stdout for an output. Inputs are read whole into
//! memory (stdin is not seekable; f32 `.npy` bodies straight into the array), recognised by
//! their magic bytes ([`sniff`]), and checked before anything is written. Outputs are checked
//! before the work and written by [`output`]: regular files atomically (a synced temp file in
//! the same folder, renamed into place when complete), devices and FIFOs through, the outputs
//! of one run together ([`Outputs`]).

pub mod model;
pub mod npy;
pub mod output;
#[cfg(test)]
mod proptests;
pub mod shards;

pub use output::{check_output, check_output_opt, Outputs};

use anyhow::{bail, Context};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use crate::Result;

/// The file formats flowpipe exchanges, told apart by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `\x93NUMPY`
    Npy,
    /// 8-byte little-endian header length, then a JSON header starting with `{`.
    Safetensors,
    /// A JSON document (field specs, configs).
    Json,
    /// `\x89PNG`
    Png,
    Unknown,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Format::Npy => ".npy array",
            Format::Safetensors => ".safetensors model",
            Format::Json => "JSON",
            Format::Png => "PNG image",
            Format::Unknown => "unknown data",
        };
        f.write_str(s)
    }
}

/// Recognises a format by its magic bytes.
pub fn sniff(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"\x93NUMPY") {
        return Format::Npy;
    }
    if bytes.starts_with(b"\x89PNG") {
        return Format::Png;
    }
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        if n > 0 && n <= bytes.len() as u64 - 8 && bytes[8] == b'{' {
            return Format::Safetensors;
        }
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') || first == Some(&b'[') {
        return Format::Json;
    }
    Format::Unknown
}

/// How an input path is named in error messages.
pub fn display_name(path: &str) -> String {
    if path == "-" {
        "stdin".to_string()
    } else {
        path.to_string()
    }
}

/// Reads a whole input: a file, or stdin when `path` is `-`. An empty input is an error.
pub fn read_bytes(path: &str) -> Result<Vec<u8>> {
    let bytes = if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {path}"))?
    };
    if bytes.is_empty() {
        return Err(empty_input(path));
    }
    Ok(bytes)
}

/// An input opened for streaming: a file, or stdin when `path` is `-`.
pub fn open_input(path: &str) -> Result<Box<dyn Read>> {
    if path == "-" {
        let stdin = std::io::stdin();
        widen_pipe(&stdin);
        return Ok(Box::new(stdin.lock()));
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
    Ok(Box::new(file))
}

/// Asks the kernel for a 1 MiB buffer when `fd` is a pipe (the default 64 KiB makes the two
/// ends of a pipe between tools take turns on its lock every 16 pages: a third of the time
/// of a large read). Best effort: a file, a terminal or a refusal (the limit is
/// /proc/sys/fs/pipe-max-size) leaves it as it is.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    {
        use libc::{fcntl, F_GETPIPE_SZ, F_SETPIPE_SZ};
        let fd = fd.as_raw_fd();
        // SAFETY: both commands only read or set the size of a pipe's buffer; on anything
        // that is not a pipe they fail with EBADF or EINVAL, which is ignored.
        unsafe {
            let size = fcntl(fd, F_GETPIPE_SZ);
            if size > 0 && size < 1 << 20 {
                fcntl(fd, F_SETPIPE_SZ, 1i32 << 20);
            }
        }
    }
}

/// The error for an input with no bytes at all.
pub(crate) fn empty_input(path: &str) -> anyhow::Error {
    if path == "-" {
        anyhow::anyhow!("stdin is empty (did the command before it fail?)")
    } else {
        anyhow::anyhow!("{path} is empty")
    }
}

/// Writes `bytes` to `path` atomically (written through for a device or FIFO), or to stdout
/// when `path` is `-`.
///
/// Binary data is never written to a terminal. A closed downstream pipe surfaces as a
/// broken-pipe error, which the shared `main` treats as success.
pub fn write_bytes(path: &str, bytes: &[u8], binary: bool) -> Result<()> {
    if path == "-" {
        let stdout = std::io::stdout();
        if binary && stdout.is_terminal() {
            bail!(output::TERMINAL);
        }
        widen_pipe(&stdout);
        let mut lock = stdout.lock();
        lock.write_all(bytes).context("writing stdout")?;
        lock.flush().context("writing stdout")?;
        return Ok(());
    }
    write_atomic(Path::new(path), |w| w.write_all(bytes).map_err(Into::into))
}

/// Creates `path` atomically: `fill` writes into a temp file in the same folder, which is
/// synced and renamed over `path` only when `fill` succeeds. The file gets mode 0644, or the
/// mode of the file it replaces; a symlink's target is replaced, and a device or FIFO is
/// written through ([`output`]).
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    output::write_one(path, fill)
}

/// A JSON document as written: pretty, with a final newline.
pub fn json_bytes(value: &serde_json::Value) -> Result<Vec<u8>> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text.into_bytes())
}

/// Reads a JSON document from a file (or stdin), naming the file in errors.
pub fn read_json(path: &str) -> Result<serde_json::Value> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not valid JSON", display_name(path)))
}

/// Writes a JSON document (pretty, with a final newline) to a file or stdout.
pub fn write_json(path: &str, value: &serde_json::Value) -> Result<()> {
    write_bytes(path, &json_bytes(value)?, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_formats_apart() {
        assert_eq!(sniff(b"\x93NUMPY\x01\x00"), Format::Npy);
        assert_eq!(sniff(b"  {\"field\": 1}"), Format::Json);
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st), Format::Safetensors);
        assert_eq!(sniff(b"hello"), Format::Unknown);
    }

    #[test]
    fn atomic_write_leaves_old_file_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        let r = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            anyhow::bail!("boom")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        write_atomic(&path, |w| w.write_all(b"new").map_err(Into::into)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }
}
