//! lastmiled, the host daemon. Role `node`: load lastmile's eBPF programs, attach them to a
//! cgroup v2, and keep the protected-target map current, so that connections to protected
//! targets reach lastmiled's listener instead.

pub mod cgroup;
pub mod intercept;
pub mod target;
