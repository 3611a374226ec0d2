//! Devices and sessions: listing them, approving or revoking a device, revoking
//! sessions.

use super::*;
use lastmile_proto::wire::ErrorCode;

pub async fn list_devices(app: &App, user: Option<&str>) -> Result<Vec<Device>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, user_name, name, fingerprint, status, created_at, last_seen FROM devices \
         WHERE ($1 IS NULL OR user_name = $1) ORDER BY user_name, created_at",
    )
    .bind(user)
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Device {
                id: r.try_get("id")?,
                user: r.try_get("user_name")?,
                name: r.try_get("name")?,
                fingerprint: r.try_get("fingerprint")?,
                status: match r.try_get::<String, _>("status")?.as_str() {
                    "trusted" => DeviceStatus::Trusted,
                    "pending" => DeviceStatus::Pending,
                    _ => DeviceStatus::Revoked,
                },
                created_at: r.try_get("created_at")?,
                last_seen: r.try_get("last_seen")?,
            })
        })
        .collect()
}

/// Approves a pending device, or revokes a device (and ends its sessions).
pub async fn set_device_status(
    app: &App,
    actor: &str,
    id: &str,
    status: DeviceStatus,
) -> Result<(), ApiError> {
    if status == DeviceStatus::Revoked {
        // Sessions end first: a failure leaves fewer sessions, never more.
        for s in live_sessions(app, None, Some(id)).await? {
            revoke_session(app, &s, &format!("device revoked by {actor}"), actor).await?;
        }
    }
    let mut tx = app.db.begin().await?;
    let row = sqlx::query("SELECT user_name, status FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::NoSuchDevice,
                format!("there is no device `{id}`"),
            )
        })?;
    let user: String = row.try_get("user_name")?;
    let before: String = row.try_get("status")?;
    if before == "revoked" && status != DeviceStatus::Revoked {
        return Err(ApiError::conflict(
            ErrorCode::DeviceRevoked,
            "a revoked device stays revoked; the user makes a new device key",
        ));
    }
    sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
        .bind(stored_name(&status))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    app.audit(&ApiEvent::DeviceChange {
        actor,
        user: &user,
        device: id,
        change: &format!("{before} -> {}", stored_name(&status)),
    })
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn live_sessions(
    app: &App,
    user: Option<&str>,
    device: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    Ok(sqlx::query(
        "SELECT id FROM sessions WHERE revoked_at IS NULL AND expires_at > $1 \
         AND ($2 IS NULL OR user_name = $2) AND ($3 IS NULL OR device_id = $3)",
    )
    .bind(now())
    .bind(user)
    .bind(device)
    .fetch_all(&app.db.pool)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?)
}

pub async fn list_sessions(app: &App, all: bool) -> Result<Vec<Session>, ApiError> {
    let rows = sqlx::query(
        "SELECT id, user_name, device_id, created_at, expires_at, revoked_at, revoke_reason FROM sessions \
         WHERE $1 = 1 OR (revoked_at IS NULL AND expires_at > $2) ORDER BY created_at DESC LIMIT 1000",
    )
    .bind(i64::from(all))
    .bind(now())
    .fetch_all(&app.db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Session {
                id: r.try_get("id")?,
                user: r.try_get("user_name")?,
                device: r.try_get("device_id")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                revoked_at: r.try_get("revoked_at")?,
                revoke_reason: r.try_get("revoke_reason")?,
            })
        })
        .collect()
}

pub async fn revoke(
    app: &App,
    actor: &str,
    session: &str,
    reason: Option<&str>,
) -> Result<wire::Revocation, ApiError> {
    let reason = format!(
        "revoked by {actor}{}",
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    revoke_session(app, session, &reason, actor)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::NoSuchSession,
                format!("there is no live session `{session}`"),
            )
        })
}
