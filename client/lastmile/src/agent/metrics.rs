//! The agent's Prometheus metrics (`lastmile agent --metrics-listen ADDR`), read from its
//! state at each scrape: `lastmile_agent_connections_total{outcome}` (carried, refused),
//! `lastmile_agent_api_reachable` (0 while its calls to the API fail) and
//! `lastmile_agent_session_revoked` (1 once its session is gone).

use std::sync::Weak;

use lastmile_metrics::prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::Core;

#[derive(Debug)]
pub(super) struct AgentState(pub Weak<Core>);

impl Collector for AgentState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(core) = self.0.upgrade() else {
            return Ok(());
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "lastmile_agent_connections",
            "Connections this agent carried to a gateway or that were refused",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for (outcome, n) in [
            ("carried", load(&core.carried)),
            ("refused", load(&core.refused)),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        let failing = core
            .api_health
            .lock()
            .map(|h| h.failing_since.is_some())
            .unwrap_or(false);
        for (name, help, v) in [
            (
                "lastmile_agent_api_reachable",
                "1 while this agent's calls to the API are answered",
                i64::from(!failing),
            ),
            (
                "lastmile_agent_session_revoked",
                "1 once this agent's session is revoked or expired (log in again)",
                i64::from(core.revoked().is_some()),
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
