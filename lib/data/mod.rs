//! Data sets: real images imported from their standard files.

pub mod import;
