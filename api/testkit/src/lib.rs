//! Real peers for tests and benchmarks, on loopback, gone when dropped: a throwaway
//! PostgreSQL server ([`PgServer`]) and a moto server speaking the AWS KMS API
//! ([`MotoServer`]); and running our command-line programs as a user would
//! ([`run_with_stdin`]) and checking what they report ([`reports_missing_file`]); and
//! [`block_on`] for a synchronous test that calls async code.

pub mod cli;
pub mod metrics;
pub mod moto;
pub mod pg;

pub use cli::{repeated_cause, reports_missing_file, run_with_stdin};
pub use moto::{MotoError, MotoServer};
pub use pg::*;

/// Runs `f` to completion on a fresh current-thread runtime: for synchronous tests that
/// call async code (publishing a checkpoint, which a KMS may sign).
#[allow(
    clippy::panic,
    reason = "a test helper: no runtime means no test to run"
)]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(f),
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    }
}
