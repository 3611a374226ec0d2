//! Cancel requests (§55.2.7 "Canceling Requests in Progress").
//!
//! The client was given a BackendKeyData of the gateway's own, so the server's key never
//! reaches the user. A cancel arrives as a new connection, and so as a new stream with
//! its own authorization (checked like any other); its key is looked up here and, when
//! it names a live connection of the same user on this gateway, a CancelRequest with the
//! server's real key goes to that server (over TLS when the resource asks for it, so the
//! key is not sent in the clear). An unknown key, or another user's, cancels nothing and
//! is recorded.

use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{ConnectionId, UserName};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lastmile_postgres::startup::CancelKey;
use lastmile_proto::wire::Resource;
use tokio::io::AsyncWriteExt as _;
use tracing::info;

use super::{Refusal, login::random_key, upstream};
use crate::{
    events::{DbCancel, Event, EventBody},
    gateway::{Gateway, streams::Connection},
};

/// The live connections' keys on this gateway, by the key the client holds.
#[derive(Debug, Default)]
pub(in crate::gateway) struct Cancels {
    live: Mutex<HashMap<(i32, i32), Target>>,
}

#[derive(Debug, Clone)]
struct Target {
    real: CancelKey,
    resource: Resource,
    user: UserName,
    connection: ConnectionId,
}

/// One connection's entry, removed when the connection ends.
pub(super) struct Registration {
    gw: Arc<Gateway>,
    key: CancelKey,
}

impl Registration {
    pub(super) fn new(conn: &Connection, real: CancelKey) -> Result<Self, Refusal> {
        let target = Target {
            real,
            resource: conn.authorized.resource.clone(),
            user: conn.authorized.user.clone(),
            connection: conn.id.clone(),
        };
        let mut live = conn.gw.cancels.live.lock().map_err(|_| {
            Refusal::fatal(
                "58000",
                ErrorCode::Internal,
                "lastmile: cancel table poisoned",
            )
        })?;
        // A fresh random key that no live connection holds.
        let key = loop {
            let k = random_key()?;
            if !live.contains_key(&(k.pid, k.secret)) {
                break k;
            }
        };
        live.insert((key.pid, key.secret), target);
        Ok(Self {
            gw: conn.gw.clone(),
            key,
        })
    }

    pub(super) fn key(&self) -> CancelKey {
        self.key
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = self.gw.cancels.live.lock() {
            live.remove(&(self.key.pid, self.key.secret));
        }
    }
}

/// Handles a CancelRequest that arrived on `conn`. PostgreSQL answers a cancel with
/// nothing but a close, whatever happened; so does the gateway.
pub(super) async fn forward(conn: &mut super::Connection, key: CancelKey) {
    let target = conn
        .gw
        .cancels
        .live
        .lock()
        .ok()
        .and_then(|live| live.get(&(key.pid, key.secret)).cloned());
    let outcome = match target {
        None => "unknown_key".to_owned(),
        Some(t) if t.user != conn.authorized.user => "other_user".to_owned(),
        Some(t) => match send(&conn.gw, &t.resource, t.real).await {
            Ok(()) => {
                info!(cancelled = %t.connection, "cancel request forwarded");
                conn.record.error = None;
                record(conn, Some(t.connection.to_string()), "forwarded");
                return;
            }
            Err(e) => format!("upstream: {e}"),
        },
    };
    info!(%outcome, "cancel request not forwarded");
    conn.record.error = Some(format!("cancel request: {outcome}"));
    record(conn, None, &outcome);
}

fn record(conn: &super::Connection, cancelled: Option<String>, outcome: &str) {
    conn.gw
        .sink
        .write(&Event::now(EventBody::DbCancel(DbCancel {
            connection: conn.id.clone(),
            session: conn.identity.session.clone(),
            user: conn.identity.user.clone(),
            resource: conn.authorized.resource.name.clone(),
            gateway: conn.gw.name.clone(),
            sock_cookie: conn.sock_cookie,
            cancelled,
            outcome: outcome.to_owned(),
        })));
}

async fn send(gw: &Gateway, resource: &Resource, real: CancelKey) -> Result<(), String> {
    let mut upstream = upstream::connect(gw, resource)
        .await
        .map_err(|e| lastmile_audit_sink::error_chain(&e))?;
    upstream
        .write_all(&real.encode_cancel_request())
        .await
        .map_err(|e| e.to_string())?;
    let _ = upstream.shutdown().await;
    Ok(())
}
