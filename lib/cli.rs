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
    /// Worker threads [default: all cores]
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
        if let Some(n) = self.threads {
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
