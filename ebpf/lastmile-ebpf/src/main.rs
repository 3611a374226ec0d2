//! lastmile's kernel programs. Built for `bpfel-unknown-none` by lastmiled's build script
//! and embedded in lastmiled; on any other target this is an empty program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot reach a panic; this only satisfies no_std.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
