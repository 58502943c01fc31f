//! Progress on stderr for long work, and machine-readable JSON lines for `--log`.
//!
//! Bars draw only when stderr is a terminal and `-q` is not given, so pipelines and CI logs
//! stay clean. Results meant for programs go to stdout or to a `--log` file as JSON lines.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};

use crate::Result;

/// A progress bar that hides itself when stderr is not a terminal.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` units labelled `what` (e.g. "steps").
    pub fn new(total: u64, what: &str, quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let template = format!("{{bar:30}} {{pos}}/{{len}} {what} [{{elapsed}}<{{eta}}] {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        Progress { bar }
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Shows a short status such as the running loss.
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A `--log` destination: JSON lines appended to a file, or to stderr for `-`.
pub struct JsonLog {
    out: Option<Box<dyn Write>>,
}

impl JsonLog {
    /// Opens `path` (truncating it), `-` for stderr, or nothing when `None`.
    pub fn open(path: Option<&str>) -> Result<Self> {
        let out: Option<Box<dyn Write>> = match path {
            None => None,
            Some("-") => Some(Box::new(std::io::stderr())),
            Some(p) => Some(Box::new(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("cannot create log {p}"))?,
            ))),
        };
        Ok(JsonLog { out })
    }

    /// Opens `path` for appending (used when a run resumes).
    pub fn append(path: Option<&str>) -> Result<Self> {
        let out: Option<Box<dyn Write>> = match path {
            None => None,
            Some("-") => Some(Box::new(std::io::stderr())),
            Some(p) => Some(Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open log {p}"))?,
            ))),
        };
        Ok(JsonLog { out })
    }

    /// Writes one JSON line (no-op without a destination).
    pub fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        if let Some(out) = self.out.as_mut() {
            writeln!(out, "{value}").context("writing the log")?;
            out.flush().context("writing the log")?;
        }
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.out.is_some()
    }
}
