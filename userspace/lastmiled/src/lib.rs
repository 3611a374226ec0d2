//! lastmiled, the host daemon. Role `node`: load lastmile's eBPF programs, attach them to a
//! cgroup v2, keep the protected-target map current, and hand each redirected connection
//! to the agent of the user who made it.

pub mod config;
pub mod events;
pub mod intercept;
pub mod mounts;
pub mod node;
pub mod target;
