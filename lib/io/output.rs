//! Writing outputs: checked before the work, atomic for regular files, written through for
//! everything else, all of one run together, and no temp file left by a failure or a signal.
//!
//! - **Before the work** [`check_output`] tells whether a path can be written (its folder
//!   exists and takes a new file; a device or FIFO is writable) and refuses binary data for a
//!   terminal on stdout, so that a long run never fails at its last line.
//! - **Regular files** (and new paths) are written to a temp file `.flowpipe-<pid>-<n>.tmp`
//!   beside the target, flushed to disk (fsync) and renamed over it: a reader sees the old file
//!   or the complete new one, never a part, and a crash never leaves a renamed but empty file.
//!   The new file keeps the permission bits of the file it replaces (0644 for a new one).
//! - **Symlinks** are followed: the file a link points to is replaced, the link stays.
//! - **Anything else** (a device such as `/dev/null`, a FIFO, `/dev/stdout` and the other
//!   `/proc` links) is opened and written through, never replaced.
//! - **All outputs of one run** ([`Outputs`]) are staged to their temp files and renamed
//!   together at the end ([`Outputs::commit`]); an error drops the set, which removes them.
//! - **SIGINT, SIGTERM and SIGHUP** remove every live temp file before the process dies: the
//!   paths are kept in a fixed table of C strings that the handler unlinks (async-signal-safe).

use anyhow::{anyhow, bail, Context};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::Result;

/// The error for binary data bound for a terminal.
pub const TERMINAL: &str =
    "refusing to write binary data to a terminal: redirect stdout or use -o FILE";

/// Where an output path leads.
#[derive(Debug)]
enum Target {
    /// A regular file (after following symlinks), or nothing yet: replaced atomically.
    File { path: PathBuf, mode: Option<u32> },
    /// A device, FIFO, socket or `/proc` link: opened and written through.
    Through,
}

/// Follows `path`'s symlinks to what they name. Links into `/proc` (`/dev/stdout` leads to
/// `/proc/self/fd/1`) are written through, as is anything that is not a regular file.
fn resolve(path: &Path) -> Result<Target> {
    let shown = path.display();
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        if p.starts_with("/proc") {
            return Ok(Target::Through);
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to =
                    std::fs::read_link(&p).with_context(|| format!("cannot follow {shown}"))?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            Ok(m) if m.is_file() => {
                return Ok(Target::File {
                    path: p,
                    mode: Some(m.permissions().mode() & 0o7777),
                })
            }
            Ok(m) if m.is_dir() => bail!("cannot write {shown}: it is a folder"),
            Ok(_) => return Ok(Target::Through),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target::File {
                    path: p,
                    mode: None,
                })
            }
            Err(e) => return Err(e).with_context(|| format!("cannot write {shown}")),
        }
    }
    bail!("cannot write {shown}: too many levels of symbolic links")
}

/// The folder a file at `path` lives in.
fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks, before any work, that `path` can be written: `-` (stdout) is not a terminal when
/// the data is `binary`; a file's folder exists and takes a new file; a device or FIFO is
/// writable. Creates nothing that outlives the call.
pub fn check_output(path: &str, binary: bool) -> Result<()> {
    if path == "-" {
        if binary && std::io::stdout().is_terminal() {
            bail!(TERMINAL);
        }
        return Ok(());
    }
    if path.is_empty() {
        bail!("an output path is empty");
    }
    match resolve(Path::new(path))? {
        Target::Through => {
            let c = CString::new(Path::new(path).as_os_str().as_bytes())
                .map_err(|_| anyhow!("cannot write {path}: the path holds a NUL byte"))?;
            // SAFETY: access only reads the NUL-terminated path it is given.
            if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(e).with_context(|| format!("cannot write {path}"));
            }
            Ok(())
        }
        Target::File { path: target, .. } => {
            let dir = folder(&target);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => bail!("cannot write {path}: {} is not a folder", dir.display()),
                Err(_) => bail!(
                    "cannot write {path}: the folder {} does not exist",
                    dir.display()
                ),
            }
            TempFile::create(&dir).with_context(|| format!("cannot write {path}"))?;
            Ok(())
        }
    }
}

/// [`check_output`] of an optional output flag.
pub fn check_output_opt(path: &Option<String>, binary: bool) -> Result<()> {
    match path {
        Some(p) => check_output(p, binary),
        None => Ok(()),
    }
}

/// A temp file beside a target, registered for removal on SIGINT/SIGTERM/SIGHUP, and removed
/// when dropped unless renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
    slot: Option<usize>,
    /// Renamed into place: nothing to remove.
    done: bool,
}

/// Counts the temp files of this process, for unique names.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TempFile {
    /// Creates `.flowpipe-<pid>-<n>.tmp` in `dir`, mode 0600.
    fn create(dir: &Path) -> Result<TempFile> {
        let pid = std::process::id();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".flowpipe-{pid}-{n}.tmp"));
            // Registered before it exists, so that no signal can come between the two.
            let slot = signals::register(&path);
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match opened {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                        slot,
                        done: false,
                    })
                }
                Err(e) => {
                    signals::unregister(slot);
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(e).with_context(|| {
                            format!("cannot create a temp file in {}", dir.display())
                        });
                    }
                }
            }
        }
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("an open temp file")
    }

    /// Flushes the data to disk and sets the final mode.
    fn finish(&mut self, mode: u32) -> std::io::Result<()> {
        let f = self.file();
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    }

    /// Renames the temp file over `target`.
    fn persist(mut self, target: &Path) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, target)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
        signals::unregister(self.slot.take());
    }
}

/// One output waiting for [`Outputs::commit`].
enum Pending {
    /// A complete temp file to rename over `target`.
    Renamed {
        tmp: TempFile,
        target: PathBuf,
        shown: String,
    },
    /// Bytes for stdout (`-`) or a path written through.
    Through { path: String, bytes: Vec<u8> },
}

/// The outputs of one run: each staged complete (a temp file beside its target, or bytes in
/// memory for stdout, devices and FIFOs), then all put in place by [`Outputs::commit`].
/// Dropping the set uncommitted (an error, a panic) removes every temp file.
#[derive(Default)]
pub struct Outputs {
    pending: Vec<Pending>,
}

impl Outputs {
    pub fn new() -> Self {
        Outputs::default()
    }

    /// Stages `bytes` for `path` (`-`: stdout; binary data is refused for a terminal). A path
    /// staged again replaces its earlier data.
    pub fn add(&mut self, path: &str, bytes: &[u8], binary: bool) -> Result<()> {
        self.add_with(path, binary, |w| w.write_all(bytes).map_err(Into::into))
    }

    /// Stages the data `fill` writes for `path`.
    pub fn add_with(
        &mut self,
        path: &str,
        binary: bool,
        fill: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let through = |bytes: Vec<u8>| Pending::Through {
            path: path.to_string(),
            bytes,
        };
        let staged = if path == "-" {
            check_output(path, binary)?;
            let mut bytes = Vec::new();
            fill(&mut bytes).context("writing stdout")?;
            through(bytes)
        } else {
            match resolve(Path::new(path))? {
                Target::Through => {
                    let mut bytes = Vec::new();
                    fill(&mut bytes).with_context(|| format!("writing {path}"))?;
                    through(bytes)
                }
                Target::File { path: target, mode } => {
                    let tmp = stage_file(&target, mode, path, fill)?;
                    Pending::Renamed {
                        tmp,
                        target,
                        shown: path.to_string(),
                    }
                }
            }
        };
        self.pending.retain(|p| match p {
            Pending::Through { path: q, .. } | Pending::Renamed { shown: q, .. } => q != path,
        });
        self.pending.push(staged);
        Ok(())
    }

    /// Puts every staged output in place: stdout and written-through paths first (the writes
    /// that can fail), then the renames.
    pub fn commit(mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let (through, renamed): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|p| matches!(p, Pending::Through { .. }));
        for p in through {
            if let Pending::Through { path, bytes } = p {
                write_through(&path, |w| w.write_all(&bytes).map_err(Into::into))?;
            }
        }
        for p in renamed {
            if let Pending::Renamed { tmp, target, shown } = p {
                tmp.persist(&target)
                    .with_context(|| format!("cannot write {shown}"))?;
            }
        }
        Ok(())
    }
}

/// Writes what `fill` gives into a complete, synced temp file beside `target`.
fn stage_file(
    target: &Path,
    mode: Option<u32>,
    shown: &str,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<TempFile> {
    let dir = folder(target);
    let mut tmp = TempFile::create(&dir).with_context(|| format!("cannot write {shown}"))?;
    {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, tmp.file());
        fill(&mut buffered).with_context(|| format!("writing {shown}"))?;
        buffered
            .flush()
            .with_context(|| format!("writing {shown}"))?;
    }
    tmp.finish(mode.unwrap_or(0o644))
        .with_context(|| format!("writing {shown}"))?;
    Ok(tmp)
}

/// Writes to stdout (`-`) or opens `path` (a device, FIFO or `/proc` link) and writes into it.
fn write_through(path: &str, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    if path == "-" {
        let stdout = std::io::stdout();
        super::widen_pipe(&stdout);
        let mut lock = stdout.lock();
        fill(&mut lock).context("writing stdout")?;
        lock.flush().context("writing stdout")?;
        return Ok(());
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot write {path}"))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    fill(&mut w).with_context(|| format!("writing {path}"))?;
    w.flush().with_context(|| format!("writing {path}"))?;
    Ok(())
}

/// Writes one output `path` (never `-`): atomically when it is (or will be) a regular file,
/// through when it is a device, FIFO or `/proc` link.
pub fn write_one(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let shown = path.display().to_string();
    match resolve(path)? {
        Target::Through => write_through(&shown, fill),
        Target::File { path: target, mode } => stage_file(&target, mode, &shown, fill)?
            .persist(&target)
            .with_context(|| format!("cannot write {shown}")),
    }
}

/// The live temp files, and the handler that removes them when the process is told to stop.
mod signals {
    use super::*;

    const SLOTS: usize = 128;
    /// NUL-terminated paths of live temp files; null where free.
    static LIVE: [AtomicPtr<libc::c_char>; SLOTS] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
    static INSTALL: std::sync::Once = std::sync::Once::new();
    const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// Records `path` for removal on a signal; `None` when the table is full (then the file is
    /// still removed on every other exit).
    pub(super) fn register(path: &Path) -> Option<usize> {
        INSTALL.call_once(install);
        let c = CString::new(path.as_os_str().as_bytes()).ok()?;
        let ptr = c.into_raw();
        for (i, slot) in LIVE.iter().enumerate() {
            if slot
                .compare_exchange(
                    std::ptr::null_mut(),
                    ptr,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                return Some(i);
            }
        }
        // SAFETY: `ptr` came from `into_raw` above and was stored nowhere.
        drop(unsafe { CString::from_raw(ptr) });
        None
    }

    /// Forgets a registered path. Its string is leaked, not freed: a handler running on
    /// another thread may still be reading it (a few dozen bytes per temp file).
    pub(super) fn unregister(slot: Option<usize>) {
        if let Some(i) = slot {
            LIVE[i].store(std::ptr::null_mut(), Ordering::SeqCst);
        }
    }

    extern "C" fn on_signal(sig: libc::c_int) {
        for slot in LIVE.iter() {
            let p = slot.load(Ordering::SeqCst);
            if !p.is_null() {
                // SAFETY: `p` is a NUL-terminated string that is never freed; unlink is
                // async-signal-safe.
                unsafe { libc::unlink(p) };
            }
        }
        // SAFETY: signal and raise are async-signal-safe; with the default action restored,
        // the re-raised signal ends the process as it would have without this handler.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }

    /// Installs the handler for each signal that is not ignored (nohup, background jobs).
    fn install() {
        for sig in SIGNALS {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; sigaction
            // only reads `new` and writes `old`; the handler does async-signal-safe work only.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                new.sa_flags = libc::SA_RESETHAND;
                libc::sigemptyset(&mut new.sa_mask);
                libc::sigaction(sig, &new, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn symlinks_are_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.bin");
        let link = dir.path().join("link.bin");
        std::fs::write(&real, b"old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("real.bin", &link).unwrap();
        write_one(&link, |w| w.write_all(b"new").map_err(Into::into)).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the replaced file's mode is kept");
        assert_eq!(names(dir.path()), ["link.bin", "real.bin"]);
    }

    #[test]
    fn dev_null_is_written_through() {
        write_one(Path::new("/dev/null"), |w| {
            w.write_all(b"x").map_err(Into::into)
        })
        .unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(m.file_type().is_char_device());
        check_output("/dev/null", true).unwrap();
    }

    #[test]
    fn outputs_appear_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a").to_string_lossy().into_owned();
        let b = dir.path().join("b").to_string_lossy().into_owned();
        let mut set = Outputs::new();
        set.add(&a, b"A", true).unwrap();
        assert!(set
            .add_with(&b, true, |w| {
                w.write_all(b"half")?;
                bail!("boom")
            })
            .is_err());
        drop(set);
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        let mut set = Outputs::new();
        set.add(&a, b"A0", true).unwrap();
        set.add(&b, b"B", true).unwrap();
        set.add(&a, b"A", true).unwrap();
        assert_eq!(names(dir.path()).len(), 2, "two temp files");
        set.commit().unwrap();
        assert_eq!(names(dir.path()), ["a", "b"]);
        assert_eq!(std::fs::read(&a).unwrap(), b"A");
    }

    #[test]
    fn missing_folders_and_folders_are_refused_before_work() {
        let err = check_output("/nonexistent-flowpipe/m.safetensors", true).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "cannot write /nonexistent-flowpipe/m.safetensors: the folder /nonexistent-flowpipe does not exist"
        );
        let dir = tempfile::tempdir().unwrap();
        let err = check_output(dir.path().to_str().unwrap(), true).unwrap_err();
        assert!(err.to_string().ends_with("it is a folder"), "{err}");
        check_output(dir.path().join("new.npy").to_str().unwrap(), true).unwrap();
        assert!(names(dir.path()).is_empty());
    }
}
