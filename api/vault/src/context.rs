//! The encryption context: named strings a wrap is bound to.

use std::collections::{BTreeMap, HashMap};

/// An encryption context. AWS KMS binds it to a ciphertext itself; for the local KMS and
/// for sealing secrets we bind [`Context::aad`], an unambiguous encoding of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Context(BTreeMap<String, String>);

impl Context {
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The context of a credential: which organisation, resource and version it is.
    pub fn credential(organisation: &str, resource: &str, version: i64) -> Self {
        let v = version.to_string();
        Self::new([
            ("lastmile:org", organisation),
            ("lastmile:resource", resource),
            ("lastmile:version", v.as_str()),
        ])
    }

    /// Associated data: a domain tag, then each pair in key order as u32 big-endian length
    /// and bytes, key then value. Lengths make it unambiguous: no two contexts encode the
    /// same.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let mut put = |b: &[u8]| {
            out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(b);
        };
        put(b"lastmile-kms-context-v1");
        for (k, v) in &self.0 {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        out
    }

    pub fn to_map(&self) -> HashMap<String, String> {
        self.0.clone().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_unambiguous_and_order_free() {
        assert_ne!(
            Context::new([("ab", "c")]).aad(),
            Context::new([("a", "bc")]).aad()
        );
        assert_eq!(
            Context::new([("a", "1"), ("b", "2")]).aad(),
            Context::new([("b", "2"), ("a", "1")]).aad()
        );
        assert_ne!(
            Context::credential("o", "r", 1).aad(),
            Context::credential("o", "r", 2).aad()
        );
    }
}
