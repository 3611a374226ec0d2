//! The API's Prometheus metrics (served at `metrics_listen`, see [`lastmile_metrics`]).

use std::{sync::Arc, time::Instant};

use axum::{extract::MatchedPath, extract::Request, middleware::Next, response::Response};
use lastmile_metrics::{
    Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry, latency_histogram,
};

use crate::{app::App, error::ApiError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// `ok`, or the refusal's code.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Authorization {
    /// `connection` (`POST /v1/connections/authorize`) or `unlock`
    /// (`POST /v1/credentials/unlock`).
    call: &'static str,
    outcome: String,
}

type Latency = Family<Route, Histogram, fn() -> Histogram>;

/// Every metric family the API keeps.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    logins: Family<Outcome, Counter>,
    authorizations: Family<Authorization, Counter>,
    audit_writes: Family<Outcome, Counter>,
    audit_spool: Gauge,
    tls_failures: Counter,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "lastmile_api_requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        let latency: Latency = Family::new_with_constructor(latency_histogram);
        r.register(
            "lastmile_api_request_duration_seconds",
            "How long requests took to answer, by route",
            latency.clone(),
        );
        let logins = Family::<Outcome, Counter>::default();
        r.register(
            "lastmile_api_logins",
            "Logins, by outcome (ok or the refusal's code)",
            logins.clone(),
        );
        let authorizations = Family::<Authorization, Counter>::default();
        r.register(
            "lastmile_api_authorizations",
            "Connection authorizations and credential unlocks asked by gateways, by outcome",
            authorizations.clone(),
        );
        let audit_writes = Family::<Outcome, Counter>::default();
        r.register(
            "lastmile_api_audit_writes",
            "Audit events written (ok, spooled for the audit service) or not (failed: the action was refused)",
            audit_writes.clone(),
        );
        let audit_spool = Gauge::default();
        r.register(
            "lastmile_api_audit_spool_events",
            "Audit events waiting in the spool for the audit service",
            audit_spool.clone(),
        );
        let tls_failures = Counter::default();
        r.register(
            "lastmile_api_tls_handshake_failures",
            "TLS handshakes refused or timed out",
            tls_failures.clone(),
        );
        // The outcomes known in advance start at 0, so that rates and increases over them
        // are defined from the first scrape (Prometheus sees no series that never existed).
        for outcome in ["ok", "bad_credentials"] {
            let _ = logins.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        for call in ["connection", "unlock"] {
            let _ = authorizations.get_or_create(&Authorization {
                call,
                outcome: "ok".into(),
            });
        }
        for outcome in ["ok", "spooled", "failed"] {
            let _ = audit_writes.get_or_create(&Outcome {
                outcome: outcome.into(),
            });
        }
        Self {
            registry: Arc::new(r),
            requests,
            latency,
            logins,
            authorizations,
            audit_writes,
            audit_spool,
            tls_failures,
        }
    }
}

fn outcome<T>(r: &Result<T, ApiError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code.to_string(),
    }
}

impl ApiMetrics {
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn login<T>(&self, r: &Result<T, ApiError>) {
        self.logins
            .get_or_create(&Outcome {
                outcome: outcome(r),
            })
            .inc();
    }

    pub fn authorization<T>(&self, call: &'static str, r: &Result<T, ApiError>) {
        self.authorizations
            .get_or_create(&Authorization {
                call,
                outcome: outcome(r),
            })
            .inc();
    }

    /// One audit write: `ok`, `spooled` or `failed`; and the spool's depth after it.
    pub fn audit_write(&self, outcome: &str, spool_depth: Option<u64>) {
        self.audit_writes
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(depth) = spool_depth {
            self.audit_spool
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    pub fn tls_failure(&self) {
        self.tls_failures.inc();
    }
}

/// Middleware: counts each request and times it, by the route that matched.
pub async fn track(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let m = &app.metrics;
    m.latency
        .get_or_create(&Route {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
