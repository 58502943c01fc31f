//! import-text: text (one sequence per line) or images into token arrays and a vocabulary
//! (notes section 8: sequences over a finite vocabulary). See `flowpipe::discrete::tokens`.

use anyhow::Context;
use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::discrete::tokens::{self, Tokenised, Unit};
use flowpipe::io::{self, npy, Format};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Turn text lines (or images) into (N, L) int64 tokens and a vocabulary JSON.
///
/// Text: each non-empty line is one sequence of characters (--unit words: whitespace-separated
/// words), padded with [PAD] (id 0) to --max-len; longer lines are dropped and counted. The
/// vocabulary is [PAD], the symbols in sorted order, then [MASK] (or --vocab's, to import a
/// second file alike). --holdout F moves a seeded random fraction F of the lines to
/// --holdout-out. Images (an (N, C, H, W) .npy, recognised by its bytes) are pooled by
/// --downsample and binarised at --threshold into tokens (N, C H W) over {0, 1}.
#[derive(Parser, Debug)]
#[command(
    name = "import-text",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  grep -E '^[a-z]+$' /usr/share/dict/american-english | import-text --max-len 12 \\\n    \
--holdout 0.1 --holdout-out test.npy --vocab-out vocab.json -o train.npy\n  \
render-text train.npy --vocab vocab.json | head"
)]
struct Args {
    /// Text, one sequence per line, or images (N, C, H, W) .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "INPUT")]
    input: String,
    /// Write the vocabulary JSON here
    #[arg(long, value_name = "PATH")]
    vocab_out: Option<String>,
    /// Use this vocabulary instead of building one (a symbol outside it is an error)
    #[arg(long, value_name = "PATH", conflicts_with = "unit")]
    vocab: Option<String>,
    /// What one token is [default: chars]
    #[arg(long, value_enum)]
    unit: Option<Unit>,
    /// L, the sequence length; longer lines are dropped [default: the longest line]
    #[arg(long, value_name = "L", value_parser = at_least_1::<usize>)]
    max_len: Option<usize>,
    /// Fraction of the lines held out (a seeded shuffle picks them)
    #[arg(long, value_name = "F", requires = "holdout_out")]
    holdout: Option<f64>,
    /// Where the held-out tokens go
    #[arg(long, value_name = "PATH", requires = "holdout")]
    holdout_out: Option<String>,
    /// Images: a pixel above this value is 1
    #[arg(long, default_value_t = 0.0)]
    threshold: f32,
    /// Images: average-pool K x K blocks before thresholding (28x28 -> 14x14 with 2)
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = at_least_1::<usize>)]
    downsample: usize,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    io::check_output_opt(&args.vocab_out, false)?;
    io::check_output_opt(&args.holdout_out, true)?;
    if let Some(f) = args.holdout {
        if !(0.0..1.0).contains(&f) {
            usage_bail!("--holdout must be in [0, 1), got {f}");
        }
    }
    if args.input == "-" && args.vocab.as_deref() == Some("-") {
        usage_bail!("the input and --vocab cannot both be stdin");
    }
    let name = io::display_name(&args.input);
    let given = match &args.vocab {
        Some(v) => Some(tokens::read_vocab(v)?),
        None => None,
    };
    let bytes = io::read_bytes(&args.input)?;
    let Tokenised { vocab, rows, len } = if io::sniff(&bytes) == Format::Npy {
        let images = npy::decode_f32(&bytes, &name)?;
        tokens::tokenise_images(images, args.downsample, args.threshold, &name)?
    } else {
        let text = String::from_utf8(bytes).with_context(|| format!("{name} is not UTF-8 text"))?;
        let unit = given
            .as_ref()
            .map_or(args.unit.unwrap_or(Unit::Chars), |v| v.unit);
        let (t, lines, dropped) = tokens::tokenise_lines(&text, given, unit, args.max_len, &name)?;
        if dropped > 0 {
            args.common.say(format!(
                "import-text: dropped {dropped} of {lines} lines longer than {} tokens",
                t.len
            ));
        }
        t
    };
    let (train, held) = match args.holdout {
        Some(f) => tokens::holdout_split(rows.len(), f, args.common.seed),
        None => ((0..rows.len()).collect(), Vec::new()),
    };
    let pick = |idx: &[usize]| {
        tokens::to_array(
            &idx.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>(),
            len,
        )
    };
    args.common.explain(format!(
        "{} sequences of length {len}, {} held out, {} symbols",
        rows.len(),
        held.len(),
        vocab.data_symbols()
    ));
    let mut outputs = io::Outputs::new();
    if let Some(v) = &args.vocab_out {
        outputs.add(v, &io::json_bytes(&vocab.to_json())?, false)?;
    }
    if let Some(h) = &args.holdout_out {
        outputs.add(h, &npy::encode(&pick(&held))?, true)?;
    }
    outputs.add(&args.common.output, &npy::encode(&pick(&train))?, true)?;
    outputs.commit()
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("import-text", run)
}
