//! Keeps each gateway's state fresh while the agent runs, not only after a connection
//! failed: every PROBE_EVERY, a gateway without a live tunnel is tried (TCP, TLS and the
//! tunnel's HTTP/2 preface; a tunnel made is kept for the next connection, so a gateway
//! that is up costs nothing more until its tunnel ends), and the state is written.

use std::sync::Arc;

use lastmile_audit_sink::error_chain;

use super::{Core, gateways::PROBE_EVERY};

impl Core {
    pub(super) async fn probe_gateways(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if self.revoked().is_some() {
                continue;
            }
            let live = self.live_tunnels().await;
            let wall = lastmile_api_client::now();
            let to_probe = match self.gateways.lock() {
                Ok(mut g) => {
                    for name in &live {
                        g.mark_up(name, wall);
                    }
                    g.to_probe(|name| live.contains(name))
                }
                Err(_) => Vec::new(),
            };
            for g in to_probe {
                if let Err(e) = self.tunnel(&g).await {
                    self.mark_down(&g.name, error_chain(&e));
                }
            }
            self.save_state().await;
        }
    }
}
