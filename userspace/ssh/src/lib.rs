//! The SSH last mile (placeholder docs, rewritten with the bridge).

pub mod bridge;
pub mod events;
pub mod exec_log;
pub mod policy;
pub mod principal;
pub mod recording;
pub mod sftp_log;
