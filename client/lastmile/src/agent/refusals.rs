//! Why a connection was not carried, in words for its user, and the last refusals kept
//! where `lastmile status` and `lastmile why` find them: `$LASTMILE_HOME/refusals.json`
//! (0600, replaced whole on each write, at most [`KEEP`] entries, oldest first).
//!
//! A raw TCP client only sees its connection closed; this file is where it learns why.

use lastmile_proto::wire::ErrorCode;
use std::path::Path;

use lastmile_tunnel::header::Refusal;
use serde::{Deserialize, Serialize};

/// The refusals file, in `$LASTMILE_HOME`.
pub const REFUSALS_FILE: &str = "refusals.json";
/// How many refusals are kept (the oldest go first).
pub const KEEP: usize = 50;

/// Why a connection could not be carried.
#[derive(Debug)]
pub(super) enum OpenError {
    /// The session is gone: log in again.
    Login(String),
    /// A gateway refused, for a reason another gateway would share.
    Refused(Refusal),
    /// A gateway was reached but could not itself reach what it needs: the API
    /// (`api_unavailable`) or the resource's server (`upstream_unreachable`).
    Unavailable { gateway: String, refusal: Refusal },
    /// No gateway could be reached.
    NoGateway(String),
    /// The resource's name (from the node's configuration, or `lastmile listen`'s
    /// argument) is not one the API could have made.
    BadName(lastmile_proto::wire::NameError),
}

/// A refusal as its user reads it: what happened, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Explained {
    pub reason: String,
    pub what_to_do: String,
    /// The gateway's or API's code, when one said no.
    pub code: Option<ErrorCode>,
}

impl Explained {
    fn new(reason: String, what_to_do: &str, code: Option<ErrorCode>) -> Self {
        Self {
            reason,
            what_to_do: what_to_do.to_owned(),
            code,
        }
    }

    /// What the client is told, in its own protocol where it has one.
    pub fn message(&self) -> String {
        format!("lastmile: {}; {}", self.reason, self.what_to_do)
    }
}

impl OpenError {
    pub(super) fn explain(&self) -> Explained {
        match self {
            Self::Login(why) => Explained::new(
                format!("your session cannot be used ({why})"),
                "run `lastmile login`, then connect again",
                None,
            ),
            Self::Refused(r) => {
                let what = match r.code {
                    ErrorCode::NoGrant => {
                        "ask your admin for a grant to this resource (`lastmile resources` lists those you have)"
                    }
                    ErrorCode::GrantExpired => {
                        "ask your admin to renew your grant to this resource"
                    }
                    ErrorCode::NoSuchResource => {
                        "check the resource's name with `lastmile resources`"
                    }
                    _ => "connect again; if it is refused again, show this to your admin",
                };
                Explained::new(
                    format!("the gateway refused this connection: {r}"),
                    what,
                    Some(r.code.clone()),
                )
            }
            Self::Unavailable { gateway, refusal } if refusal.code == ErrorCode::ApiUnavailable => {
                Explained::new(
                    format!(
                        "gateway {gateway} could not reach the API to check this connection: {}",
                        refusal.message
                    ),
                    "the API is down or cut off from the gateway: try again in a minute; if it lasts, tell your admin",
                    Some(refusal.code.clone()),
                )
            }
            Self::Unavailable { gateway, refusal } => Explained::new(
                format!(
                    "gateway {gateway} could not reach the resource's server: {}",
                    refusal.message
                ),
                "the server may be down: try again later; if it lasts, tell your admin",
                Some(refusal.code.clone()),
            ),
            Self::BadName(e) => Explained::new(
                e.to_string(),
                "use the resource's name as `lastmile resources` lists it (on a node: fix the name in its configuration)",
                Some(ErrorCode::BadName),
            ),
            Self::NoGateway(why) => Explained::new(
                format!("no gateway could be reached: {why}"),
                "check this machine's network (`lastmile status` shows each gateway); if it lasts, tell your admin",
                None,
            ),
        }
    }
}

/// One connection that was not carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRecord {
    /// When (Unix seconds).
    pub at: i64,
    pub resource: String,
    pub reason: String,
    pub what_to_do: String,
    pub code: Option<ErrorCode>,
}

/// Adds `record` to `list` (oldest first), dropping the oldest beyond `keep`.
pub(super) fn remember(list: &mut Vec<RefusalRecord>, record: RefusalRecord, keep: usize) {
    list.push(record);
    let extra = list.len().saturating_sub(keep);
    list.drain(..extra);
}

/// The refusals kept in `home`, oldest first (none when the file is missing or damaged:
/// it only ever explains, nothing depends on it).
pub fn read(home: &Path) -> Vec<RefusalRecord> {
    std::fs::read_to_string(home.join(REFUSALS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Adds `record` to the file in `home`.
pub(super) fn record(home: &Path, record: RefusalRecord) -> anyhow::Result<()> {
    let mut list = read(home);
    remember(&mut list, record, KEEP);
    crate::home::write_private(
        &home.join(REFUSALS_FILE),
        &serde_json::to_vec_pretty(&list)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: ErrorCode, message: &str) -> Refusal {
        Refusal::new(http::StatusCode::FORBIDDEN, code, message)
    }

    #[test]
    fn the_ring_keeps_the_newest() {
        let mut list = Vec::new();
        for at in 0..5 {
            let r = RefusalRecord {
                at,
                resource: "db".into(),
                reason: "no".into(),
                what_to_do: "ask".into(),
                code: None,
            };
            remember(&mut list, r, 3);
        }
        let ats: Vec<i64> = list.iter().map(|r| r.at).collect();
        assert_eq!(ats, [2, 3, 4]);
    }

    #[test]
    fn a_gateway_without_the_api_is_not_called_unreachable() {
        let e = OpenError::Unavailable {
            gateway: "gw1".into(),
            refusal: refusal(
                ErrorCode::ApiUnavailable,
                "the gateway cannot reach the API to check this connection, so it is refused: connection refused",
            ),
        };
        let x = e.explain();
        assert!(
            x.reason
                .starts_with("gateway gw1 could not reach the API to check this connection"),
            "{x:?}"
        );
        assert!(
            !x.message().contains("no gateway could be reached"),
            "{x:?}"
        );
        assert_eq!(x.code, Some(ErrorCode::ApiUnavailable));
        let e = OpenError::Unavailable {
            gateway: "gw1".into(),
            refusal: refusal(
                ErrorCode::UpstreamUnreachable,
                "cannot reach 127.0.0.2:5432 for `db`",
            ),
        };
        assert!(
            e.explain()
                .reason
                .contains("could not reach the resource's server: cannot reach 127.0.0.2:5432"),
        );
    }

    #[test]
    fn each_refusal_says_what_to_do() {
        let x = OpenError::Refused(refusal(
            ErrorCode::NoGrant,
            "user `alice` has no grant for `db`",
        ))
        .explain();
        assert_eq!(
            x.message(),
            "lastmile: the gateway refused this connection: user `alice` has no grant for `db` (no_grant); \
             ask your admin for a grant to this resource (`lastmile resources` lists those you have)"
        );
        let x = OpenError::Login("session revoked: left".into()).explain();
        assert!(x.what_to_do.contains("lastmile login"), "{x:?}");
        let x = OpenError::NoGateway("gw1: cannot connect".into()).explain();
        assert!(
            x.reason.starts_with("no gateway could be reached: gw1"),
            "{x:?}"
        );
        assert!(x.what_to_do.contains("network"), "{x:?}");
    }
}
