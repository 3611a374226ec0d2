//! lastmile's kernel programs. Built for `bpfel-unknown-none` by lastmiled's build script
//! and embedded in lastmiled; on any other target this is an empty program.
//!
//! - `connect4`/`connect6` (cgroup/connect*): a TCP connect to a protected target is
//!   rewritten to lastmiled's listener, recorded, and reported as an event.
//! - `record_client` (sock_ops): once the kernel has picked the client's own address and
//!   port, re-keys the record by them, which is what lastmiled sees on accept.
//! - `getpeername4`/`getpeername6`: the application gets the address it asked for back.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod peer;
#[cfg(target_arch = "bpf")]
mod words;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot reach a panic; this only satisfies no_std.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
