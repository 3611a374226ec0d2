//! What lastmile's components say to the API.

pub mod connection;
pub mod device;
pub mod duration;
pub mod error_code;
pub mod httpsig;
pub mod names;
pub mod target;
pub mod wire;
