//! # flowpipe: flow matching and diffusion models as small tools that pipe into each other
//!
//! ## The data contract (read this first)
//! - **Time** runs from t = 0 (noise, p_init) to t = 1 (data), as in the MIT 6.S184 notes
//!   (arXiv 2506.02070). Every model file says so in its metadata (`time_convention`).
//! - **Tensors on the wire** are `.npy`, C order, f32 unless a tool says otherwise; labels are
//!   i64. Layouts: points (N, D); images (N, C, H, W); trajectories (N, T, ...).
//! - **Everything trained** is one `.safetensors` file whose `__metadata__["flowpipe"]` holds the
//!   JSON config that rebuilds it (kind, architecture, sizes, path, data shape, training
//!   arguments, version). See [`io::model`].
//! - **Formats are recognised by their magic bytes**, not by file extension ([`io::sniff`]).
//! - **Randomness** never comes from candle: every draw comes from a seeded ChaCha stream keyed
//!   by (seed, purpose, index), so sample i is the same however a batch is split ([`rng`]).
//!
//! ## Layout
//! Modules are named for the course's concepts; each opens with the equations it implements.

pub mod cli;
pub mod data;
pub mod densities;
pub mod device;
pub mod discrete;
pub mod distill;
pub mod error;
pub mod eval;
pub mod fields;
pub mod guidance;
pub mod io;
pub mod likelihood;
pub mod memory;
pub mod nn;
pub mod noise;
pub mod paths;
pub mod progress;
pub mod render;
pub mod rng;
pub mod solvers;
pub mod spec;
pub mod text;
pub mod train;

// Outside the core: the speed figures of `run-bench` and `make bench`. No module above uses it;
// it is in the library so that the tests can check what `run-bench` prints (see its header).
pub mod bench;

pub use error::{Result, UsageError};

/// Declares the tools' allocator, [`memory::Allocator`] (the system's, with large zeroed blocks
/// mapped fresh), as the program's global allocator: one line in each binary,
/// `flowpipe::tool_allocator!();`. A program that links the library without it keeps its own.
#[macro_export]
macro_rules! tool_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::memory::Allocator = $crate::memory::Allocator;
    };
}

// The library's own tests run under the tools' allocator (memory's tests check its mappings).
#[cfg(test)]
tool_allocator!();

/// The crate version written into every model file.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The time convention written into every model file's metadata.
pub const TIME_CONVENTION: &str = "t=0 noise (p_init), t=1 data (p_data)";
