//! render-grid: arrays (images, points, trajectories, vector fields) and PNGs into one PNG.

use clap::Parser;
use flowpipe::cli::{self, at_least_1, Common};
use flowpipe::render::{self, Bounds, FigureOptions, GridOptions, Kind, Labels};
use flowpipe::render::{PlotOptions, ValueRange};
use flowpipe::{usage_bail, Result};
use std::process::ExitCode;

/// Draw .npy arrays (and paste PNGs) as one PNG: image grids, scatter plots, histograms,
/// trajectories, vector fields. Each input is one panel, tiled left to right; the kind of each
/// comes from its shape: (N,C,H,W) or (N,H,W) images, (N,T,1|2) trajectories, (N,2) scatter,
/// (N,1) or (N,) histogram; (N,4) needs `--kind quiver`.
///
/// Heat maps use viridis. Text needs DejaVu Sans (fonts-dejavu-core) or FLOWPIPE_FONT=file.ttf;
/// without a font the plots are drawn without text (FLOWPIPE_FONT= turns text off).
#[derive(Parser, Debug)]
#[command(
    name = "render-grid",
    version,
    allow_negative_numbers = true,
    after_help = "Example:\n  sample-noise -n 64 --shape 1,28,28 --seed 1 | render-grid --upscale 2 -o grid.png"
)]
struct Args {
    /// Inputs: .npy arrays or PNG images (told apart by their bytes); `-` is stdin
    #[arg(default_value = "-")]
    inputs: Vec<String>,
    /// What to draw arrays as [auto: from the shape]
    #[arg(long, value_enum, default_value_t = Kind::Auto)]
    kind: Kind,
    /// Images per row of a grid [default: ceil(sqrt(N))]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    cols: Option<usize>,
    /// Pixels between grid cells and around the grid
    #[arg(long, value_name = "P", default_value_t = 2)]
    pad: u32,
    /// Image values shown black..white: `auto` (the data's min..max) or `LOW,HIGH` (e.g. -1,1)
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    range: ValueRange,
    /// Nearest-neighbour upscaling of each image
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = at_least_1::<u32>)]
    upscale: u32,
    /// Histogram bins (per axis for 2-D)
    #[arg(long, default_value_t = 100, value_parser = at_least_1::<usize>)]
    bins: usize,
    /// Plot ranges XMIN,XMAX,YMIN,YMAX, or LOW,HIGH for x only; 1-D data use XMIN,XMAX as their
    /// value range [default: the data's range + 5%]
    #[arg(long, allow_hyphen_values = true, value_name = "XMIN,XMAX,YMIN,YMAX")]
    bounds: Option<Bounds>,
    /// Class labels (N,) int64 colouring points and paths
    #[arg(long, value_name = "PATH")]
    labels: Option<String>,
    /// (H,W) array drawn as a heat map under scatter, traj and quiver panels over --bounds:
    /// row 0 at the top (YMAX), column 0 at the left (XMIN)
    #[arg(long, value_name = "PATH")]
    background: Option<String>,
    /// Time of the first trajectory step
    #[arg(long, default_value_t = 0.0)]
    t0: f64,
    /// Time of the last trajectory step
    #[arg(long, default_value_t = 1.0)]
    t1: f64,
    /// Trajectories drawn (the first M)
    #[arg(long, value_name = "M", default_value_t = 100, value_parser = at_least_1::<usize>)]
    max_lines: usize,
    /// Draw trajectories as K panels of the states at evenly spaced times (first and last
    /// included; K = 1: the last); D = 2 as scatters (--kind hist: histograms), D = 1 histograms
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    snapshots: Option<usize>,
    /// Title above the whole figure
    #[arg(long)]
    title: Option<String>,
    /// One title per input, separated by `;`
    #[arg(long, value_name = "A;B;...")]
    titles: Option<String>,
    /// A label left of each row of an image grid, separated by `;` (class names, say), as
    /// many as the grid has rows
    #[arg(long, value_name = "A;B;...", value_delimiter = ';')]
    row_labels: Vec<String>,
    /// Pixels of one plot panel (image grids take the size of their images)
    #[arg(long, value_name = "WxH", default_value = "600x600", value_parser = render::parse_size)]
    size: (u32, u32),
    /// Radius of scatter points in pixels
    #[arg(long, default_value_t = 2, value_parser = at_least_1::<u32>)]
    point_size: u32,
    /// Opacity of scatter points, in (0, 1] (lower it for dense scatters)
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    /// Panels per row [default: all in one row]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    panel_cols: Option<usize>,
    #[command(flatten)]
    common: Common,
}

fn check_flags(a: &Args) -> Result<()> {
    if !(a.alpha > 0.0 && a.alpha <= 1.0) {
        usage_bail!("--alpha must be in (0, 1], got {}", a.alpha);
    }
    if !(a.t0.is_finite() && a.t1.is_finite() && a.t0 != a.t1) {
        usage_bail!(
            "--t0 and --t1 must be finite and differ, got {} and {}",
            a.t0,
            a.t1
        );
    }
    if a.background.is_some() && a.bounds.is_none_or(|b| b.y.is_none()) {
        usage_bail!("--background needs --bounds XMIN,XMAX,YMIN,YMAX (the plane it covers)");
    }
    cli::one_stdin(
        a.inputs
            .iter()
            .chain(&a.labels)
            .chain(&a.background)
            .map(Some),
    )?;
    let titles = a.titles.as_deref().map(|t| t.split(';').count());
    if titles.is_some_and(|n| n != a.inputs.len()) {
        usage_bail!(
            "--titles has {} titles for {} inputs",
            titles.unwrap(),
            a.inputs.len()
        );
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    args.common.setup()?;
    check_flags(&args)?;
    let inputs = args.inputs.iter().map(|p| render::read_input(p));
    let inputs = inputs.collect::<Result<Vec<_>>>()?;
    for input in &inputs {
        // Every cell of an image grid is upscaled: the figure holds at least their pixels.
        if let render::Input::Array { data, .. } = input {
            if let [n, _, h, w] = data.shape() {
                let k = args.upscale as u128;
                let what = format!("--upscale {} of {n} images {h}x{w}", args.upscale);
                flowpipe::memory::check_fits(
                    what,
                    &[*n as u128, *h as u128 * k, *w as u128 * k, 3],
                )?;
            }
        }
    }
    let labels = args.labels.as_deref().map(Labels::read).transpose()?;
    let background = args
        .background
        .as_deref()
        .map(render::plot::read_background);
    let background = background.transpose()?;
    if !render::font::available() && !render::font::disabled() {
        args.common.say(
            "render-grid: note: no font found (install fonts-dejavu-core or set FLOWPIPE_FONT); \
             drawing without text",
        );
    }
    let titles = args.titles.as_deref().unwrap_or_default().split(';');
    let opts = FigureOptions {
        kind: args.kind,
        grid: GridOptions {
            cols: args.cols,
            pad: args.pad,
            range: args.range,
            upscale: args.upscale,
            row_labels: args.row_labels.clone(),
            ..Default::default()
        },
        plot: PlotOptions {
            size: args.size,
            bins: args.bins,
            bounds: args.bounds,
            labels,
            background,
            t0: args.t0,
            t1: args.t1,
            max_lines: args.max_lines,
            point_size: args.point_size,
            alpha: args.alpha,
        },
        snapshots: args.snapshots,
        title: args.title.clone(),
        titles: titles.map(|t| t.trim().to_string()).collect(),
        panel_cols: args.panel_cols,
    };
    let fig = render::figure(&inputs, &opts)?;
    args.common.explain(format!(
        "render-grid: {}x{} pixels",
        fig.width(),
        fig.height()
    ));
    render::write_png(&args.common.output, &fig)
}

flowpipe::tool_allocator!();

fn main() -> ExitCode {
    cli::main("render-grid", run)
}
