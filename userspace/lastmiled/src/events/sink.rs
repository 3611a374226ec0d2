//! Where the node's and gateway's events go, written in order by one task.

use std::path::Path;

use serde_json::Value;

use lastmile_metrics::{Counter, Family, Gauge, Registry};

use super::{Event, EventBody};
use crate::metrics::OutcomeLabel;

/// What the writer counts (registered by its service under the service's prefix).
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// Batches written: `ok`, `spooled` (for the audit service), `failed`.
    written: Family<OutcomeLabel, Counter>,
    dropped: Counter,
    spool: Gauge,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        let written = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["ok", "spooled", "failed"] {
            let _ = written.get_or_create(&OutcomeLabel { outcome });
        }
        Self {
            written,
            dropped: Counter::default(),
            spool: Gauge::default(),
        }
    }
}

impl SinkMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "events_written",
            "Event batches written (ok, spooled for the audit service) or not (failed)",
            self.written.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped because the writer's queue was full",
            self.dropped.clone(),
        );
        r.register(
            "audit_spool_events",
            "Events waiting in the spool for the audit service",
            self.spool.clone(),
        );
    }

    fn written(&self, outcome: &'static str, spool: Option<u64>) {
        self.written.get_or_create(&OutcomeLabel { outcome }).inc();
        if let Some(depth) = spool {
            self.spool.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }
}

/// Where events go: through the node's audit policy to its local file and/or the audit
/// service (see [`crate::config::AuditConfig`]), or to standard output when neither is
/// configured. One task writes them, in order; `write` only queues.
#[derive(Debug)]
pub struct EventSink {
    queue: tokio::sync::mpsc::Sender<Value>,
    /// Set while events cannot be recorded anywhere (the file and the spool both fail):
    /// handlers that must not act unlogged (a database statement) check it.
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Events refused since the writer last reported them (it writes an
    /// `events.dropped` with the count), like the kernel ring buffer's drop counter.
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    metrics: SinkMetrics,
    /// `node` or `gateway`: every event says which role wrote it (`component`, as the
    /// API's events do), so a trace joined from one log shows who saw what.
    component: &'static str,
}

/// `event` as JSON with its writer's `component`.
fn with_component(event: &Event, component: &'static str) -> serde_json::Result<Value> {
    let mut v = serde_json::to_value(event)?;
    if let Value::Object(m) = &mut v {
        m.insert("component".into(), Value::from(component));
    }
    Ok(v)
}

/// At most this many events wait for the writer; more are counted and dropped, so a
/// flood cannot grow the daemon's memory without bound (each queued event is a few
/// hundred bytes to a few KiB).
const QUEUE: usize = 8192;

/// At most this many queued events go into one write (one sync).
const BATCH: usize = 512;

/// The writer syncs at most once this often while events keep coming: a gateway logging
/// every statement of a busy database would otherwise sync once per statement or two
/// (measured: a fifth of its CPU in fdatasync). An event after a quiet spell is written
/// at once. Events are never on a statement's path, so this costs no latency a user
/// sees.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

impl EventSink {
    /// Starts the writer task (inside a tokio runtime).
    /// `enrolled` is presented to the audit service unless `[….audit.service]` names a
    /// certificate.
    pub fn start(
        component: &'static str,
        file: Option<&Path>,
        audit: &crate::config::AuditConfig,
        enrolled: Option<lastmile_audit_sink::ClientIdentity>,
    ) -> Result<Self, lastmile_audit_sink::WriteError> {
        Self::start_with_queue(component, file, audit, enrolled, QUEUE)
    }

    fn start_with_queue(
        component: &'static str,
        file: Option<&Path>,
        audit: &crate::config::AuditConfig,
        enrolled: Option<lastmile_audit_sink::ClientIdentity>,
        capacity: usize,
    ) -> Result<Self, lastmile_audit_sink::WriteError> {
        let to_stdout = file.is_none() && audit.service.is_none();
        let writer = audit.writer_as(file, &[], enrolled)?;
        let (queue, mut events) = tokio::sync::mpsc::channel::<Value>(capacity.max(1));
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = failing.clone();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lost = dropped.clone();
        let metrics = SinkMetrics::default();
        let counted = metrics.clone();
        tokio::spawn(async move {
            // Spooled events (the service was down) go out within this long of its return,
            // even when no new event comes to push them.
            let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
            let mut batch = Vec::with_capacity(BATCH);
            let start = tokio::time::Instant::now();
            let mut last_write = start.checked_sub(GATHER).unwrap_or(start);
            loop {
                tokio::select! {
                    n = events.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            return;
                        }
                        // Busy (the last write was under GATHER ago): gather until
                        // GATHER after it, so syncs come at most that often.
                        let until = last_write + GATHER;
                        while batch.len() < BATCH && tokio::time::Instant::now() < until {
                            let room = BATCH - batch.len();
                            match tokio::time::timeout_at(until, events.recv_many(&mut batch, room))
                                .await
                            {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    },
                    _ = retry.tick() => {
                        if let Err(why) = writer.flush().await {
                            tracing::debug!(%why, "audit spool not flushed yet");
                        }
                        continue;
                    }
                };
                let n = lost.swap(0, std::sync::atomic::Ordering::AcqRel);
                if n > 0
                    && let Ok(v) = with_component(
                        &Event::now(EventBody::EventsDropped { count: n }),
                        component,
                    )
                {
                    tracing::warn!(count = n, "events dropped: the writer's queue was full");
                    batch.push(v);
                }
                if to_stdout {
                    for event in batch.drain(..) {
                        println!("{event}");
                    }
                    continue;
                }
                last_write = tokio::time::Instant::now();
                match writer.write_batch(std::mem::take(&mut batch)).await {
                    Ok(d) => {
                        failed.store(false, std::sync::atomic::Ordering::Release);
                        let outcome = if d.spooled.is_some() { "spooled" } else { "ok" };
                        counted.written(outcome, writer.spool_depth());
                        if let Some(why) = d.spooled {
                            tracing::warn!(%why, "audit service unavailable; event spooled locally");
                        }
                    }
                    Err(e) => {
                        counted.written("failed", writer.spool_depth());
                        failed.store(true, std::sync::atomic::Ordering::Release);
                        tracing::error!(error = %lastmile_audit_sink::error_chain(&e), "cannot write an audit event");
                    }
                }
            }
        });
        Ok(Self {
            queue,
            failing,
            dropped,
            metrics,
            component,
        })
    }

    /// The writer's metrics, to register with the service's.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.metrics
    }

    /// Whether events cannot be recorded now: the last write failed everywhere it was
    /// to go, or the queue is full and events are being dropped.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Acquire)
            || self.dropped.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Queues one event for writing; when the queue is full, counts it as dropped.
    pub fn write(&self, event: &Event) {
        match with_component(event, self.component) {
            Ok(v) => match self.queue.try_send(v) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    self.metrics.dropped.inc();
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("the event writer has stopped; event lost");
                }
            },
            Err(e) => tracing::error!(error = %e, "event not serializable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood past the queue is counted, not queued: what fits is written, then one
    /// `events.dropped` with the count.
    #[test]
    fn a_flood_past_the_queue_is_counted_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sink = EventSink::start_with_queue(
                "node",
                Some(&file),
                &crate::config::AuditConfig::default(),
                None,
                4,
            )
            .unwrap();
            // The writer cannot run until this task yields: 4 fit, 96 do not.
            for uid in 0..100 {
                sink.write(&Event::now(EventBody::Agent {
                    uid,
                    pid: None,
                    registered: true,
                }));
            }
            assert!(sink.failing(), "dropping events must read as failing");
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let lines = std::fs::read_to_string(&file).unwrap_or_default();
                if lines.contains("events.dropped") {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{lines}");
            }
            let events: Vec<Value> = std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(events.len(), 5, "{events:?}");
            assert_eq!(events[4]["kind"], "events.dropped");
            assert_eq!(events[4]["count"], 96);
            assert!(!sink.failing());
        });
    }
}
