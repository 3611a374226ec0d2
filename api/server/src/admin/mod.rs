//! Administrative changes: users and groups, resources, grants, devices, sessions, the
//! organisation's device policy, gateway enrollment tokens. The HTTP handlers and the
//! local `lastmile-api` CLI both call these, so both are checked and audited alike.
//! Each change and its audit event commit together: no event, no change.

use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{
    self, CredentialKind, Device, DevicePolicy, DeviceStatus, Grant, NewGrant, NewUser,
    OneTimePassword, Resource, ResourceKind, Session, Subject, UpstreamTls, User, valid_name,
};
use serde_json::json;
use sqlx::Row as _;

use crate::{
    app::App,
    auth::revoke_session,
    db::now,
    error::ApiError,
    events::{ApiEvent, GrantChange, ResourceChange},
    pki::random,
    secret,
};

mod devices;
mod grants;
mod resources;
mod users;

pub use self::{devices::*, grants::*, resources::*, users::*};

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::BadName,
            format!(
                "`{name}` is not a valid {what} name: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
            ),
        ))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Refuses with 404 unless user `name` exists.
pub(crate) async fn require_user(
    conn: &mut sqlx::AnyConnection,
    name: &str,
) -> Result<(), ApiError> {
    sqlx::query("SELECT name FROM users WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?
        .map(|_| ())
        .ok_or_else(|| {
            ApiError::not_found(ErrorCode::NoSuchUser, format!("there is no user `{name}`"))
        })
}

/// The credential kind resource `name` declares (by its stored name), refusing with 404
/// when there is no such resource.
pub(crate) async fn require_resource(
    conn: &mut sqlx::AnyConnection,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let row = sqlx::query("SELECT credential FROM resources WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                ErrorCode::NoSuchResource,
                format!("there is no resource `{name}`"),
            )
        })?;
    Ok(row.try_get("credential")?)
}

// ---- the organisation ----

/// Records the organisation in a fresh database (once) with its first admin, whose
/// one-time password is returned to be shown once.
pub async fn bootstrap(app: &App, admin: &str) -> Result<OneTimePassword, ApiError> {
    check_name("user", admin)?;
    // An earlier init that failed after the org row but before its admin may be finished.
    let exists = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&app.db.pool)
        .await?
        .try_get::<i64, _>("n")?;
    if exists != 0 {
        return Err(ApiError::conflict(
            ErrorCode::AlreadyInitialised,
            "this database already holds an organisation",
        ));
    }
    sqlx::query("INSERT INTO org (id, name, device_policy, created_at) VALUES (1, $1, 'tofu', $2) ON CONFLICT DO NOTHING")
        .bind(&app.pki.organisation)
        .bind(now())
        .execute(&app.db.pool)
        .await?;
    add_user(
        app,
        "init",
        NewUser {
            name: admin.to_owned(),
            admin: true,
            groups: Vec::new(),
        },
    )
    .await
}

pub async fn set_device_policy(
    app: &App,
    actor: &str,
    policy: DevicePolicy,
) -> Result<(), ApiError> {
    let name = stored_name(&policy);
    let mut tx = app.db.begin().await?;
    sqlx::query("UPDATE org SET device_policy = $1 WHERE id = 1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    app.audit(&ApiEvent::PermissionChange {
        actor,
        user: None,
        change: &format!("device_policy={name}"),
    })
    .await?;
    tx.commit().await?;
    Ok(())
}
