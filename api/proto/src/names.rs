//! The names and ids that travel together and must not be confused: a session, a device
//! and a user are all strings on the wire, and an authorization carries four of them
//! side by side. Each has its own type, so that passing a device where a session belongs
//! is a compile error.
//!
//! Names ([`UserName`], [`ResourceName`], [`GatewayName`]) are checked by
//! [`crate::wire::valid_name`] whenever they are made from text, including when a peer's
//! JSON is read; ids ([`SessionId`], [`DeviceId`], [`ConnectionId`]) are chosen by the
//! API and opaque to everyone else.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A name that [`crate::wire::valid_name`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not a valid {what} name: use 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
)]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
}

/// What names and ids share: read as text, compared with text, printed as text.
macro_rules! text {
    ($ty:ident) => {
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

macro_rules! name {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// `name`, if [`crate::wire::valid_name`] accepts it.
            pub fn parse(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                if crate::wire::valid_name(&name) {
                    Ok(Self(name))
                } else {
                    Err(NameError { what: $what, name })
                }
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::parse(name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        text!($ty);
    };
}

macro_rules! id {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $ty {
            /// An id as the API chose it (read back from its database or a peer's JSON).
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $ty {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        text!($ty);
    };
}

name!(
    /// A user's name (`alice`).
    UserName,
    "user"
);
name!(
    /// A resource's name (`orders-db`).
    ResourceName,
    "resource"
);
name!(
    /// A gateway's name (`gw-1`), as its certificate names it.
    GatewayName,
    "gateway"
);
id!(
    /// A login session (`ses_…`).
    SessionId
);
id!(
    /// An enrolled device (`dev_…`).
    DeviceId
);
id!(
    /// The API's id for one connection (`conn_…`), chosen when it authorizes it; every
    /// event about the connection carries it as `connection`.
    ConnectionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_checked_when_read_from_json() {
        let ok: ResourceName = serde_json::from_str("\"orders-db\"").unwrap();
        assert_eq!(ok, "orders-db");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"orders-db\"");
        let e = serde_json::from_str::<ResourceName>("\"Orders DB\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("`Orders DB` is not a valid resource name"),
            "{e}"
        );
        assert!(UserName::parse("").is_err());
        assert!(GatewayName::parse("gw-1").is_ok());
    }

    #[test]
    fn an_id_is_opaque_text() {
        let s: SessionId = serde_json::from_str("\"ses_x\"").unwrap();
        assert_eq!(s.as_str(), "ses_x");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"ses_x\"");
    }
}
