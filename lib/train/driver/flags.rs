//! The flags of `fit-velocity` and `fit-score` ([`FitFlags`], with the `--path` values of
//! [`PathArg`]), what each tool adds of its own ([`FitSpec`]), and the usage errors (exit 2)
//! they can make before any input is read.

use crate::cli::at_least_1;

use crate::paths::{GaussianPath, Param, Path, TimeDensity};
use crate::train::arch::{self, NetFlags};
use crate::train::coupling::Coupling;
use crate::train::flags::{OptimFlags, RunFlags};
use crate::train::optim::Decay;
use crate::{usage_bail, Result};

pub use crate::train::arch::DEFAULT_HIDDEN;
pub use crate::train::flags::DEFAULT_LR;
pub const DEFAULT_BATCH: usize = 1000;
pub const DEFAULT_STEPS: u64 = 5000;

/// The `--path` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PathArg {
    /// alpha = t, beta = 1 - t
    Condot,
    /// alpha = t, beta = sqrt(1 - t) (the lab's)
    Sqrt,
    /// alpha = sin(pi t / 2), beta = cos(pi t / 2)
    Cosine,
    /// variance preserving, DDPM's: alpha = exp(-B(1 - t) / 2), beta = sqrt(1 - alpha^2)
    Vp,
    /// variance exploding, NCSN's: alpha = 1, beta = 0.01 * 5000^(1 - t), from N(0, 50^2 I)
    Ve,
    /// x_t = (1 - t) x_0 + t z, x_0 from --source or N(0, I)
    LinearInterp,
}

impl PathArg {
    pub fn path(self) -> Path {
        match self {
            PathArg::Condot => Path::Gaussian(GaussianPath::CONDOT),
            PathArg::Sqrt => Path::Gaussian(GaussianPath::SQRT),
            PathArg::Cosine => Path::Gaussian(GaussianPath::COSINE),
            PathArg::Vp => Path::Gaussian(GaussianPath::VP),
            PathArg::Ve => Path::Gaussian(GaussianPath::VE),
            PathArg::LinearInterp => Path::LinearInterpolant,
        }
    }
}

/// What fit-velocity regresses on (`--objective`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    /// Conditional flow matching: the marginal velocity u_t(x)
    FlowMatching,
    /// A shortcut model (Frans et al. 2024) from data: u(x, t, d) for jumps d, flow matching
    /// at d = 0 plus self-consistency across step sizes; a `flowmap` file for sample-fewstep
    Shortcut,
    /// Consistency training (Song et al. 2023) from data: f(x, t) maps a point of the path to
    /// the trajectory's end, from pairs of adjacent times on one draw of the path; a
    /// `consistency` file for sample-fewstep
    Consistency,
    /// A MeanFlow model (Geng et al. 2025) from data: the same u(x, t, d) as shortcut,
    /// regressed on the MeanFlow identity u = v + d du/dt; a `flowmap` file for sample-fewstep
    Meanflow,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::FlowMatching => "flow-matching",
            Objective::Shortcut => "shortcut",
            Objective::Consistency => "consistency",
            Objective::Meanflow => "meanflow",
        }
    }

    /// The kind of the model file the objective writes.
    pub fn kind(self) -> &'static str {
        match self {
            Objective::FlowMatching => "velocity",
            Objective::Shortcut | Objective::Meanflow => "flowmap",
            Objective::Consistency => "consistency",
        }
    }

    /// Parses a name of [`Self::name`].
    pub fn parse(s: &str) -> Option<Objective> {
        [
            Objective::FlowMatching,
            Objective::Shortcut,
            Objective::Consistency,
            Objective::Meanflow,
        ]
        .into_iter()
        .find(|o| o.name() == s)
    }

    /// Whether the objective trains a two-time model u(x, t, d), a `flowmap` file.
    pub fn jumps(self) -> bool {
        matches!(self, Objective::Shortcut | Objective::Meanflow)
    }
}

/// The flags both trainers share. Those that shape the run are optional so that a resumed run
/// can tell a contradiction from a default.
#[derive(clap::Args, Clone, Debug)]
pub struct FitFlags {
    /// Training data: (N, D) points or (N, C, H, W) images, .npy
    #[arg(long, value_name = "PATH")]
    pub data: String,
    /// Class labels of the data, (N,) int64 in 0..K-1: trains a conditional model u(x | y)
    #[arg(long, value_name = "PATH")]
    pub labels: Option<String>,
    /// K, the number of classes [default: the largest label + 1]
    #[arg(long, value_name = "K", value_parser = at_least_1::<usize>)]
    pub num_classes: Option<usize>,
    /// Probability eta of replacing a label by the null label, so that the model also learns
    /// u(x | null) for classifier-free guidance [default: 0.1 with --labels]
    #[arg(long, value_name = "ETA")]
    pub label_dropout: Option<f64>,
    #[command(flatten)]
    pub net: NetFlags,
    #[command(flatten)]
    pub optim: OptimFlags,
    /// Density of the training times t: `uniform`, `logit-normal[:M,S]` (sigmoid of N(M, S^2);
    /// M = 0, S = 1 without arguments) or `mode:S` (S in [-1, 1.75]; see flowpipe::paths::time)
    /// [default: uniform]
    #[arg(long, value_name = "DENSITY")]
    pub time_density: Option<TimeDensity>,
    /// Steps of linear learning-rate warm-up [default: 0]
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Learning rate after warm-up: constant, or cosine decay to 0 at the last step
    /// [default: constant]
    #[arg(long, value_enum)]
    pub decay: Option<Decay>,
    /// Minibatch size [default: 1000]
    #[arg(long, value_parser = at_least_1::<usize>)]
    pub batch: Option<usize>,
    /// Total optimiser steps [default: 5000, or the checkpoint's when resuming]
    #[arg(long, value_parser = at_least_1::<u64>)]
    pub steps: Option<u64>,
    #[command(flatten)]
    pub run: RunFlags,
    /// Draw samples of the model (EMA weights) as a PNG here at every --checkpoint-every steps
    /// and at the end: one row per class, from the same noise each time (images only)
    #[arg(long, value_name = "PATH")]
    pub sample_grid: Option<String>,
    /// Samples per row of --sample-grid
    #[arg(long, default_value_t = 8, value_name = "K", value_parser = at_least_1::<usize>)]
    pub grid_cols: usize,
    /// Euler steps of the --sample-grid samples
    #[arg(long, default_value_t = 20, value_name = "STEPS", value_parser = at_least_1::<usize>)]
    pub grid_steps: usize,
}

/// The default label dropout eta with --labels (the lab's).
pub const DEFAULT_LABEL_DROPOUT: f64 = 0.1;

/// What a tool trains: the model kind and its tool-specific choices (None: default/checkpoint).
pub struct FitSpec {
    /// `velocity` or `score`.
    pub kind: &'static str,
    pub param: Option<Param>,
    pub default_param: Param,
    pub path: Option<PathArg>,
    pub default_path: Path,
    /// `--source`: x_0 from a data set instead of N(0, I) (fit-velocity only).
    pub source: Option<String>,
    /// `--coupling` of x_0 and z within a batch (fit-velocity only; None: default/checkpoint).
    pub coupling: Option<Coupling>,
    /// `--interpolant-noise a`: the stochastic interpolant's gamma_t = a t (1 - t) (fit-velocity
    /// with --source only; None: default/checkpoint).
    pub interpolant_noise: Option<f64>,
    /// `--objective` (fit-velocity only; None: flow matching, or the checkpoint's).
    pub objective: Option<Objective>,
}

/// Usage errors (exit 2): values no run can use, and choices that do not go together.
pub(super) fn check_flags(spec: &FitSpec, f: &FitFlags) -> Result<()> {
    f.optim.check()?;
    f.run.check()?;
    if let Some(h) = &f.net.hidden {
        if h.is_empty() || h.contains(&0) {
            usage_bail!("--hidden must list positive widths, got {h:?}");
        }
    }
    if let Some(eta) = f.label_dropout {
        if !(0.0..1.0).contains(&eta) {
            usage_bail!("--label-dropout must be in [0, 1), got {eta}");
        }
    }
    if f.labels.is_none() && (f.label_dropout.is_some() || f.num_classes.is_some()) {
        usage_bail!("--label-dropout and --num-classes need --labels");
    }
    crate::io::check_output_opt(&f.sample_grid, true)?;
    if f.sample_grid.is_some() && spec.source.is_some() {
        usage_bail!("--sample-grid samples from N(0, I) noise; it does not go with --source");
    }
    arch::check_flags(&f.net)?;
    if spec.kind == "score" && spec.coupling.is_some_and(|c| c != Coupling::Independent) {
        usage_bail!(
            "score matching needs eps independent of z: --coupling ot is for fit-velocity only"
        );
    }
    if let Some(a) = spec.interpolant_noise {
        if !(a >= 0.0 && a.is_finite()) {
            usage_bail!("--interpolant-noise must be a finite number >= 0, got {a}");
        }
        if a > 0.0 && spec.source.is_none() {
            usage_bail!(
                "--interpolant-noise is the stochastic interpolant's, between a --source data set \
                 and the data; from N(0, I) choose the noise schedule with --path"
            );
        }
    }
    // The few-step objectives sample from N(0, I) with sample-fewstep.
    if let Some(o) = spec.objective.filter(|&o| o != Objective::FlowMatching) {
        let name = o.name();
        if spec_path(spec).is_some_and(|p| p.init_std() != 1.0) {
            usage_bail!(
                "--objective {name} starts from N(0, I) noise; --path ve starts from \
                 N(0, 50^2 I): use another path"
            );
        }
        if f.sample_grid.is_some() {
            usage_bail!(
                "--sample-grid draws a velocity model's ODE; sample a {name} model with \
                 sample-fewstep"
            );
        }
        if o == Objective::Consistency && spec.source.is_some() {
            usage_bail!(
                "--objective consistency re-noises along a Gaussian path from N(0, I) when it \
                 samples; --source does not apply"
            );
        }
    }
    let path = spec_path(spec);
    if spec.coupling == Some(Coupling::Ot) && path == Some(Path::Gaussian(GaussianPath::VE)) {
        usage_bail!(
            "--coupling ot pairs the noise x_0 with the data by distance, for paths that start at \
             alpha_0 = 0; --path ve starts at x_0 = z + 50 eps: use --coupling independent"
        );
    }
    match (path, &spec.source) {
        (Some(Path::Gaussian(_)), Some(_)) => usage_bail!(
            "--path {} starts from Gaussian noise; with --source use --path linear-interp",
            path.unwrap().name()
        ),
        (Some(Path::LinearInterpolant), _) if spec.kind == "score" => {
            usage_bail!(
                "score matching needs a Gaussian path: --path condot, sqrt, cosine, vp or ve"
            )
        }
        _ => {}
    }
    Ok(())
}

pub(super) fn spec_path(spec: &FitSpec) -> Option<Path> {
    spec.path.map(PathArg::path)
}
