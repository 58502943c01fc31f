//! The one font used for titles and tick labels, found at run time and never shipped.
//!
//! plotters' `ab_glyph` backend draws only fonts registered with it, so on first use we look
//! for DejaVu Sans (Debian's `fonts-dejavu-core`) in the usual places and register it as
//! `sans-serif`. `FLOWPIPE_FONT=/path/to/font.ttf` picks another font; `FLOWPIPE_FONT=` (empty)
//! turns text off. Without a font, plots are still drawn, only without any text, so a missing
//! font never makes a tool fail.

use plotters::style::{register_font, FontStyle};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The family name every text style in [`crate::render`] asks for.
pub const FAMILY: &str = "sans-serif";

/// The environment variable naming a font file (empty: no text).
pub const ENV: &str = "FLOWPIPE_FONT";

/// Where DejaVu Sans (or a close relative) usually lives on Linux and macOS.
const USUAL: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

static LOADED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The files tried, in order: `$FLOWPIPE_FONT` alone when it is set, else the usual places.
pub fn candidates() -> Vec<PathBuf> {
    match std::env::var_os(ENV) {
        Some(p) if p.is_empty() => Vec::new(),
        Some(p) => vec![PathBuf::from(p)],
        None => USUAL.iter().map(PathBuf::from).collect(),
    }
}

/// Registers the first loadable candidate once per process; returns the file used, if any.
pub fn loaded() -> Option<&'static PathBuf> {
    LOADED
        .get_or_init(|| candidates().into_iter().find(register))
        .as_ref()
}

/// True when text can be drawn (a font was found and registered).
pub fn available() -> bool {
    loaded().is_some()
}

/// True when text was turned off on purpose (`FLOWPIPE_FONT` set and empty).
pub fn disabled() -> bool {
    std::env::var_os(ENV).is_some_and(|p| p.is_empty())
}

/// Reads and registers one font file; false when it is missing or not a font.
fn register(path: &PathBuf) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    // plotters keeps a `'static` reference to the font data: it lives as long as the process.
    let data: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, data).is_ok()
}
