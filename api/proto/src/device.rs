//! The device fingerprint: binds a device key to a machine.
//!
//! A device key (Ed25519) is registered together with a fingerprint of facts about the
//! machine that survive reboots and renames: the systemd machine id and the DMI product
//! UUID and serial numbers. The fingerprint deliberately leaves the hostname out, since
//! people rename machines; the hostname is still collected, for display.
//!
//! [`MachineFacts::collect`] reads the facts, [`fingerprint`] hashes them. Both sides use
//! [`fingerprint`], which normalises facts the same way [`MachineFacts::collect`] does, so
//! facts sent over the wire hash to the same value as facts read locally.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Domain separation tag, hashed first, so the digest cannot be confused with any other
/// SHA-256 lastmile computes; bump the version when the encoding changes.
pub const FINGERPRINT_DOMAIN: &str = "lastmile-device-v1";

/// Where the machine id lives (machine-id(5)), relative to the root.
const MACHINE_ID: &str = "etc/machine-id";
/// The older D-Bus location, used when /etc/machine-id is absent or unusable.
const MACHINE_ID_DBUS: &str = "var/lib/dbus/machine-id";
/// DMI facts the kernel exports (root-only on most systems).
const PRODUCT_UUID: &str = "sys/class/dmi/id/product_uuid";
const BOARD_SERIAL: &str = "sys/class/dmi/id/board_serial";
const PRODUCT_SERIAL: &str = "sys/class/dmi/id/product_serial";
/// The kernel's idea of the hostname.
const HOSTNAME: &str = "proc/sys/kernel/hostname";

/// Longest fact we read, in bytes. Real ones are under 100; a longer file is not a fact.
const MAX_FACT_LEN: u64 = 4096;

/// Values firmware vendors leave in DMI fields instead of a real serial or UUID. Many
/// machines share them, so they identify nothing; they are compared case-insensitively and
/// treated as absent.
const DMI_PLACEHOLDERS: &[&str] = &[
    "0",
    "0123456789",
    "00000000-0000-0000-0000-000000000000",
    "03000200-0400-0500-0006-000700080009",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "default string",
    "n/a",
    "none",
    "not applicable",
    "not available",
    "not specified",
    "system serial number",
    "to be filled by o.e.m.",
    "unknown",
];

/// The content systemd writes to /etc/machine-id before the id is committed at first boot
/// (machine-id(5)); it is the same on every such machine.
const MACHINE_ID_UNINITIALIZED: &str = "uninitialized";

/// Stable facts about this machine; each is optional (containers lack DMI).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineFacts {
    /// /etc/machine-id, or /var/lib/dbus/machine-id.
    pub machine_id: Option<String>,
    /// /sys/class/dmi/id/product_uuid.
    pub product_uuid: Option<String>,
    /// /sys/class/dmi/id/board_serial.
    pub board_serial: Option<String>,
    /// /sys/class/dmi/id/product_serial.
    pub product_serial: Option<String>,
    /// /proc/sys/kernel/hostname; not part of the fingerprint.
    pub hostname: Option<String>,
}

impl MachineFacts {
    /// Reads /etc/machine-id (fallback /var/lib/dbus/machine-id),
    /// /sys/class/dmi/id/product_uuid, board_serial, product_serial (those are root-only
    /// readable on most systems: unreadable -> None, never an error), and the hostname
    /// (/proc/sys/kernel/hostname). Trims whitespace; empty -> None. Also None: a machine
    /// id of `uninitialized` and the DMI placeholders firmware ships (see
    /// [`normalize_machine_id`] and [`normalize_dmi`]).
    #[must_use]
    pub fn collect() -> Self {
        Self::collect_from(Path::new("/"))
    }

    /// Same, rooted at another directory (for tests): reads `<root>/etc/machine-id` etc.
    #[must_use]
    pub fn collect_from(root: &Path) -> Self {
        let read = |rel: &str| read_fact(&root.join(rel));
        Self {
            machine_id: read(MACHINE_ID)
                .and_then(|v| normalize_machine_id(&v))
                .or_else(|| read(MACHINE_ID_DBUS).and_then(|v| normalize_machine_id(&v))),
            product_uuid: read(PRODUCT_UUID).and_then(|v| normalize_dmi(&v)),
            board_serial: read(BOARD_SERIAL).and_then(|v| normalize_dmi(&v)),
            product_serial: read(PRODUCT_SERIAL).and_then(|v| normalize_dmi(&v)),
            hostname: read(HOSTNAME).and_then(|v| non_empty(&v)),
        }
    }
}

/// Reads a small text file; any failure (absent, unreadable, not UTF-8, too long) is
/// `None`, because a missing fact is normal and must never stop the client.
fn read_fact(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut text = String::new();
    // One byte past the limit tells an over-long file from one exactly at it.
    file.take(MAX_FACT_LEN + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > MAX_FACT_LEN {
        return None;
    }
    Some(text)
}

/// Trims whitespace; empty -> None.
fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// A machine id as the fingerprint uses it: trimmed, and None when empty or systemd's
/// `uninitialized` placeholder.
#[must_use]
pub fn normalize_machine_id(value: &str) -> Option<String> {
    non_empty(value).filter(|v| v != MACHINE_ID_UNINITIALIZED)
}

/// A DMI value as the fingerprint uses it: trimmed, and None when empty or one of the
/// placeholders firmware ships instead of a real value.
#[must_use]
pub fn normalize_dmi(value: &str) -> Option<String> {
    non_empty(value).filter(|v| {
        !DMI_PLACEHOLDERS
            .iter()
            .any(|placeholder| v.eq_ignore_ascii_case(placeholder))
    })
}

/// Why no fingerprint could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// Neither a machine id nor a product UUID is available.
    #[error(
        "this machine has no stable identity to bind a device key to: none of \
         /etc/machine-id, /var/lib/dbus/machine-id or /sys/class/dmi/id/product_uuid gave a \
         usable value; create a machine id (`systemd-machine-id-setup`, or in a container \
         mount the host's /etc/machine-id) and try again"
    )]
    NoStableFacts,
}

/// The fingerprint: lowercase hex SHA-256 over a length-prefixed canonical encoding of
/// (`"lastmile-device-v1"`, machine_id, product_uuid, board_serial, product_serial).
///
/// The hostname is not included: people rename machines, and a rename must not orphan the
/// device key.
///
/// Each fact is first normalised as [`MachineFacts::collect`] does ([`normalize_machine_id`],
/// [`normalize_dmi`]), so `Some("")`, whitespace and placeholders count as absent. The
/// hashed bytes are then:
///
/// ```text
/// u32be(len(tag)) || tag
/// for each of machine_id, product_uuid, board_serial, product_serial:
///     absent:  0x00
///     present: 0x01 || u32be(len(value)) || value        (value as UTF-8)
/// ```
///
/// The presence byte keeps "absent" apart from any value, and the length prefix keeps
/// values from running into each other (`"ab" + "c"` and `"a" + "bc"` hash differently).
///
/// # Errors
///
/// [`FingerprintError::NoStableFacts`] when there is no machine id and no product UUID:
/// serials alone are too often missing or shared, and a fingerprint of nothing binds
/// nothing.
pub fn fingerprint(facts: &MachineFacts) -> Result<DeviceFingerprint, FingerprintError> {
    let machine_id = facts.machine_id.as_deref().and_then(normalize_machine_id);
    let product_uuid = facts.product_uuid.as_deref().and_then(normalize_dmi);
    if machine_id.is_none() && product_uuid.is_none() {
        return Err(FingerprintError::NoStableFacts);
    }
    let board_serial = facts.board_serial.as_deref().and_then(normalize_dmi);
    let product_serial = facts.product_serial.as_deref().and_then(normalize_dmi);

    let mut hasher = Sha256::new();
    put_bytes(&mut hasher, FINGERPRINT_DOMAIN.as_bytes());
    for fact in [&machine_id, &product_uuid, &board_serial, &product_serial] {
        match fact {
            None => hasher.update([0x00]),
            Some(value) => {
                hasher.update([0x01]);
                put_bytes(&mut hasher, value.as_bytes());
            }
        }
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(DeviceFingerprint(hex))
}

/// A machine's fingerprint as the wire carries it: 64 lowercase hex digits (SHA-256, see
/// [`fingerprint`]). Made only by [`fingerprint`] or by [`DeviceFingerprint::parse`], so
/// a value of this type is always well formed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeviceFingerprint(String);

/// A fingerprint that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a device fingerprint is 64 hex digits (SHA-256); got {len} characters{}", if *.hex { "" } else { ", not all hex" })]
pub struct BadFingerprint {
    len: usize,
    hex: bool,
}

impl DeviceFingerprint {
    /// Checks `text` (as a peer sent it); hex digits in either case, kept lowercase.
    pub fn parse(text: &str) -> Result<Self, BadFingerprint> {
        let hex = text.bytes().all(|b| b.is_ascii_hexdigit());
        if text.len() != 64 || !hex {
            return Err(BadFingerprint {
                len: text.chars().count(),
                hex,
            });
        }
        Ok(Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for DeviceFingerprint {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes `u32be(len) || bytes`. Facts are at most [`MAX_FACT_LEN`] bytes when collected;
/// a hand-built one over 4 GiB has its length saturated, which still hashes the full value.
fn put_bytes(hasher: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use std::fs;

    fn facts() -> MachineFacts {
        MachineFacts {
            machine_id: Some("0123456789abcdef0123456789abcdef".to_owned()),
            product_uuid: Some("4c4c4544-0042-3510-8051-b4c04f4e4e32".to_owned()),
            board_serial: Some("BSN12345".to_owned()),
            product_serial: Some("PSN67890".to_owned()),
            hostname: Some("alice-laptop".to_owned()),
        }
    }

    #[test]
    fn deterministic_and_well_formed() {
        let a = fingerprint(&facts()).unwrap();
        assert_eq!(a, fingerprint(&facts()).unwrap());
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn encoding_is_pinned() {
        // Computed independently (Python hashlib) from the documented encoding; a change
        // here orphans every registered device key, so it needs a new domain tag.
        assert_eq!(
            fingerprint(&facts()).unwrap().as_str(),
            "67305b8d347f93b691395ca921ec2c0bdc10a26918022c7c141cda5b8ed039e4"
        );
        let only_machine_id = MachineFacts {
            machine_id: Some("0123456789abcdef0123456789abcdef".to_owned()),
            product_uuid: None,
            board_serial: None,
            product_serial: None,
            hostname: None,
        };
        assert_eq!(
            fingerprint(&only_machine_id).unwrap().as_str(),
            "71fc1da08e4faeb08330e8c670212e11566f64f9d3b0b8f7b4f75bef70bed14c"
        );
    }

    #[test]
    fn changes_when_a_stable_fact_changes() {
        let base = fingerprint(&facts()).unwrap();
        let mut f = facts();
        f.machine_id = Some("fedcba9876543210fedcba9876543210".to_owned());
        assert_ne!(fingerprint(&f).unwrap(), base);
        let mut f = facts();
        f.product_uuid = None;
        assert_ne!(fingerprint(&f).unwrap(), base);
        let mut f = facts();
        f.board_serial = Some("BSN12346".to_owned());
        assert_ne!(fingerprint(&f).unwrap(), base);
        let mut f = facts();
        f.product_serial = None;
        assert_ne!(fingerprint(&f).unwrap(), base);
    }

    #[test]
    fn hostname_does_not_matter() {
        let base = fingerprint(&facts()).unwrap();
        let mut f = facts();
        f.hostname = Some("renamed".to_owned());
        assert_eq!(fingerprint(&f).unwrap(), base);
        f.hostname = None;
        assert_eq!(fingerprint(&f).unwrap(), base);
    }

    #[test]
    fn fields_do_not_run_together() {
        // Moving bytes from one serial to the next, or a value to another field,
        // changes the fingerprint.
        let mut a = facts();
        a.board_serial = Some("ab".to_owned());
        a.product_serial = Some("c".to_owned());
        let mut b = facts();
        b.board_serial = Some("a".to_owned());
        b.product_serial = Some("bc".to_owned());
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        let mut c = facts();
        c.board_serial = Some("X".to_owned());
        c.product_serial = None;
        let mut d = facts();
        d.board_serial = None;
        d.product_serial = Some("X".to_owned());
        assert_ne!(fingerprint(&c).unwrap(), fingerprint(&d).unwrap());
    }

    #[test]
    fn normalises_like_collect() {
        let base = fingerprint(&facts()).unwrap();
        let mut f = facts();
        f.machine_id = Some(" 0123456789abcdef0123456789abcdef\n".to_owned());
        assert_eq!(fingerprint(&f).unwrap(), base);
        let mut with_placeholder = facts();
        with_placeholder.board_serial = Some("To Be Filled By O.E.M.".to_owned());
        let mut without = facts();
        without.board_serial = None;
        assert_eq!(
            fingerprint(&with_placeholder).unwrap(),
            fingerprint(&without).unwrap()
        );
    }

    #[test]
    fn missing_facts_are_an_error() {
        let none = MachineFacts {
            machine_id: None,
            product_uuid: None,
            board_serial: Some("BSN12345".to_owned()),
            product_serial: Some("PSN67890".to_owned()),
            hostname: Some("h".to_owned()),
        };
        assert_eq!(fingerprint(&none), Err(FingerprintError::NoStableFacts));
        let blank = MachineFacts {
            machine_id: Some("  \n".to_owned()),
            product_uuid: Some("00000000-0000-0000-0000-000000000000".to_owned()),
            ..none.clone()
        };
        assert_eq!(fingerprint(&blank), Err(FingerprintError::NoStableFacts));
        let uninit = MachineFacts {
            machine_id: Some("uninitialized\n".to_owned()),
            ..none
        };
        assert_eq!(fingerprint(&uninit), Err(FingerprintError::NoStableFacts));
        let msg = FingerprintError::NoStableFacts.to_string();
        assert!(msg.contains("/etc/machine-id"));
        assert!(msg.contains("/sys/class/dmi/id/product_uuid"));
        // Either stable fact alone is enough.
        let uuid_only = MachineFacts {
            machine_id: None,
            product_uuid: Some("4c4c4544-0042-3510-8051-b4c04f4e4e32".to_owned()),
            board_serial: None,
            product_serial: None,
            hostname: None,
        };
        assert!(fingerprint(&uuid_only).is_ok());
    }

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn collect_from_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, MACHINE_ID, "0123456789abcdef0123456789abcdef\n");
        write(root, PRODUCT_UUID, "4c4c4544-0042-3510-8051-b4c04f4e4e32\n");
        write(root, BOARD_SERIAL, "  BSN12345 \n");
        write(root, PRODUCT_SERIAL, "PSN67890\n");
        write(root, HOSTNAME, "alice-laptop\n");
        let got = MachineFacts::collect_from(root);
        assert_eq!(got, facts());
        assert_eq!(fingerprint(&got), fingerprint(&facts()));
    }

    #[test]
    fn collect_from_a_container_like_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // No /etc/machine-id, the D-Bus one instead; DMI absent or placeholders; an empty
        // hostname; a directory where a file should be (read error -> None).
        write(root, MACHINE_ID_DBUS, "fedcba9876543210fedcba9876543210\n");
        write(root, BOARD_SERIAL, "Default string\n");
        write(root, PRODUCT_SERIAL, "");
        write(root, HOSTNAME, "\n");
        fs::create_dir_all(root.join(PRODUCT_UUID)).unwrap();
        let got = MachineFacts::collect_from(root);
        assert_eq!(
            got,
            MachineFacts {
                machine_id: Some("fedcba9876543210fedcba9876543210".to_owned()),
                product_uuid: None,
                board_serial: None,
                product_serial: None,
                hostname: None,
            }
        );
        assert!(fingerprint(&got).is_ok());

        // An uninitialised /etc/machine-id falls back to the D-Bus one too.
        write(root, MACHINE_ID, "uninitialized\n");
        assert_eq!(
            MachineFacts::collect_from(root).machine_id.as_deref(),
            Some("fedcba9876543210fedcba9876543210")
        );
    }

    #[test]
    fn collect_from_an_empty_root() {
        let dir = tempfile::tempdir().unwrap();
        let got = MachineFacts::collect_from(dir.path());
        assert_eq!(
            got,
            MachineFacts {
                machine_id: None,
                product_uuid: None,
                board_serial: None,
                product_serial: None,
                hostname: None,
            }
        );
        assert_eq!(fingerprint(&got), Err(FingerprintError::NoStableFacts));
    }

    #[test]
    fn over_long_files_are_not_facts() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), MACHINE_ID, &"a".repeat(5000));
        assert_eq!(MachineFacts::collect_from(dir.path()).machine_id, None);
    }

    #[test]
    fn collect_on_this_machine_does_not_fail() {
        // Whatever this machine has, collecting never errors or panics.
        let _ = MachineFacts::collect();
    }

    #[test]
    fn facts_round_trip_through_json() {
        let json = serde_json::to_string(&facts()).unwrap();
        let back: MachineFacts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, facts());
    }

    #[test]
    fn a_fingerprint_is_64_hex_digits_or_refused_saying_so() {
        let ok = "AB".repeat(32);
        assert_eq!(
            DeviceFingerprint::parse(&ok).unwrap().as_str(),
            "ab".repeat(32)
        );
        let short = DeviceFingerprint::parse("abcd").unwrap_err();
        assert_eq!(
            short.to_string(),
            "a device fingerprint is 64 hex digits (SHA-256); got 4 characters"
        );
        let odd = DeviceFingerprint::parse(&"zz".repeat(32)).unwrap_err();
        assert!(
            odd.to_string().ends_with("got 64 characters, not all hex"),
            "{odd}"
        );
    }
}
