//! render-plot: line plots from JSON records (training logs, metric tables) as one PNG.

use clap::Parser;
use flowpipe::cli::{self, Common};
use flowpipe::io;
use flowpipe::render::plot::{lines, LineOptions, Series};
use flowpipe::render::{self, records};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Draw line plots of JSON records: loss curves from `--log` files, metrics against the
/// guidance scale or the NFE. One panel per --y key, side by side; one line per input file, or
/// per value of --series.
///
/// Inputs are JSON lines (one object per line, as every `--log` writes) or a JSON array of
/// objects. A record gives the point (x, y) when both keys hold numbers; other records are
/// skipped. Keys may be dotted paths into nested objects (`samples.classifier_fid.value`).
#[derive(Parser, Debug)]
#[command(
    name = "render-plot",
    version,
    allow_negative_numbers = true,
    after_help = "Examples:\n  render-plot vae-loss.jsonl flow-loss.jsonl --x step --y loss --log-y --smooth 9 -o loss.png\n  \
                  render-plot guidance.jsonl --x guidance --y fid,accuracy --title 'CFG trade-off' -o cfg.png"
)]
struct Args {
    /// JSON-lines or JSON-array files; `-` reads stdin (at most once)
    #[arg(default_value = "-")]
    inputs: Vec<String>,
    /// The key of the horizontal coordinate
    #[arg(long, default_value = "step")]
    x: String,
    /// The keys plotted vertically, comma separated: one panel each. `A+B` draws both keys in
    /// one panel; `KEY=NAME` names a key's line in the legend
    #[arg(long, value_delimiter = ',', default_value = "loss")]
    y: Vec<String>,
    /// The panels' vertical axis descriptions, separated by `;` [default: the --y keys]
    #[arg(long, value_name = "A;B;...")]
    y_labels: Option<String>,
    /// Group the records of each file into one line per value of this key [default: one line
    /// per file]
    #[arg(long, value_name = "KEY")]
    series: Option<String>,
    /// The names of the inputs' lines in the legend, separated by `;` [default: the file names]
    #[arg(long, value_name = "A;B;...")]
    labels: Option<String>,
    /// Logarithmic vertical axes (values <= 0 are left out)
    #[arg(long)]
    log_y: bool,
    /// Logarithmic horizontal axes (values <= 0 are left out): NFE 1, 2, 4, ... evenly spaced
    #[arg(long)]
    log_x: bool,
    /// Also draw the centred moving average of K points over the faint raw line [default: off]
    #[arg(long, value_name = "K", default_value_t = 0)]
    smooth: usize,
    /// Description of the horizontal axis [default: the --x key]
    #[arg(long)]
    x_label: Option<String>,
    /// Title above the whole figure
    #[arg(long)]
    title: Option<String>,
    /// Pixels of one panel
    #[arg(long, value_name = "WxH", default_value = "640x420", value_parser = render::parse_size)]
    size: (u32, u32),
    #[command(flatten)]
    common: Common,
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    cli::one_stdin(args.inputs.iter().map(Some))?;
    if args.y.is_empty() || args.y.iter().any(|k| k.is_empty()) {
        usage_bail!("--y must name at least one key, got {:?}", args.y.join(","));
    }
    let labels = names(
        "--labels",
        args.labels.as_deref(),
        args.inputs.iter().map(|p| io::display_name(p)).collect(),
        "inputs",
    )?;
    let y_labels = names(
        "--y-labels",
        args.y_labels.as_deref(),
        args.y.clone(),
        "panels",
    )?;
    let mut files = Vec::new();
    for path in &args.inputs {
        let name = io::display_name(path);
        let bytes = io::read_bytes(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{name} is not UTF-8 text (expected JSON records)"))?;
        files.push((name.clone(), records::parse_records(&text, &name)?));
    }
    let mut panels = Vec::new();
    for (panel, y_label) in args.y.iter().zip(y_labels) {
        let keys: Vec<&str> = panel.split('+').collect();
        let mut series: Vec<Series> = Vec::new();
        for key in &keys {
            let (key, key_name) = match key.split_once('=') {
                Some((k, n)) => (k, Some(n)),
                None => (*key, None),
            };
            for ((name, recs), label) in files.iter().zip(&labels) {
                let label = match (key_name, keys.len(), files.len()) {
                    (Some(n), _, 1) => n.to_string(),
                    (Some(n), _, _) => format!("{label}: {n}"),
                    (None, 1, _) => label.clone(),
                    (None, _, _) => format!("{label}: {key}"),
                };
                let s =
                    records::series_of(recs, &args.x, key, args.series.as_deref(), &label, name)?;
                series.extend(s);
            }
        }
        let opts = LineOptions {
            size: args.size,
            log_y: args.log_y,
            log_x: args.log_x,
            smooth: args.smooth,
            x_desc: Some(args.x_label.clone().unwrap_or_else(|| args.x.clone())),
            y_desc: Some(y_label),
        };
        panels.push(lines(&series, None, &opts)?);
    }
    let figure = render::titled(render::tile(&panels, panels.len()), args.title.as_deref())?;
    render::write_png(&args.common.output, &figure)
}

/// The `;`-separated names of a flag, one per item (`what`, for the message), or `defaults`.
fn names(
    flag: &str,
    given: Option<&str>,
    defaults: Vec<String>,
    what: &str,
) -> Result<Vec<String>> {
    let Some(text) = given else {
        return Ok(defaults);
    };
    let v: Vec<String> = text.split(';').map(str::to_string).collect();
    if v.len() != defaults.len() {
        usage_bail!("{flag} has {} names for {} {what}", v.len(), defaults.len());
    }
    Ok(v)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("render-plot", run)
}
