//! What the agent tells `lastmile status`: `$LASTMILE_HOME/agent.json`, rewritten (0600,
//! atomically) whenever something shown changes, and at least every probe round. Times
//! are Unix seconds here; `status` prints them as RFC 3339.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub pid: u32,
    pub session: String,
    pub node: String,
    pub gateways: Vec<GatewayState>,
    /// Why the session can no longer be used, when it cannot.
    pub revoked: Option<String>,
    /// Connections carried through a gateway.
    #[serde(default)]
    pub carried: u64,
    /// Connections refused (each is in `refusals.json` with its reason).
    #[serde(default)]
    pub refused: u64,
    #[serde(default)]
    pub api: ApiHealth,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayState {
    pub name: String,
    pub tunnel: String,
    /// `up` (a live tunnel), `down` (the last attempt failed, `error` says how) or `idle`
    /// (not tried yet).
    pub state: String,
    pub error: Option<String>,
    /// When this state was last seen to hold (Unix seconds): a probe, a tunnel made, a
    /// failure; none while idle.
    #[serde(default)]
    pub checked_at: Option<i64>,
}

/// Whether the agent reaches the API: its last success, and since when it fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiHealth {
    /// The last call the API answered (Unix seconds).
    pub reached_at: Option<i64>,
    /// The first failure after the last success, while it lasts.
    pub failing_since: Option<i64>,
    /// The latest failure's cause, while it lasts.
    pub error: Option<String>,
}

impl ApiHealth {
    /// The API answered at `at` (a refusal is an answer too). Whether anything changed
    /// beyond the time.
    pub fn reached(&mut self, at: i64) -> bool {
        let was_failing = self.failing_since.is_some();
        self.reached_at = Some(at);
        self.failing_since = None;
        self.error = None;
        was_failing
    }

    /// A call failed at `at` without an answer. Whether this is news (the first failure
    /// or another cause).
    pub fn failed(&mut self, at: i64, error: String) -> bool {
        let news = self.error.as_deref() != Some(error.as_str());
        self.failing_since.get_or_insert(at);
        self.error = Some(error);
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_health_keeps_the_first_failure_until_a_success() {
        let mut h = ApiHealth::default();
        assert!(h.failed(10, "connection refused".into()));
        assert!(!h.failed(20, "connection refused".into()));
        assert!(h.failed(30, "timed out".into()));
        assert_eq!(h.failing_since, Some(10));
        assert_eq!(h.error.as_deref(), Some("timed out"));
        assert!(h.reached(40));
        assert_eq!(
            h,
            ApiHealth {
                reached_at: Some(40),
                failing_since: None,
                error: None
            }
        );
        assert!(!h.reached(50));
        h.failed(60, "connection refused".into());
        assert_eq!(
            (h.reached_at, h.failing_since),
            (Some(50), Some(60)),
            "a new outage starts after the last success"
        );
    }
}
