//! Protected targets: the destinations whose connections lastmile intercepts.
//!
//! One parser for the `protect` syntax, shared by the API (which refuses at once what a
//! node could not intercept) and the node (which puts targets in the kernel's maps).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// A destination to intercept: one address, or a network given as a prefix, on one port.
///
/// Written `127.0.0.2:5432`, `127.1.0.0/16:5432`, `[::1]:22` or `[::ffff:127.0.0.0/104]:22`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtectedTarget {
    addr: IpAddr,
    prefix_len: u8,
    port: u16,
}

/// Why a protected-target string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetParseError {
    #[error("`{0}` has no port: write ADDRESS:PORT, [IPV6]:PORT, or NETWORK/BITS:PORT")]
    MissingPort(String),
    #[error("`{0}` is not a valid port (1-65535)")]
    BadPort(String),
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    #[error("prefix length {len} is too long for {addr} (at most {max})")]
    PrefixTooLong { addr: IpAddr, len: u8, max: u8 },
    #[error("`{0}` is not a prefix length")]
    BadPrefix(String),
    #[error("{addr}/{len} has bits set after the prefix; did you mean {network}/{len}?")]
    HostBitsSet {
        addr: IpAddr,
        len: u8,
        network: IpAddr,
    },
}

impl ProtectedTarget {
    /// One exact address and port.
    pub fn exact(addr: SocketAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            addr: addr.ip(),
            prefix_len,
            port: addr.port(),
        }
    }

    /// Every address of `network/prefix_len` on `port`.
    pub fn network(addr: IpAddr, prefix_len: u8, port: u16) -> Result<Self, TargetParseError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(TargetParseError::PrefixTooLong {
                addr,
                len: prefix_len,
                max,
            });
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(TargetParseError::HostBitsSet {
                addr,
                len: prefix_len,
                network,
            });
        }
        if port == 0 {
            return Err(TargetParseError::BadPort("0".into()));
        }
        Ok(Self {
            addr,
            prefix_len,
            port,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `dest` is one of the destinations this target covers.
    pub fn covers(&self, dest: SocketAddr) -> bool {
        dest.port() == self.port
            && dest.is_ipv4() == self.addr.is_ipv4()
            && mask(dest.ip(), self.prefix_len) == self.addr
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for ProtectedTarget {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetParseError::BadAddress(s.into()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| TargetParseError::MissingPort(s.into()))?;
            (host, port)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| TargetParseError::MissingPort(s.into()))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| TargetParseError::BadPort(port.into()))?;
        if port == 0 {
            return Err(TargetParseError::BadPort(port.to_string()));
        }
        let (addr, len) = match host.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (host, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| TargetParseError::BadAddress(addr.into()))?;
        match len {
            None => Ok(Self::exact(SocketAddr::new(addr, port))),
            Some(l) => {
                let len: u8 = l
                    .parse()
                    .map_err(|_| TargetParseError::BadPrefix(l.into()))?;
                Self::network(addr, len, port)
            }
        }
    }
}

impl fmt::Display for ProtectedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        match (self.addr, self.prefix_len == full) {
            (IpAddr::V4(a), true) => write!(f, "{a}:{}", self.port),
            (IpAddr::V4(a), false) => write!(f, "{a}/{}:{}", self.prefix_len, self.port),
            (IpAddr::V6(a), true) => write!(f, "[{a}]:{}", self.port),
            (IpAddr::V6(a), false) => write!(f, "[{a}/{}]:{}", self.prefix_len, self.port),
        }
    }
}

impl serde::Serialize for ProtectedTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ProtectedTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in [
            "127.0.0.2:5432",
            "127.1.0.0/16:5432",
            "[::1]:22",
            "[::ffff:127.0.0.0/104]:22",
        ] {
            let t: ProtectedTarget = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert_eq!(
            "127.0.0.2".parse::<ProtectedTarget>(),
            Err(TargetParseError::MissingPort("127.0.0.2".into()))
        );
        assert_eq!(
            "127.0.0.2:0".parse::<ProtectedTarget>(),
            Err(TargetParseError::BadPort("0".into()))
        );
        assert_eq!(
            "127.0.0.2:70000".parse::<ProtectedTarget>(),
            Err(TargetParseError::BadPort("70000".into()))
        );
        assert!(matches!(
            "127.1.2.3/16:5432".parse::<ProtectedTarget>(),
            Err(TargetParseError::HostBitsSet { .. })
        ));
        assert!(matches!(
            "127.0.0.0/33:5432".parse::<ProtectedTarget>(),
            Err(TargetParseError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "db.internal:5432".parse::<ProtectedTarget>(),
            Err(TargetParseError::BadAddress(_))
        ));
    }

    #[test]
    fn covers_only_its_network_and_port() {
        let t: ProtectedTarget = "127.1.0.0/16:5432".parse().unwrap();
        assert!(t.covers("127.1.200.3:5432".parse().unwrap()));
        assert!(!t.covers("127.2.0.3:5432".parse().unwrap()));
        assert!(!t.covers("127.1.0.3:5433".parse().unwrap()));
        assert!(!t.covers("[::1]:5432".parse().unwrap()));
    }
}
