//! The shared shape of every tool: common flags, and one `main` that prints errors and picks
//! the exit code (0 ok or closed downstream pipe, 1 runtime error, 2 usage error). clap's own
//! usage errors are written like ours, on one line: `tool: error: invalid value '0' for
//! '--steps <STEPS>': must be at least 1`.
//!
//! A tool is `#[derive(Parser)] struct Args { #[command(flatten)] common: Common, ... }`,
//! a `run(args) -> Result<()>`, and `fn main() -> ExitCode { cli::main("tool", run) }`.

use clap::Parser;
use std::process::ExitCode;

use crate::device::DeviceArg;
use crate::error::{is_broken_pipe, is_usage};
use crate::Result;

/// Flags every tool shares, defined once.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Output file; `-` writes to stdout
    #[arg(short = 'o', long = "output", default_value = "-", value_name = "PATH")]
    pub output: String,
    /// Seed of every random stream; the same seed gives the same bytes
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where tensors are computed (cuda needs the `cuda` cargo feature)
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Worker threads [default: $FLOWPIPE_THREADS, else all cores; cores / J under make -j J]
    #[arg(long, value_name = "N", value_parser = at_least_1::<usize>)]
    pub threads: Option<usize>,
    /// Print nothing on stderr but errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Explain what is being done on stderr
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
}

impl Common {
    /// Applies `--threads`, checks that `-o` can take binary data (its folder exists and is
    /// writable; stdout is not a terminal), and opens `--device`. Call once, first thing in
    /// `run`, so that no work is done for an output that cannot be written.
    pub fn setup(&self) -> Result<candle_core::Device> {
        crate::io::check_output(&self.output, true)?;
        self.setup_inner()
    }

    /// [`Common::setup`] for a tool whose `-o` is text (JSON, a report), which may go to a
    /// terminal.
    pub fn setup_text(&self) -> Result<candle_core::Device> {
        crate::io::check_output(&self.output, false)?;
        self.setup_inner()
    }

    fn setup_inner(&self) -> Result<candle_core::Device> {
        wait_passively();
        let env = |key: &str| std::env::var(key).ok();
        let threads = match self.threads {
            Some(n) => Some(n),
            None => default_threads(env, candle_core::utils::get_num_threads())?,
        };
        if let Some(n) = threads {
            set_threads(n);
        }
        self.device.open()
    }

    /// Prints a line on stderr when `-v` is given.
    pub fn explain(&self, msg: impl AsRef<str>) {
        if self.verbose {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Prints a line on stderr unless `-q` is given.
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// The worker threads of a tool run without `--threads`, from the environment `env` reads, on a
/// machine of `cores` cores; `None` leaves candle's default (every core).
///
/// In order: `FLOWPIPE_THREADS=N`; then `RAYON_NUM_THREADS` or `CANDLE_NUM_THREADS`, which
/// candle reads itself (`None`); then make's job count. A tool run by `make -j J` (MAKEFLAGS
/// holds `-jJ`) takes `cores / J` threads (at least 1), and one run by `make -j` without a
/// count takes 1: make's jobs then share the cores instead of each starting a pool of all of
/// them whose workers spin on cores the other jobs hold. (GNU make before 4.4 closes its
/// jobserver pipe to every recipe that is not a recursive make, so a tool cannot borrow the
/// tokens of idle jobs; the job count is what it can read.)
pub fn default_threads(
    env: impl Fn(&str) -> Option<String>,
    cores: usize,
) -> Result<Option<usize>> {
    if let Some(v) = env("FLOWPIPE_THREADS") {
        return match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => crate::usage_bail!(
                "FLOWPIPE_THREADS must be a whole number of at least 1, got '{v}'"
            ),
        };
    }
    if env("RAYON_NUM_THREADS").is_some() || env("CANDLE_NUM_THREADS").is_some() {
        return Ok(None);
    }
    let jobs = env("MAKEFLAGS").and_then(|flags| make_jobs(&flags));
    Ok(match jobs {
        Some(None) => Some(1),
        Some(Some(j)) if j > 1 => Some((cores / j).max(1)),
        _ => None,
    })
}

/// make's job count from its MAKEFLAGS: `Some(Some(j))` for `-jJ`, `Some(None)` for `-j`
/// without a count (no limit), `None` when no `-j` is there (one job).
fn make_jobs(flags: &str) -> Option<Option<usize>> {
    let word = flags
        .split_whitespace()
        .rev()
        .find(|w| w.starts_with("-j"))?;
    let count = &word[2..];
    if count.is_empty() {
        return Some(None);
    }
    count.parse().ok().map(Some)
}

/// How many turns an idle worker of candle's barrier pool spins waiting for the next kernel
/// before it parks (sleeps until woken), unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` says
/// otherwise. candle's own default, 25,000, keeps idle workers on their cores between
/// kernels; when more threads than cores run (two tools of 2 threads on 2 cores, by hand or
/// from two shells), the spinners take the cores the working threads need. Measured on 2
/// cores of an AMD EPYC (2026-12-08, 300 steps of the main job's DiT, wall seconds): one run
/// 25.4-26.9 at 25,000, 25.9 at 2,000, 27.5 at 1,000, 28.6 at 0; two runs side by side 107.6
/// at 25,000, 72.9 at 5,000, 64.8 at 2,000, 62-63.5 at 1,000 and 0 (the same bytes in every
/// case). A worker that parks wakes for the next kernel at the cost of a wake-up.
pub const SPIN_LIMIT: u32 = 2000;

/// Sets candle's spin limit to [`SPIN_LIMIT`] unless the environment sets it; call before
/// candle's pool starts (its first kernel), from the single thread of a tool's start.
fn wait_passively() {
    const KEY: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(KEY).is_none() {
        std::env::set_var(KEY, SPIN_LIMIT.to_string());
    }
}

/// Limits candle's and our own worker pools to `n` threads.
pub fn set_threads(n: usize) {
    // Read when first used by candle's barrier pool (its elementwise kernels and our fused ops,
    // ops::par) and by gemm; rayon's global pool serves the rest (candle's matmul, evaluation).
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
}

/// Parses `A`, runs the tool, prints `tool: error: ...` on failure and returns the exit code.
pub fn main<A: Parser>(tool: &str, run: impl FnOnce(A) -> Result<()>) -> ExitCode {
    let args = match A::try_parse() {
        Ok(a) => a,
        // --help and --version (on stdout, exit 0), and the help a bare call may show.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("{tool}: error: {}", clap_one_line(&e));
            return ExitCode::from(2);
        }
    };
    crate::memory::keep_freed_memory(); // every tool allocates large tensors over and over
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: error: {e:#}");
            if is_usage(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A usage error when more than one of `inputs` (paths; `None` for an input not given) is
/// stdin (`-`): at most one input of a run can be.
pub fn one_stdin<'a>(inputs: impl IntoIterator<Item = Option<&'a String>>) -> Result<()> {
    if inputs.into_iter().flatten().filter(|p| *p == "-").count() > 1 {
        crate::usage_bail!("at most one input can be stdin (`-`)");
    }
    Ok(())
}

/// clap's value parser for a count flag (`u64`, `usize`, `u32`) that must be at least 1, so that
/// 0 is a usage error before the run starts: `#[arg(value_parser = cli::at_least_1::<usize>)]`.
pub fn at_least_1<T>(s: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + PartialEq + From<u8>,
{
    let v: T = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == T::from(0) {
        return Err("must be at least 1".to_string());
    }
    Ok(v)
}

/// clap's value parser for a flag that must be a positive finite number.
pub fn positive_number(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got '{s}'")),
    }
}

/// clap's error on one line, as the house writes errors: its first paragraph (the error and
/// the arguments it concerns) without the `error: ` prefix, `Usage:` and hints.
fn clap_one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or("");
    let joined = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string()
}

/// Parses a comma-separated list of numbers such as `1,28,28` or `-1,1`.
pub fn parse_list<T: std::str::FromStr>(s: &str) -> std::result::Result<Vec<T>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<T>()
                .map_err(|_| format!("'{p}' is not a number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(vars: &[(&str, &str)], cores: usize) -> Result<Option<usize>> {
        let env = |k: &str| {
            vars.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        };
        default_threads(env, cores)
    }

    #[test]
    fn make_jobs_share_the_cores_and_the_environment_wins() {
        // GNU make 4.3 and 4.4 write MAKEFLAGS like these (`r` from --no-builtin-rules).
        assert_eq!(threads(&[], 16).unwrap(), None);
        assert_eq!(threads(&[("MAKEFLAGS", "r")], 16).unwrap(), None);
        let j4 = [("MAKEFLAGS", "r -j4 --jobserver-auth=3,4")];
        assert_eq!(threads(&j4, 16).unwrap(), Some(4));
        assert_eq!(threads(&j4, 2).unwrap(), Some(1));
        let fifo = [("MAKEFLAGS", "-j2 --jobserver-auth=fifo:/tmp/GMfifo1")];
        assert_eq!(threads(&fifo, 2).unwrap(), Some(1));
        assert_eq!(threads(&fifo, 7).unwrap(), Some(3));
        assert_eq!(threads(&[("MAKEFLAGS", " -j")], 16).unwrap(), Some(1));
        assert_eq!(threads(&[("MAKEFLAGS", " -j1")], 16).unwrap(), None);
        let both = [("MAKEFLAGS", " -j2"), ("FLOWPIPE_THREADS", "3")];
        assert_eq!(threads(&both, 16).unwrap(), Some(3));
        let rayon = [("MAKEFLAGS", " -j2"), ("RAYON_NUM_THREADS", "5")];
        assert_eq!(threads(&rayon, 16).unwrap(), None);
        let e = threads(&[("FLOWPIPE_THREADS", "0")], 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("FLOWPIPE_THREADS") && e.contains("'0'"), "{e}");
    }
}
