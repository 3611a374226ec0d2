//! Prometheus metrics for lastmile's services.
//!
//! Each service (the API, the audit service, lastmiled as node and as gateway, the agent)
//! owns a [`Registry`] of its own metric families, registered at start, and serves it at
//! `GET /metrics` on a local address from its configuration ([`serve`]); nothing is
//! served unless an address is configured. Names are `lastmile_<service>_…`; the alert
//! rules in `deploy/prometheus/` use them and a test checks them with `promtool`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, http::header::CONTENT_TYPE, response::IntoResponse, routing::get};
pub use prometheus_client::{
    self,
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets for latencies in seconds: 0.5 ms doubling to about 16 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// A histogram of latencies in seconds, with [`latency_buckets`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: is another process using it? (`metrics_listen` in the config)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The OpenMetrics text of `registry`.
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Serves `registry` at `GET /metrics` on `addr` (inside a tokio runtime) and returns the
/// address bound (`:0` picks a port). The server runs until the process ends.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> Result<SocketAddr, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = render(&registry);
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics at /metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Outcome {
        outcome: &'static str,
    }

    #[tokio::test]
    async fn a_registry_is_served_as_openmetrics_text() {
        let mut registry = Registry::default();
        let family = Family::<Outcome, Counter>::default();
        registry.register("lastmile_test_things", "Things, by outcome", family.clone());
        let latency = latency_histogram();
        registry.register(
            "lastmile_test_latency_seconds",
            "How long things took",
            latency.clone(),
        );
        family.get_or_create(&Outcome { outcome: "ok" }).inc();
        latency.observe(0.003);
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        // A plain HTTP/1.0 GET, as a Prometheus server sends it.
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer
        })
        .await
        .unwrap();
        let (head, text) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            text.contains("lastmile_test_things_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lastmile_test_latency_seconds_bucket{le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        // Another port in use is said plainly.
        let e = serve(addr, Arc::new(Registry::default()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("metrics_listen"), "{e}");
    }
}
