//! Real peers for tests and benchmarks, on loopback, gone when dropped: a throwaway
//! PostgreSQL server ([`PgServer`]) and a moto server speaking the AWS KMS API
//! ([`MotoServer`]); and running our command-line programs as a user would
//! ([`run_with_stdin`]).

pub mod cli;
pub mod moto;
pub mod pg;

pub use cli::run_with_stdin;
pub use moto::{MotoError, MotoServer};
pub use pg::*;
