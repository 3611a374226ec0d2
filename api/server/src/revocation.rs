//! Session revocation and its stream.
//!
//! A revocation is a row in `revocations` (increasing `seq`) written in the same
//! transaction that marks the session revoked. One task per API instance tails that table
//! and broadcasts new rows to the streams it serves: woken at once when this instance
//! revokes, and polling every 50 ms for rows other instances (or the admin CLI) wrote. So
//! a subscriber hears of a revocation within about 50 ms wherever it was decided, and a
//! subscriber that reconnects with `since` (or `Last-Event-ID`) misses nothing.

use lastmile_proto::wire::UserName;
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use lastmile_proto::wire::Revocation;
use sqlx::Row as _;
use tokio::sync::{Notify, broadcast};

use crate::db::{Backend, Db};

#[derive(Debug)]
pub struct Revocations {
    tx: broadcast::Sender<Revocation>,
    wake: Notify,
    last: AtomicI64,
}

const POLL: Duration = Duration::from_millis(50);

fn row(r: &sqlx::any::AnyRow) -> Result<Revocation, sqlx::Error> {
    Ok(Revocation {
        seq: r.try_get("seq")?,
        session: r.try_get::<String, _>("session_id")?.into(),
        user: UserName::parse(r.try_get::<String, _>("user_name")?).map_err(|e| {
            sqlx::Error::ColumnDecode {
                index: "user_name".into(),
                source: Box::new(e),
            }
        })?,
        device: r.try_get::<String, _>("device_id")?.into(),
        reason: r.try_get("reason")?,
        at: r.try_get("at")?,
        resource: r.try_get("resource")?,
    })
}

/// Revocations after `since`, oldest first (at most `limit`).
pub async fn after(db: &Db, since: i64, limit: i64) -> Result<Vec<Revocation>, sqlx::Error> {
    sqlx::query(
        "SELECT seq, session_id, user_name, device_id, reason, at, resource FROM revocations \
         WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(since)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(row)
    .collect()
}

impl Revocations {
    pub async fn new(db: &Db) -> Result<Self, sqlx::Error> {
        let last: Option<i64> = sqlx::query("SELECT MAX(seq) AS m FROM revocations")
            .fetch_one(&db.pool)
            .await?
            .try_get("m")?;
        Ok(Self {
            tx: broadcast::channel(1024).0,
            wake: Notify::new(),
            last: AtomicI64::new(last.unwrap_or(0)),
        })
    }

    /// The newest revocation this instance has seen.
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.tx.subscribe()
    }

    /// Tell the tailer a revocation was just committed here.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Tails the table for as long as the API runs.
    pub async fn tail(self: Arc<Self>, db: Db) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            match after(&db, self.last(), 1000).await {
                Ok(rows) => {
                    for r in rows {
                        self.last.store(r.seq, Ordering::Release);
                        // No subscribers is fine.
                        let _ = self.tx.send(r);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading revocations failed; retrying"),
            }
        }
    }
}

/// One subscriber's view: the backlog after `since`, then live revocations, each once
/// and in order, filtered by `visible`. A subscriber too slow for the broadcast buffer
/// catches up from the table.
pub struct Feed {
    db: Db,
    rx: broadcast::Receiver<Revocation>,
    pending: VecDeque<Revocation>,
    last_sent: i64,
    visible: Box<dyn Fn(&Revocation) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("last_sent", &self.last_sent)
            .finish_non_exhaustive()
    }
}

impl Feed {
    pub async fn start(
        db: Db,
        revocations: &Revocations,
        since: Option<i64>,
        visible: Box<dyn Fn(&Revocation) -> bool + Send + Sync>,
    ) -> Result<Self, sqlx::Error> {
        // Subscribe before reading the backlog so nothing falls between the two.
        let rx = revocations.subscribe();
        let since = since.unwrap_or_else(|| revocations.last());
        let pending: VecDeque<_> = after(&db, since, 10_000).await?.into();
        Ok(Self {
            db,
            rx,
            pending,
            last_sent: since,
            visible,
        })
    }

    /// Where this feed starts: it yields revocations after this `seq`.
    pub fn position(&self) -> i64 {
        self.last_sent
    }

    /// The next revocation this subscriber may see; `None` when the API shuts down.
    pub async fn next(&mut self) -> Option<Revocation> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                if r.seq > self.last_sent {
                    self.last_sent = r.seq;
                    if (self.visible)(&r) {
                        return Some(r);
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(r) => self.pending.push_back(r),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match after(&self.db, self.last_sent, 10_000).await {
                        Ok(rows) => self.pending.extend(rows),
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation catch-up failed");
                            tokio::time::sleep(POLL).await;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Within `tx`: records that `user`'s access to `resource` ended, unless an unexpired
/// grant (to them or a group of theirs) still gives it. Gateways cut the user's open
/// connections to the resource. The caller commits and then [`Revocations::nudge`]s.
pub async fn end_access(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    user: &str,
    resource: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let t = crate::db::now();
    let still: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM grants g WHERE g.resource = $1 AND (g.expires_at IS NULL OR g.expires_at > $3) AND \
         ((g.subject_kind = 'user' AND g.subject = $2) OR \
          (g.subject_kind = 'group' AND g.subject IN (SELECT group_name FROM group_members WHERE user_name = $2)))",
    )
    .bind(resource)
    .bind(user)
    .bind(t)
    .fetch_one(&mut **tx)
    .await?
    .try_get("n")?;
    if still > 0 {
        return Ok(false);
    }
    append(
        tx,
        backend,
        &New {
            session: lastmile_proto::wire::ALL_SESSIONS,
            user,
            device: "",
            reason,
            at: t,
            resource: Some(resource),
        },
    )
    .await?;
    Ok(true)
}

/// A revocation to [`append`].
#[derive(Debug)]
pub struct New<'a> {
    pub session: &'a str,
    pub user: &'a str,
    pub device: &'a str,
    pub reason: &'a str,
    pub at: i64,
    /// For access revocations: the resource whose access ended.
    pub resource: Option<&'a str>,
}

/// Taken by every transaction that appends a revocation, on PostgreSQL.
const APPEND_LOCK: i64 = 0x6c61_7374_7276; // "lastrv"

/// Within `tx`: appends a revocation and returns its `seq`.
///
/// Readers take rows `seq > last` and never look back, so rows must become visible in
/// `seq` order. On PostgreSQL a `seq` is drawn at the insert but seen only at the commit:
/// two overlapping transactions can commit out of order, and a tailer that has read the
/// later one would skip the earlier forever. A transaction-scoped advisory lock, taken
/// before the insert and held to the commit, serialises revocations from insert to commit,
/// so commit order is `seq` order. (SQLite already runs one write transaction at a time,
/// holding its lock from the first write to the commit.) Revocations are rare; the lock
/// costs nothing else.
pub async fn append(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    new: &New<'_>,
) -> Result<i64, sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO revocations (session_id, user_name, device_id, reason, at, resource) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
    )
    .bind(new.session)
    .bind(new.user)
    .bind(new.device)
    .bind(new.reason)
    .bind(new.at)
    .bind(new.resource)
    .fetch_one(&mut **tx)
    .await?
    .try_get("seq")
}
