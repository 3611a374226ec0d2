//! lastmiled, the host daemon. Role `node`: load lastmile's eBPF programs, attach them to a
//! cgroup v2, keep the protected-target map current, and hand each redirected connection
//! to the agent of the user who made it. Role `gateway`: the far end of users' tunnels.

pub mod config;
pub mod events;
pub mod gateway;
pub mod intercept;
pub mod metrics;
pub mod mounts;
pub mod node;
pub mod target;
