//! Which gateway carries a new connection: those with a live tunnel first, then the
//! others, and a gateway that failed is skipped for a growing while (backoff). What
//! `lastmile status` shows of each, with when it was last seen so.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::{GatewayEndpoint, GatewayName, ResourceName};
use lastmile_tunnel::{ConnectError, client::Tunnel, header::StreamHeader};
use tracing::{debug, info, warn};

use super::{
    Core, GatewayState, LIST_RETRY, OpenError,
    backoff::{self, Backoff},
};

/// How often the agent checks the gateways without a live tunnel (by making one).
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(5);

/// A gateway that failed, and until when it is skipped.
#[derive(Debug, Clone)]
struct Down {
    until: Instant,
    backoff: Backoff,
    error: String,
}

/// The gateways the API lists and which of them failed lately: the choice of gateway,
/// without sockets or clocks (the time is always a parameter).
#[derive(Debug)]
pub(super) struct Gateways {
    list: Vec<GatewayEndpoint>,
    down: HashMap<String, Down>,
    /// When each gateway's state was last seen to hold (Unix seconds).
    checked: HashMap<String, i64>,
    /// This session's id: it orders gateways of the same rank, so that agents spread
    /// over gateways instead of all choosing the first by name.
    spread: String,
}

impl Gateways {
    pub(super) fn new(session: String) -> Self {
        Self {
            list: Vec::new(),
            down: HashMap::new(),
            checked: HashMap::new(),
            spread: session,
        }
    }

    /// The API's list replaces the one held; what failed lately is still remembered.
    pub(super) fn set_list(&mut self, list: Vec<GatewayEndpoint>) {
        self.list = list;
    }

    /// The gateways to try, best first: those with a live tunnel (`live`), then the
    /// others not backing off at `now`, then (if nothing else is left) those backing off.
    pub(super) fn rank(&self, now: Instant, live: impl Fn(&str) -> bool) -> Vec<GatewayEndpoint> {
        let rank = |g: &GatewayEndpoint| {
            if live(&g.name) {
                0
            } else if self.down.get(&g.name).is_some_and(|d| d.until > now) {
                2
            } else {
                1
            }
        };
        let spread = |g: &GatewayEndpoint| {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&self.spread, &g.name).hash(&mut h);
            h.finish()
        };
        let mut all = self.list.clone();
        all.sort_by_key(|g| (rank(g), spread(g)));
        all
    }

    /// `gateway` failed at `now` (`wall`, in Unix seconds): it is skipped for twice as
    /// long as the last time (up to backoff::MAX), backoff::FIRST after a success.
    /// Returns how long, and whether it was down already.
    pub(super) fn mark_down(
        &mut self,
        gateway: &str,
        error: String,
        now: Instant,
        wall: i64,
    ) -> (Duration, bool) {
        let was_down = self.down.contains_key(gateway);
        self.checked.insert(gateway.to_owned(), wall);
        let mut backoff = self
            .down
            .get(gateway)
            .map_or_else(backoff::backoff, |d| d.backoff);
        let wait = backoff.failed();
        self.down.insert(
            gateway.to_owned(),
            Down {
                until: now + wait,
                backoff,
                error,
            },
        );
        (wait, was_down)
    }

    /// `gateway` took a tunnel, or its tunnel is still live, at `wall` (Unix seconds):
    /// its backoff starts over.
    pub(super) fn mark_up(&mut self, gateway: &str, wall: i64) {
        self.down.remove(gateway);
        self.checked.insert(gateway.to_owned(), wall);
    }

    /// The listed gateways without a live tunnel: those a probe round tries.
    pub(super) fn to_probe(&self, live: impl Fn(&str) -> bool) -> Vec<GatewayEndpoint> {
        self.list
            .iter()
            .filter(|g| !live(&g.name))
            .cloned()
            .collect()
    }

    /// Every gateway gets a fresh chance (a fresh list came).
    pub(super) fn forgive(&mut self) {
        self.down.clear();
    }

    /// What `lastmile status` shows of each gateway: `up` with a live tunnel, `down`
    /// with the last failure's error until it takes a tunnel again, else `idle`.
    pub(super) fn states(&self, live: impl Fn(&str) -> bool) -> Vec<GatewayState> {
        self.list
            .iter()
            .map(|g| {
                let (state, error) = match self.down.get(&g.name) {
                    _ if live(&g.name) => ("up", None),
                    Some(d) => ("down", Some(d.error.clone())),
                    None => ("idle", None),
                };
                GatewayState {
                    name: g.name.clone(),
                    tunnel: g.tunnel.clone(),
                    state: state.into(),
                    error,
                    checked_at: self.checked.get(&g.name).copied(),
                }
            })
            .collect()
    }
}

impl Core {
    /// The gateways to try, best first (see [`Gateways::rank`]).
    async fn candidates(&self) -> Vec<GatewayEndpoint> {
        let live = self.live_tunnels().await;
        let now = Instant::now();
        self.gateways
            .lock()
            .map(|g| g.rank(now, |name| live.contains(name)))
            .unwrap_or_default()
    }

    /// The gateways with an open tunnel.
    pub(super) async fn live_tunnels(&self) -> HashSet<String> {
        self.tunnels
            .lock()
            .await
            .iter()
            .filter(|(_, t)| t.is_open())
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(super) fn mark_down(&self, gateway: &str, error: String) {
        if let Ok(mut g) = self.gateways.lock() {
            let shown = error.clone();
            let (backoff, was_down) =
                g.mark_down(gateway, error, Instant::now(), lastmile_api_client::now());
            let backoff_ms = backoff.as_millis() as u64;
            // A probe finding it still down is not news.
            if was_down {
                debug!(gateway, error = %shown, backoff_ms, "gateway still down");
            } else {
                warn!(gateway, error = %shown, backoff_ms, "gateway down");
            }
            self.changed();
        }
    }

    pub(super) async fn tunnel(&self, g: &GatewayEndpoint) -> Result<Arc<Tunnel>, ConnectError> {
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
        if let Ok(mut gateways) = self.gateways.lock() {
            gateways.mark_up(&g.name, lastmile_api_client::now());
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
                if let Ok(mut g) = self.gateways.lock() {
                    g.forgive();
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
        let resource = ResourceName::parse(resource).map_err(OpenError::BadName)?;
        let candidates = self.candidates().await;
        if candidates.is_empty() {
            return Err(OpenError::NoGateway(
                "the API lists no gateway (none enrolled and running?)".into(),
            ));
        }
        let mut errors = Vec::new();
        // A gateway that was reached but could not reach the API or the resource's
        // server: what the user is told when no other gateway carries the connection.
        let mut unavailable = None;
        for g in candidates {
            let Ok(gateway) = GatewayName::parse(g.name.as_str()) else {
                errors.push(format!("{}: not a gateway name", g.name));
                continue;
            };
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
                .authorize(&resource, &gateway, connection)
                .map_err(|e| OpenError::NoGateway(e.to_string()))?;
            let header = StreamHeader {
                resource: resource.clone(),
                authorization,
                signature,
            };
            match tunnel.open(&header).await {
                Ok((send, recv)) => return Ok((send, recv, g.name)),
                Err(ConnectError::Refused(r)) if r.needs_login() => {
                    self.set_revoked(r.to_string()).await;
                    return Err(OpenError::Login(r.to_string()));
                }
                Err(ConnectError::Refused(r)) if r.code.is_unavailable() => {
                    errors.push(format!("{}: {r}", g.name));
                    unavailable.get_or_insert(OpenError::Unavailable {
                        gateway: g.name.clone(),
                        refusal: r,
                    });
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
        Err(unavailable.unwrap_or_else(|| OpenError::NoGateway(errors.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gateways(session: &str, names: &[&str]) -> Gateways {
        let mut g = Gateways::new(session.to_owned());
        g.set_list(
            names
                .iter()
                .map(|n| GatewayEndpoint {
                    name: (*n).to_owned(),
                    tunnel: format!("{n}.example:7443"),
                })
                .collect(),
        );
        g
    }

    fn names(ranked: &[GatewayEndpoint]) -> Vec<&str> {
        ranked.iter().map(|g| g.name.as_str()).collect()
    }

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn a_gateway_marked_down_is_ranked_last_until_its_backoff_expires() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a", "b", "c"]);
        let healthy = names(&g.rank(now, none)).join(",");
        let first = g.rank(now, none)[0].name.clone();
        g.mark_down(&first, "refused".into(), now, 0);
        for at in [now, now + Duration::from_millis(499)] {
            let ranked = g.rank(at, none);
            assert_eq!(
                ranked.len(),
                3,
                "a gateway backing off is still a last resort"
            );
            assert_eq!(ranked[2].name, first);
        }
        assert_eq!(
            names(&g.rank(now + backoff::FIRST, none)).join(","),
            healthy,
            "once its backoff is over it takes its place again"
        );
    }

    #[test]
    fn backoff_doubles_with_each_failure_up_to_the_cap() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a"]);
        let waits: Vec<u64> = (0..9)
            .map(|_| g.mark_down("a", "down".into(), now, 0).0.as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn a_success_starts_the_backoff_over() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a", "b"]);
        let first = g.rank(now, none)[0].name.clone();
        g.mark_down(&first, "down".into(), now, 0);
        g.mark_down(&first, "down".into(), now, 0);
        g.mark_up(&first, 1);
        assert_eq!(
            g.rank(now, none)[0].name,
            first,
            "a gateway that came up is not skipped"
        );
        assert_eq!(g.mark_down(&first, "down".into(), now, 2).0, backoff::FIRST);
    }

    #[test]
    fn a_fresh_list_forgives_every_gateway() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a", "b"]);
        let healthy = names(&g.rank(now, none)).join(",");
        for n in ["a", "b"] {
            g.mark_down(n, "down".into(), now, 0);
            g.mark_down(n, "down".into(), now, 0);
        }
        g.forgive();
        assert_eq!(names(&g.rank(now, none)).join(","), healthy);
        assert_eq!(g.mark_down("a", "down".into(), now, 0).0, backoff::FIRST);
    }

    #[test]
    fn live_tunnels_come_first_then_healthy_then_backing_off() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a", "b", "c", "d"]);
        g.mark_down("c", "down".into(), now, 0);
        // A live tunnel wins even over a failure noted before it came up.
        g.mark_down("d", "down".into(), now, 0);
        let ranked = g.rank(now, |n| n == "b" || n == "d");
        let ranked = names(&ranked);
        let (live, rest) = ranked.split_at(2);
        let mut live = live.to_vec();
        live.sort_unstable();
        assert_eq!(live, ["b", "d"]);
        assert_eq!(rest, ["a", "c"]);
    }

    #[test]
    fn healthy_gateways_are_ordered_by_session_so_agents_spread() {
        let now = Instant::now();
        let list = ["a", "b", "c"];
        let one = names(&gateways("s1", &list).rank(now, none)).join(",");
        let reversed = names(&gateways("s1", &["c", "b", "a"]).rank(now, none)).join(",");
        assert_eq!(one, reversed, "the order is the session's, not the API's");
        let firsts: HashSet<String> = (0..32)
            .map(|i| {
                gateways(&format!("session-{i}"), &list).rank(now, none)[0]
                    .name
                    .clone()
            })
            .collect();
        assert!(
            firsts.len() > 1,
            "every session chose the same gateway first"
        );
    }

    #[test]
    fn status_shows_up_down_with_its_error_and_idle_with_when_each_was_seen() {
        let now = Instant::now();
        let mut g = gateways("s1", &["a", "b", "c"]);
        g.mark_up("a", 100);
        g.mark_down("b", "connection refused".into(), now, 105);
        let s = |x: &str| x.to_owned();
        let shown = |g: &Gateways| {
            g.states(|n| n == "a")
                .into_iter()
                .map(|s| (s.name, s.state, s.error, s.checked_at))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&g),
            [
                (s("a"), s("up"), None, Some(100)),
                (s("b"), s("down"), Some(s("connection refused")), Some(105)),
                (s("c"), s("idle"), None, None),
            ]
        );
        // Down until it takes a tunnel, whatever its backoff; a probe that fails again
        // moves its time and says it was down already.
        let (_, was_down) = g.mark_down("b", "timed out".into(), now + backoff::MAX, 140);
        assert!(was_down);
        assert_eq!(
            shown(&g)[1],
            (s("b"), s("down"), Some(s("timed out")), Some(140))
        );
        g.mark_up("b", 145);
        assert_eq!(shown(&g)[1], (s("b"), s("idle"), None, Some(145)));
    }

    #[test]
    fn a_probe_round_tries_the_gateways_without_a_live_tunnel() {
        let g = gateways("s1", &["a", "b", "c"]);
        let probed = g.to_probe(|n| n == "b");
        assert_eq!(names(&probed), ["a", "c"]);
    }
}
