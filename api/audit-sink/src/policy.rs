//! Which events, and how much of each, a component keeps.

use std::collections::BTreeSet;

use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

/// How much of a query's text an event keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryText {
    /// The text as sent.
    #[default]
    Full,
    /// HMAC-SHA256 of the text under the policy's key: equal queries can be matched
    /// across events without the text, and the key keeps it from being guessed.
    KeyedHash,
    /// Nothing of the text.
    Drop,
}

/// A component's logging policy (its `[audit]` configuration, less destinations).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Kinds to keep; empty keeps every kind.
    pub kinds: BTreeSet<String>,
    /// Kinds this component must always record, whatever `kinds` says (the API's
    /// `credential.decrypt` and `connection.open`: an unlock must never go unrecorded).
    /// A `kinds` list that leaves one out is refused by [`Policy::validate`].
    pub always_kept: &'static [&'static str],
    pub query_text: QueryText,
    /// Key for [`QueryText::KeyedHash`].
    pub query_key: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("query_text = \"keyed_hash\" needs a query key (at least 16 bytes)")]
    MissingKey,
    #[error("an audit event must be a JSON object with a string \"kind\"")]
    NotAnEvent,
    #[error(
        "`kinds` leaves out \"{0}\", which this component always records (it cannot be \
         filtered out): add \"{0}\" to `kinds`, or leave `kinds` empty to keep every kind"
    )]
    CannotFilterOut(&'static str),
}

impl Policy {
    /// Checks the policy can be applied.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !self.kinds.is_empty()
            && let Some(kind) = self.always_kept.iter().find(|k| !self.kinds.contains(**k))
        {
            return Err(PolicyError::CannotFilterOut(kind));
        }
        match (&self.query_text, &self.query_key) {
            (QueryText::KeyedHash, None) => Err(PolicyError::MissingKey),
            (QueryText::KeyedHash, Some(k)) if k.len() < 16 => Err(PolicyError::MissingKey),
            _ => Ok(()),
        }
    }

    /// Applies the policy: `None` when the event's kind is not kept, else the event with
    /// its `query` field kept, hashed into `query_hmac`, or removed.
    pub fn apply(&self, mut event: Value) -> Result<Option<Value>, PolicyError> {
        let kind = event
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(PolicyError::NotAnEvent)?;
        if !self.kinds.is_empty() && !self.kinds.contains(kind) && !self.always_kept.contains(&kind)
        {
            return Ok(None);
        }
        let object = event.as_object_mut().ok_or(PolicyError::NotAnEvent)?;
        match self.query_text {
            QueryText::Full => {}
            QueryText::Drop => {
                object.remove("query");
            }
            QueryText::KeyedHash => {
                if let Some(text) = object.remove("query") {
                    let key = self.query_key.as_deref().ok_or(PolicyError::MissingKey)?;
                    let mut mac =
                        Hmac::<Sha256>::new_from_slice(key).map_err(|_| PolicyError::MissingKey)?;
                    mac.update(text.as_str().unwrap_or_default().as_bytes());
                    let digest = mac.finalize().into_bytes();
                    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                    object.insert("query_hmac".into(), Value::String(hex));
                }
            }
        }
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query() -> Value {
        json!({"v": 1, "kind": "query", "session": "s1", "query": "select * from orders"})
    }

    #[test]
    fn kinds_not_listed_are_dropped() {
        let p = Policy {
            kinds: ["login".to_string()].into(),
            ..Policy::default()
        };
        assert_eq!(p.apply(query()).unwrap(), None);
        assert!(p.apply(json!({"kind": "login"})).unwrap().is_some());
        assert_eq!(Policy::default().apply(query()).unwrap(), Some(query()));
    }

    #[test]
    fn kinds_always_kept_cannot_be_filtered_out() {
        let p = Policy {
            kinds: ["login".to_string()].into(),
            always_kept: &["credential.decrypt", "connection.open"],
            ..Policy::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(e, PolicyError::CannotFilterOut("credential.decrypt"));
        assert!(
            e.to_string()
                .contains("add \"credential.decrypt\" to `kinds`")
        );
        // Listing them, or listing nothing, is fine.
        let listed = Policy {
            kinds: ["login", "credential.decrypt", "connection.open"]
                .map(String::from)
                .into(),
            ..p.clone()
        };
        listed.validate().unwrap();
        Policy {
            kinds: BTreeSet::new(),
            ..p.clone()
        }
        .validate()
        .unwrap();
        // And they are kept even by a policy that skipped validation.
        assert!(
            p.apply(json!({"kind": "connection.open"}))
                .unwrap()
                .is_some()
        );
        assert_eq!(p.apply(query()).unwrap(), None);
    }

    #[test]
    fn query_text_is_kept_hashed_or_dropped() {
        let drop = Policy {
            query_text: QueryText::Drop,
            ..Policy::default()
        };
        assert!(drop.apply(query()).unwrap().unwrap().get("query").is_none());

        let key = Some(b"0123456789abcdef0123456789abcdef".to_vec());
        let hashed = Policy {
            query_text: QueryText::KeyedHash,
            query_key: key.clone(),
            ..Policy::default()
        };
        let a = hashed.apply(query()).unwrap().unwrap();
        assert!(a.get("query").is_none());
        let h = a["query_hmac"].as_str().unwrap();
        assert_eq!(h.len(), 64);
        // Same text, same key: same hash; another key: another hash.
        assert_eq!(hashed.apply(query()).unwrap().unwrap()["query_hmac"], h);
        let other = Policy {
            query_key: Some(b"another key, 16+ bytes".to_vec()),
            ..hashed.clone()
        };
        assert_ne!(other.apply(query()).unwrap().unwrap()["query_hmac"], h);
    }

    #[test]
    fn a_keyed_hash_without_a_key_is_refused() {
        let p = Policy {
            query_text: QueryText::KeyedHash,
            ..Policy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::MissingKey));
        assert_eq!(
            Policy::default().apply(json!([1])),
            Err(PolicyError::NotAnEvent)
        );
    }
}
