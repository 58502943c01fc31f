//! concat-npy: join `.npy` shards along the first axis, or split one file into K shards.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::io::{self, shards, Outputs};
use flowpipe::{usage_bail, Result};
use std::io::Write;
use std::process::ExitCode;

/// Join `.npy` arrays along their first axis (the shards of a sampling run, in order), or with
/// --split K cut one array into K shards.
///
/// Any dtype, as long as every input has the same one and the same shape after the first axis.
/// The bodies are streamed, never held whole: memory stays small however large the files.
/// Every header is checked before anything is written. Shard i of K holds rows
/// [i N / K, (i + 1) N / K) of N; a tool run with `--first F -n C` on those bounds writes
/// exactly those rows of the one large run (README, "Sharded sampling").
#[derive(Parser, Debug)]
#[command(
    name = "concat-npy",
    version,
    after_help = "Examples:\n  concat-npy shard-0.npy shard-1.npy shard-2.npy -o samples.npy\n  \
                  concat-npy samples.npy --split 4 -o 'part-{}.npy'"
)]
struct Args {
    /// The arrays to join, in order; `-` reads stdin (at most once)
    #[arg(default_value = "-")]
    inputs: Vec<String>,
    /// Split the one input into K shards, written to -o with `{}` replaced by 0..K-1
    #[arg(long, value_name = "K", value_parser = at_least_1::<u64>)]
    split: Option<u64>,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    cli::one_stdin(args.inputs.iter().map(Some))?;
    match args.split {
        None => join(&args),
        Some(k) => split(&args, k),
    }
}

fn join(args: &Args) -> Result<()> {
    args.common.setup()?;
    let inputs = args
        .inputs
        .iter()
        .map(|p| shards::Input::open(p))
        .collect::<Result<Vec<_>>>()?;
    let (_, shape) = shards::joined_shape(&inputs)?;
    args.common.explain(format!(
        "joining {} arrays into {}",
        inputs.len(),
        io::npy::shape_str(&shape)
    ));
    if args.common.output == "-" {
        // Streamed: stdout cannot be staged without holding the whole array.
        let stdout = std::io::stdout();
        io::widen_pipe(&stdout);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        shards::concat(inputs, &mut out)?;
        return out.flush().map_err(Into::into);
    }
    let mut outputs = Outputs::new();
    outputs.add_with(&args.common.output, true, |w| shards::concat(inputs, w))?;
    outputs.commit()
}

fn split(args: &Args, k: u64) -> Result<()> {
    let template = &args.common.output;
    if args.inputs.len() != 1 {
        usage_bail!("--split takes one input, got {}", args.inputs.len());
    }
    if !template.contains("{}") {
        usage_bail!(
            "--split {k} writes {k} files: -o needs a `{{}}` for the shard's number, got '{template}'"
        );
    }
    args.common.setup()?; // the shards' folder (the template's) takes new files
    let paths: Vec<String> = (0..k).map(|i| shards::shard_path(template, i)).collect();
    let mut input = shards::Input::open(&args.inputs[0])?;
    args.common.explain(format!(
        "splitting {} ({} rows) into {k} shards",
        input.name,
        input.rows()
    ));
    let mut outputs = Outputs::new();
    for (i, p) in paths.iter().enumerate() {
        outputs.add_with(p, true, |w| shards::write_shard(&mut input, k, i as u64, w))?;
    }
    outputs.commit()
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("concat-npy", run)
}
