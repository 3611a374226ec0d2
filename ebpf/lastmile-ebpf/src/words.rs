//! Word-sized loads and stores of addresses in records and keys.
//!
//! LLVM's BPF backend stores a byte array (alignment 1) one byte at a time, and it has no
//! inline `memset`/`memmove` for anything it cannot prove aligned: it calls the byte-loop
//! versions compiled into the object, as BPF-to-BPF calls. Zeroing and copying one
//! 96-byte `ConnectRecord` that way measured ~300 ns of a redirected connect's ~430 ns
//! (`cargo xtask bench connect`, and the `memset`/`memmove` subprograms in `perf`). So the
//! hot paths write records field by field in place, and addresses as four `u32`, through
//! pointers whose alignment the layout asserts in `lastmile-ebpf-common` guarantee.

/// An address as the kernel keeps `user_ip6`: four `u32` holding the network-order bytes
/// in memory order (so IPv4 `a.b.c.d` maps to the words of `::ffff:a.b.c.d`).
pub type AddrWords = [u32; 4];

/// The third word of a v4-mapped address: bytes `00 00 ff ff`.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `::ffff:a.b.c.d` for the IPv4 address the kernel gives as `user_ip4`/`src_ip4`.
#[inline(always)]
pub fn v4_mapped(ip4: u32) -> AddrWords {
    [0, 0, V4_MAPPED_WORD, ip4]
}

/// The IPv4 address in a v4-mapped IPv6 address, if it is one.
#[inline(always)]
pub fn as_v4(a: AddrWords) -> Option<u32> {
    if a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_WORD {
        Some(a[3])
    } else {
        None
    }
}

/// The words of an address kept as 16 bytes, read with four 4-byte loads.
///
/// # Safety
///
/// `src` must be 4-aligned: a field of a `ConnectRecord` or `ClientKey` in map or
/// ring-buffer memory or on the stack (their alignment and field offsets are asserted).
#[inline(always)]
pub unsafe fn load_addr(src: *const [u8; 16]) -> AddrWords {
    let p = src.cast::<u32>();
    // SAFETY: the caller guarantees alignment; four in-bounds words.
    unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] }
}

/// Stores `words` into 16 address bytes with four 4-byte stores.
///
/// # Safety
///
/// As for [`load_addr`], and `dst` must be writable.
#[inline(always)]
pub unsafe fn store_addr(dst: *mut [u8; 16], words: AddrWords) {
    let p = dst.cast::<u32>();
    // SAFETY: the caller guarantees alignment; four in-bounds words.
    unsafe {
        p.write(words[0]);
        p.add(1).write(words[1]);
        p.add(2).write(words[2]);
        p.add(3).write(words[3]);
    }
}
