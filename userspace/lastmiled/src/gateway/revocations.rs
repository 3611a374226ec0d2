//! Following the API's revocations and cutting the tunnels of revoked sessions.

use std::{sync::Arc, time::Duration};

use lastmile_api_client::Revocations;
use tracing::warn;

use super::Gateway;

/// Follows the API's revocations (all sessions: the gateway's certificate sees them all)
/// and cuts the tunnels of each revoked session, and the connections of a user whose
/// access to a resource ended. Reconnects, resuming after the last seen.
pub(super) async fn watch_revocations(gw: Arc<Gateway>) {
    let mut since: Option<i64> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let path = match since {
            Some(s) => format!("/v1/revocations?since={s}"),
            None => "/v1/revocations".to_owned(),
        };
        match gw.api().stream_unsigned(&path).await {
            Ok(resp) if resp.status().is_success() => {
                backoff = Duration::from_millis(200);
                let mut events = Revocations::new(resp);
                loop {
                    match events.next().await {
                        Ok(Some(r)) => {
                            since = Some(r.seq);
                            match &r.resource {
                                // A user's access to one resource ended.
                                Some(resource) => gw.end_access(&r.user, resource, &r.reason),
                                None => gw.revoke(&r.session, &r.reason),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e, "revocation stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Ok(resp) => warn!(status = %resp.status(), "the API refused the revocation stream"),
            Err(e) => warn!(error = %e, "cannot reach the API for revocations; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
