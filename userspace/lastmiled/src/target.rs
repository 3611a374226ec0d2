//! Protected targets as the kernel's maps hold them. The type and its syntax live in
//! `lastmile-proto` (the API checks resources with the same parser).

use std::net::IpAddr;

use lastmile_ebpf_common::{PORT_PREFIX_BITS, TargetV4, TargetV6};
pub use lastmile_proto::target::{ProtectedTarget, TargetParseError};

/// A target's keys in the kernel's LPM tries: the port first, then the address, so one
/// prefix length covers both.
pub trait KernelKey {
    /// The LPM trie key for an IPv4 target, or `None` for IPv6.
    fn key_v4(&self) -> Option<(u32, TargetV4)>;
    /// The LPM trie key for an IPv6 target, or `None` for IPv4.
    fn key_v6(&self) -> Option<(u32, TargetV6)>;
}

impl KernelKey for ProtectedTarget {
    fn key_v4(&self) -> Option<(u32, TargetV4)> {
        match self.addr() {
            IpAddr::V4(a) => Some((
                PORT_PREFIX_BITS + u32::from(self.prefix_len()),
                TargetV4 {
                    port: self.port().to_be_bytes(),
                    addr: a.octets(),
                },
            )),
            IpAddr::V6(_) => None,
        }
    }

    fn key_v6(&self) -> Option<(u32, TargetV6)> {
        match self.addr() {
            IpAddr::V6(a) => Some((
                PORT_PREFIX_BITS + u32::from(self.prefix_len()),
                TargetV6 {
                    port: self.port().to_be_bytes(),
                    addr: a.octets(),
                },
            )),
            IpAddr::V4(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_puts_port_before_address() {
        let t: ProtectedTarget = "127.1.0.0/16:5432".parse().unwrap();
        let (len, key) = t.key_v4().unwrap();
        assert_eq!(len, 32);
        assert_eq!(key.port, [0x15, 0x38]);
        assert_eq!(key.addr, [127, 1, 0, 0]);
        assert!(t.key_v6().is_none());
    }
}
