//! The one integration-test binary: runs the real tools, pipes them together, and checks the
//! conventions every tool shares. One module per issue's tools; helpers live in `common`.

#[macro_use]
mod common;
mod captions;
mod couplings;
mod discrete;
mod distill;
mod foundation;
mod guidance;
mod hardening;
mod images;
mod import;
mod interop;
mod lab1;
mod lab2;
mod likelihood;
mod metrics;
mod render;
mod shards;
mod toydata;
mod train;
mod vae;
