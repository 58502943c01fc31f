//! One error type for every tool: `anyhow::Error` with context added at each file boundary.
//!
//! Errors that are the user's fault in how a tool was called (bad flag values, inconsistent
//! options) are wrapped in [`UsageError`] so that the shared `main` exits with code 2; every
//! other failure exits with code 1. Maths inside `lib` returns candle's `Result`, which converts.

pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// Marks an error as a usage error (exit code 2), e.g. `--steps 0`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Returns early with a usage error (exit code 2) formatted like `format!`.
#[macro_export]
macro_rules! usage_bail {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::error::UsageError(format!($($arg)*))))
    };
}

/// True when any error in the chain is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<UsageError>())
}

/// True when the root cause is a broken pipe: a closed downstream pipe is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
