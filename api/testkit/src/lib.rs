//! Real peers for tests and benchmarks, on loopback, gone when dropped: a throwaway
//! PostgreSQL server ([`PgServer`]) and a moto server speaking the AWS KMS API
//! ([`MotoServer`]).

pub mod moto;
pub mod pg;

pub use moto::{MotoError, MotoServer};
pub use pg::*;
