//! lastmiled's Prometheus metrics, as node (`lastmile_node_…`) and as gateway
//! (`lastmile_gateway_…`), served at `[node] metrics_listen` / `[gateway] metrics_listen`
//! (see [`lastmile_metrics`]). Both also carry their event writer's
//! (`…_events_written_total`, `…_events_dropped_total`, `…_audit_spool_events`).

use std::sync::{Arc, Weak};

use lastmile_proto::wire::ResourceKind;

use lastmile_metrics::{
    Counter, EncodeLabelSet, Family, Gauge, Registry,
    prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric as _},
        metrics::{counter::ConstCounter, gauge::ConstGauge},
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `tcp`, `postgres` or `ssh`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// What the gateway counts.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    /// Streams (connections) open now, by the resource's kind.
    pub streams_open: Family<KindLabel, Gauge>,
    /// Streams opened (authorized by the API), by kind.
    pub streams: Family<KindLabel, Counter>,
    /// Streams refused, by code.
    pub refusals: Family<CodeLabel, Counter>,
    /// Tunnels (agents' mutual-TLS connections) open now.
    pub tunnels_open: Gauge,
    /// Tunnel handshakes refused or timed out.
    pub tls_failures: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let m = Self {
            streams_open: Family::default(),
            streams: Family::default(),
            refusals: Family::default(),
            tunnels_open: Gauge::default(),
            tls_failures: Counter::default(),
        };
        // Each kind starts at 0, so rates over them are defined from the first scrape.
        for kind in [ResourceKind::Tcp, ResourceKind::Postgres, ResourceKind::Ssh] {
            let kind = KindLabel {
                kind: kind.to_string(),
            };
            let _ = m.streams.get_or_create(&kind);
            let _ = m.streams_open.get_or_create(&kind);
        }
        m
    }
}

impl GatewayMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "streams_open",
            "Connections open through this gateway, by resource kind",
            self.streams_open.clone(),
        );
        r.register(
            "streams",
            "Connections the API authorized through this gateway, by resource kind",
            self.streams.clone(),
        );
        r.register(
            "refusals",
            "Streams this gateway refused, by code",
            self.refusals.clone(),
        );
        r.register(
            "tunnels_open",
            "Agents' tunnels open now",
            self.tunnels_open.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Tunnel handshakes refused or timed out",
            self.tls_failures.clone(),
        );
    }
}

/// What the node counts; the kernel's own counters and the agents registered are read
/// at each scrape ([`NodeState`]).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// Redirected connections: `handed_over` to an agent, `no_agent` (refused in the
    /// client's protocol), `direct_dial` (no kernel record: refused).
    pub handoffs: Family<OutcomeLabel, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let handoffs = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["handed_over", "no_agent", "direct_dial"] {
            let _ = handoffs.get_or_create(&OutcomeLabel { outcome });
        }
        Self { handoffs }
    }
}

impl NodeMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "handoffs",
            "Redirected connections, by what the node did with them",
            self.handoffs.clone(),
        );
    }

    pub fn handoff(&self, outcome: &'static str) {
        self.handoffs.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// Read at each scrape: the agents registered (`lastmile_node_agents`) and the eBPF
/// programs' counters, `lastmile_node_kernel_connects_total{decision}` and the kernel's
/// drops (`…_kernel_events_dropped_total`: the ring buffer was full;
/// `…_kernel_records_dropped_total`: the pending-record map was).
#[derive(Debug)]
pub struct NodeState(pub Weak<crate::node::Shared>);

/// The names [`NodeState`] serves, under the node's `lastmile_node_` prefix (counters
/// gain `_total` in their samples).
pub const NODE_STATE_NAMES: [&str; 4] = [
    "agents",
    "kernel_connects",
    "kernel_events_dropped",
    "kernel_records_dropped",
];

impl Collector for NodeState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.0.upgrade() else {
            return Ok(());
        };
        let agents = ConstGauge::new(i64::try_from(shared.agents.count()).unwrap_or(i64::MAX));
        agents.encode(encoder.encode_descriptor(
            NODE_STATE_NAMES[0],
            "Agents registered now",
            None,
            agents.metric_type(),
        )?)?;
        let Some(c) = shared
            .interceptor
            .lock()
            .ok()
            .and_then(|i| i.counters().ok())
        else {
            return Ok(());
        };
        let connects = [
            ("redirected", c.redirected),
            ("unprotected", c.unprotected),
            ("passed_through", c.passed_through),
            ("exempt", c.exempt),
            ("refused", c.refused),
            ("other_netns", c.other_netns),
        ];
        let mut family = encoder.encode_descriptor(
            NODE_STATE_NAMES[1],
            "connect() calls the kernel programs decided, by decision",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (decision, n) in connects {
            ConstCounter::new(n).encode(family.encode_family(&[("decision", decision)])?)?;
        }
        for (name, help, n) in [
            (
                NODE_STATE_NAMES[2],
                "Kernel connect events lost because the ring buffer was full",
                c.events_dropped,
            ),
            (
                NODE_STATE_NAMES[3],
                "Redirected connections whose record could not be kept (map full)",
                c.records_dropped,
            ),
        ] {
            let counter = ConstCounter::new(n);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Serves `registry` if `listen` is set.
pub async fn serve(listen: Option<std::net::SocketAddr>, registry: Registry) -> anyhow::Result<()> {
    if let Some(addr) = listen {
        lastmile_metrics::serve(addr, Arc::new(registry)).await?;
    }
    Ok(())
}
