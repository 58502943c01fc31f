//! make-captions: class labels into text captions, one phrasing of each label's class per line
//! (notes section 5, conditioning on a prompt). See `flowpipe::text::captions`.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::io;
use flowpipe::text::captions::{self, ClassSet, Split};
use flowpipe::Result;
use std::process::ExitCode;

/// Turn (N,) int64 class labels into N text captions, one per line.
///
/// Caption i is a phrasing of its label's class drawn from the stream (--seed, i): the same
/// seed gives the same bytes, and runs split by --first concatenate to the whole run. Each
/// class has training phrasings and held-out ones that no class trains on (--phrasings).
/// --list prints every phrasing as JSON lines instead (no labels read).
#[derive(Parser, Debug)]
#[command(
    name = "make-captions",
    version,
    after_help = "Example:\n  import-data --dataset fashion-mnist -o x.npy --labels-out y.npy\n  \
make-captions y.npy --classes fashion-mnist --seed 1 -o captions.txt\n  \
make-captions --classes mnist --list | head -3"
)]
struct Args {
    /// Class labels (N,) int64 .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "LABELS")]
    input: String,
    /// The data set the labels come from, which names their classes 0-9
    #[arg(long, value_enum)]
    classes: ClassSet,
    /// Which phrasings captions are drawn from
    #[arg(long, value_enum, default_value_t = Split::Train)]
    phrasings: Split,
    /// Index of the first sample (to caption a large set in parts)
    #[arg(long, default_value_t = 0, value_name = "K")]
    first: u64,
    /// Print every phrasing as JSON lines {"class", "name", "phrasing", "split"}, not captions
    #[arg(long, conflicts_with_all = ["input", "phrasings", "first"])]
    list: bool,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup_text()?;
    let text = if args.list {
        captions::list(args.classes)
    } else {
        let labels = captions::read_labels(&args.input, args.classes)?;
        args.common.explain(format!(
            "captioning samples {}..{} with {} phrasings of {}",
            args.first,
            args.first + labels.len() as u64,
            args.phrasings.name(),
            args.classes.name()
        ));
        let (seed, first) = (args.common.seed, args.first);
        captions::captions(args.classes, args.phrasings, seed, first, &labels)
    };
    io::write_bytes(&args.common.output, text.as_bytes(), false)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("make-captions", run)
}
