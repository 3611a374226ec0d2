//! The envelope of one event: what the log stores as a leaf.
//!
//! Canonical JSON (keys sorted at every level, no insignificant whitespace), so that the
//! same event always hashes the same: `{"event":{…},"received":"…","seq":N,"writer":"…"}`.
//! `seq` is the entry's position in the log; it lets the verifier name the exact entry
//! where something was dropped or reordered.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event as the writer sent it.
    pub event: Value,
    /// When the log accepted it (RFC 3339, UTC).
    pub received: String,
    /// Position in the log, from 0.
    pub seq: u64,
    /// The writer's identity.
    pub writer: String,
}

impl Envelope {
    /// The canonical bytes of this envelope.
    pub fn to_canonical(&self) -> Vec<u8> {
        // serde_json's Value keeps object keys in a BTreeMap (sorted), and the envelope's
        // own fields are declared in sorted order; to_vec writes no whitespace.
        let value = serde_json::json!({
            "event": canonicalize(&self.event),
            "received": self.received,
            "seq": self.seq,
            "writer": self.writer,
        });
        serde_json::to_vec(&value).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Re-builds `v` so every object is key-sorted (a no-op with serde_json's default map).
fn canonicalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), canonicalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(canonicalize).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_sort_keys_and_drop_whitespace() {
        let e = Envelope {
            event: serde_json::from_str(r#"{ "z": 1, "a": {"y": 2, "b": [3, {"d": 4, "c": 5}]} }"#)
                .unwrap(),
            received: "2026-11-28T00:00:00Z".into(),
            seq: 7,
            writer: "gw-1".into(),
        };
        assert_eq!(
            String::from_utf8(e.to_canonical()).unwrap(),
            r#"{"event":{"a":{"b":[3,{"c":5,"d":4}],"y":2},"z":1},"received":"2026-11-28T00:00:00Z","seq":7,"writer":"gw-1"}"#
        );
        assert_eq!(Envelope::parse(&e.to_canonical()).unwrap(), e);
    }

    /// Found by fuzzing (fuzz/corpus/audit_segment/regression-float-not-canonical): without
    /// serde_json's `float_roundtrip` feature, parsing `1.5666666666666667` (the shortest
    /// form of 47/30, as the canonical bytes write it) gives the next f64 up, so the
    /// envelope read back from its canonical bytes is another one, and its canonical bytes,
    /// hence its leaf hash, differ: `monitor` would call such an entry changed. Events carry
    /// floats (lastmile-ssh writes durations as seconds, `as_secs_f64`).
    #[test]
    fn canonical_bytes_survive_a_float() {
        let e = Envelope {
            event: serde_json::json!({ "duration": 47.0_f64 / 30.0 }),
            received: "2026-11-28T00:00:00Z".into(),
            seq: 0,
            writer: "gw-1".into(),
        };
        let canonical = String::from_utf8(e.to_canonical()).unwrap();
        let back = Envelope::parse(canonical.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(back.to_canonical()).unwrap(), canonical);
        assert_eq!(back, e);
    }
}
