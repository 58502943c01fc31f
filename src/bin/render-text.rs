//! render-text: token arrays back to text, one line per sequence, or binarised pixels back to
//! images (see `flowpipe::discrete::tokens`).

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::discrete::tokens::{self, Unit};
use flowpipe::io::{self, npy};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Turn (N, L) int64 tokens into text lines (or, with --images, images (N, C, H, W)).
///
/// Each sequence becomes one line: trailing [PAD]s are dropped, a [PAD] inside a sequence
/// shows as a space, [MASK] as `_`; words are joined by spaces. --vocab is the vocabulary JSON
/// of import-text or a denoiser model file (which carries its vocabulary).
#[derive(Parser, Debug)]
#[command(
    name = "render-text",
    version,
    after_help = "Example:\n  simulate-ctmc --model words.safetensors -n 20 | render-text --vocab words.safetensors"
)]
struct Args {
    /// Tokens (N, L) int64 .npy; `-` reads stdin
    #[arg(default_value = "-", value_name = "TOKENS")]
    input: String,
    /// The vocabulary: a JSON from import-text or a denoiser model file
    #[arg(long, value_name = "PATH")]
    vocab: String,
    /// Write images (N, C, H, W) in {-1, 1} ([MASK] as 0) for a pixel vocabulary, .npy
    #[arg(long)]
    images: bool,
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup_text()?;
    if args.input == "-" && args.vocab == "-" {
        usage_bail!("the tokens and --vocab cannot both be stdin");
    }
    let vocab = tokens::read_vocab(&args.vocab)?;
    let shape = match (args.images, vocab.unit, vocab.image_shape) {
        (true, Unit::Pixels, Some(s)) => Some(s),
        (true, _, _) => usage_bail!(
            "--images needs a pixel vocabulary (import-text of images), {} is of {}",
            io::display_name(&args.vocab),
            vocab.unit.name()
        ),
        _ => None,
    };
    let len = shape.map(|[c, h, w]| c * h * w);
    let arr = tokens::read_tokens(&args.input, &vocab, len, true)?;
    if let Some(s) = shape {
        return npy::write(&args.common.output, &tokens::pixels_to_images(&arr, s)?);
    }
    let l = arr.shape()[1];
    let ids = tokens::ids(&arr);
    let mut text = String::new();
    for row in ids.chunks(l.max(1)) {
        text.push_str(&vocab.decode(row));
        text.push('\n');
    }
    io::write_bytes(&args.common.output, text.as_bytes(), false)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("render-text", run)
}
