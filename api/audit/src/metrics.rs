//! The audit service's Prometheus metrics (`lastmile_audit_…`, served at `metrics_listen`).

use lastmile_metrics::{
    Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry, latency_histogram,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, or why not: `forbidden`, `bad_request`, `too_large`, `unverifiable`, `error`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone)]
pub struct AuditMetrics {
    /// Append requests, by outcome.
    pub appends: Family<Outcome, Counter>,
    /// Events acknowledged (durable in the log).
    pub events: Counter,
    pub append_seconds: Histogram,
    /// Entries in the log.
    pub entries: Gauge,
    /// When a checkpoint covering every entry was last in place: signed and published, or
    /// already there with nothing new to cover (Unix seconds).
    pub last_checkpoint: Gauge,
    /// Attempts to publish a checkpoint that failed.
    pub checkpoint_failures: Counter,
    /// 1 while the log cannot publish a checkpoint and refuses appends.
    pub unverifiable: Gauge,
    pub tls_failures: Counter,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        // Every outcome starts at 0, so rates over them are defined from the first scrape.
        let appends = Family::<Outcome, Counter>::default();
        for outcome in [
            "ok",
            "forbidden",
            "bad_request",
            "too_large",
            "unverifiable",
            "error",
        ] {
            let _ = appends.get_or_create(&Outcome { outcome });
        }
        Self {
            appends,
            events: Counter::default(),
            append_seconds: latency_histogram(),
            entries: Gauge::default(),
            last_checkpoint: Gauge::default(),
            checkpoint_failures: Counter::default(),
            unverifiable: Gauge::default(),
            tls_failures: Counter::default(),
        }
    }
}

impl AuditMetrics {
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("lastmile_audit");
        r.register(
            "appends",
            "Append requests, by outcome",
            self.appends.clone(),
        );
        r.register(
            "events_appended",
            "Events acknowledged: durable in the log",
            self.events.clone(),
        );
        r.register(
            "append_duration_seconds",
            "How long append requests took to answer (fsync and checkpoint included)",
            self.append_seconds.clone(),
        );
        r.register("entries", "Entries in the log", self.entries.clone());
        r.register(
            "last_checkpoint_timestamp_seconds",
            "When a published checkpoint last covered every entry (Unix time)",
            self.last_checkpoint.clone(),
        );
        r.register(
            "checkpoint_failures",
            "Checkpoint publications that failed (appends are refused meanwhile)",
            self.checkpoint_failures.clone(),
        );
        r.register(
            "unverifiable",
            "1 while the log cannot publish a checkpoint and refuses appends",
            self.unverifiable.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes refused or timed out",
            self.tls_failures.clone(),
        );
        r
    }

    pub fn append(&self, outcome: &'static str) {
        self.appends.get_or_create(&Outcome { outcome }).inc();
    }
}
