//! Which gateway carries a new connection: those with a live tunnel first, then the
//! others, and a gateway that failed is skipped for a growing while (backoff).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::GatewayEndpoint;
use lastmile_tunnel::{ConnectError, client::Tunnel, header::StreamHeader};
use tracing::{info, warn};

use super::{Core, LIST_RETRY, OpenError};

/// A gateway that failed, and until when it is skipped.
#[derive(Debug, Clone)]
pub(super) struct Down {
    pub(super) until: Instant,
    backoff: Duration,
    pub(super) error: String,
}

pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Core {
    /// The gateways to try, best first: those with a live tunnel, then the others not
    /// backing off, then (if nothing else is left) those backing off.
    async fn candidates(&self) -> Vec<GatewayEndpoint> {
        let all = self.gateways.read().map(|g| g.clone()).unwrap_or_default();
        let tunnels = self.tunnels.lock().await;
        let now = Instant::now();
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        let rank = |g: &GatewayEndpoint| {
            if tunnels.get(&g.name).is_some_and(|t| t.is_open()) {
                0
            } else if down.get(&g.name).is_some_and(|d| d.until > now) {
                2
            } else {
                1
            }
        };
        // Within a rank, an order of this session's own, so agents spread over gateways
        // instead of all choosing the first by name.
        let session = self.session().login.session;
        let spread = |g: &GatewayEndpoint| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&session, &g.name).hash(&mut h);
            h.finish()
        };
        let mut all = all;
        all.sort_by_key(|g| (rank(g), spread(g)));
        all
    }

    fn mark_down(&self, gateway: &str, error: String) {
        if let Ok(mut d) = self.down.lock() {
            let backoff = d
                .get(gateway)
                .map(|x| (x.backoff * 2).min(MAX_BACKOFF))
                .unwrap_or(FIRST_BACKOFF);
            warn!(gateway, %error, backoff_ms = backoff.as_millis() as u64, "gateway down");
            self.changed();
            d.insert(
                gateway.to_owned(),
                Down {
                    until: Instant::now() + backoff,
                    backoff,
                    error,
                },
            );
        }
    }

    async fn tunnel(&self, g: &GatewayEndpoint) -> Result<Arc<Tunnel>, ConnectError> {
        if let Some(t) = self.tunnels.lock().await.get(&g.name)
            && t.is_open()
        {
            return Ok(t.clone());
        }
        let tls = self
            .tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let t = Arc::new(Tunnel::connect(tls, &g.name, &g.tunnel).await?);
        info!(gateway = %g.name, tunnel = %g.tunnel, "tunnel up");
        if let Ok(mut d) = self.down.lock() {
            d.remove(&g.name);
        }
        self.tunnels.lock().await.insert(g.name.clone(), t.clone());
        self.changed();
        Ok(t)
    }

    /// Opens a stream to `resource` through the first gateway that takes it. When none
    /// does, the gateway list may be stale (a gateway moved, a new one came): fetch it again
    /// (at most every LIST_RETRY) and try once more.
    pub(super) async fn open(
        &self,
        resource: &str,
        connection: &str,
    ) -> Result<(h2::SendStream<Bytes>, h2::RecvStream, String), OpenError> {
        match self.try_gateways(resource, connection).await {
            Err(OpenError::NoGateway(why)) => {
                let due = self
                    .listed_at
                    .lock()
                    .map(|mut at| {
                        let due = at.elapsed() >= LIST_RETRY;
                        if due {
                            *at = Instant::now();
                        }
                        due
                    })
                    .unwrap_or(false);
                if !due {
                    return Err(OpenError::NoGateway(why));
                }
                info!("no gateway took the connection; fetching the gateway list again");
                if let Err(e) = self.refresh_lists().await {
                    return Err(OpenError::NoGateway(format!("{why}; and the API: {e:#}")));
                }
                // The fresh list's gateways get a fresh chance.
                if let Ok(mut d) = self.down.lock() {
                    d.clear();
                }
                self.try_gateways(resource, connection).await
            }
            other => other,
        }
    }

    async fn try_gateways(
        &self,
        resource: &str,
        connection: &str,
    ) -> Result<(h2::SendStream<Bytes>, h2::RecvStream, String), OpenError> {
        if let Some(why) = self.revoked() {
            return Err(OpenError::Login(why));
        }
        let candidates = self.candidates().await;
        if candidates.is_empty() {
            return Err(OpenError::NoGateway(
                "the API lists no gateway (none enrolled and running?)".into(),
            ));
        }
        let mut errors = Vec::new();
        for g in candidates {
            let tunnel = match self.tunnel(&g).await {
                Ok(t) => t,
                Err(e) => {
                    let why = error_chain(&e);
                    errors.push(format!("{}: {why}", g.name));
                    self.mark_down(&g.name, why);
                    continue;
                }
            };
            let (authorization, signature) = self
                .session()
                .authorize(resource, &g.name, connection)
                .map_err(|e| OpenError::NoGateway(e.to_string()))?;
            let header = StreamHeader {
                resource: resource.to_owned(),
                authorization,
                signature,
            };
            match tunnel.open(&header).await {
                Ok((send, recv)) => return Ok((send, recv, g.name)),
                Err(ConnectError::Refused(r)) if r.needs_login() => {
                    self.set_revoked(r.to_string()).await;
                    return Err(OpenError::Login(r.to_string()));
                }
                Err(ConnectError::Refused(r))
                    if matches!(r.code.as_str(), "api_unavailable" | "upstream_unreachable") =>
                {
                    errors.push(format!("{}: {r}", g.name));
                }
                Err(ConnectError::Refused(r)) => return Err(OpenError::Refused(r)),
                Err(e) => {
                    self.tunnels.lock().await.remove(&g.name);
                    let why = error_chain(&e);
                    errors.push(format!("{}: {why}", g.name));
                    self.mark_down(&g.name, why);
                }
            }
        }
        Err(OpenError::NoGateway(errors.join("; ")))
    }
}
