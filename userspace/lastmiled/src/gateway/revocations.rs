//! Following the API's revocations and cutting the tunnels of revoked sessions.
//!
//! No revocation may be missed while the stream is down (an API restart, a broken
//! connection, the gateway's own start): the stream resumes after the last position it
//! knows (`?since=`), which the API gives at the start of every stream. Before the first
//! stream, the position is the lowest one the API gave with an authorization: every
//! open connection was authorized after it.

use lastmile_api_client::backoff::Backoff;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lastmile_api_client::Revocations;
use lastmile_audit_sink::error_chain;
use tracing::{info, warn};

use super::Gateway;

/// The longest wait between attempts to reach the API's stream: a revocation made while
/// it was down is applied within about this long of its return.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Where the revocation stream resumes from.
#[derive(Debug, Default)]
pub(super) struct Position {
    inner: Mutex<PositionState>,
}

#[derive(Debug, Default)]
struct PositionState {
    /// The last position the stream itself gave.
    followed: Option<i64>,
    /// Before that: the lowest position given with an authorization.
    floor: Option<i64>,
}

impl Position {
    /// An authorization's position; it matters only until the stream gives one.
    pub(super) fn authorized(&self, after: Option<i64>) {
        let Some(after) = after else { return };
        if let Ok(mut p) = self.inner.lock()
            && p.followed.is_none()
        {
            p.floor = Some(p.floor.map_or(after, |f| f.min(after)));
        }
    }

    fn resume_after(&self) -> Option<i64> {
        self.inner.lock().ok().and_then(|p| p.followed.or(p.floor))
    }

    /// The stream's own position (it never goes below the `since` it was asked for).
    fn followed(&self, at: Option<i64>) {
        if let (Some(at), Ok(mut p)) = (at, self.inner.lock()) {
            p.followed = Some(at);
        }
    }
}

/// Follows the API's revocations (all sessions: the gateway's certificate sees them all)
/// and cuts the tunnels of each revoked session, and the connections of a user whose
/// access to a resource ended. Reconnects, resuming after the last position.
pub(super) async fn watch_revocations(gw: Arc<Gateway>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        let since = gw.revocations.resume_after();
        let path = match since {
            Some(s) => format!("/v1/revocations?since={s}"),
            None => "/v1/revocations".to_owned(),
        };
        match gw.api().stream_unsigned(&path).await {
            Ok(resp) if resp.status().is_success() => {
                backoff.reset();
                info!(?since, "following revocations");
                let mut events = Revocations::new(resp);
                loop {
                    let next = events.next().await;
                    gw.revocations.followed(events.position());
                    match next {
                        Ok(Some(r)) => match &r.resource {
                            // A user's access to one resource ended.
                            Some(resource) => gw.end_access(&r.user, resource, &r.reason),
                            None => gw.revoke(&r.session, &r.reason),
                        },
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %error_chain(&e), "revocation stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Ok(resp) => warn!(status = %resp.status(), "the API refused the revocation stream"),
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot reach the API for revocations; retrying")
            }
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}
