//! Administrative changes: users and groups, resources, grants, devices, sessions, the
//! organisation's device policy, gateway enrollment tokens. The HTTP handlers and the
//! local `lastmile-api` CLI both call these, so both are checked and audited alike.
//! Each change and its audit event commit together: no event, no change.

use lastmile_proto::wire::{
    self, CredentialKind, Device, DevicePolicy, DeviceStatus, Grant, NewGrant, NewUser,
    OneTimePassword, Resource, ResourceKind, Session, Subject, UpstreamTls, User, valid_name,
};
use serde_json::json;
use sqlx::Row as _;

use crate::{app::App, auth::revoke_session, db::now, error::ApiError, pki::random, secret};

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_name",
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
        .ok_or_else(|| ApiError::not_found("no_such_user", format!("there is no user `{name}`")))
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
            ApiError::not_found("no_such_resource", format!("there is no resource `{name}`"))
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
            "already_initialised",
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
    let mut tx = app.db.pool.begin().await?;
    sqlx::query("UPDATE org SET device_policy = $1 WHERE id = 1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    app.audit(
        "permission.change",
        json!({"actor": actor, "change": format!("device_policy={name}")}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---- users and groups ----

async fn user_groups(app: &App, user: &str) -> Result<Vec<String>, ApiError> {
    Ok(
        sqlx::query(
            "SELECT group_name FROM group_members WHERE user_name = $1 ORDER BY group_name",
        )
        .bind(user)
        .fetch_all(&app.db.pool)
        .await?
        .iter()
        .map(|r| r.try_get("group_name"))
        .collect::<Result<_, _>>()?,
    )
}

pub async fn list_users(app: &App) -> Result<Vec<User>, ApiError> {
    let rows = sqlx::query(
        "SELECT name, admin, disabled, totp_secret, totp_sealed, created_at FROM users ORDER BY name",
    )
    .fetch_all(&app.db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get("name")?;
        out.push(User {
            groups: user_groups(app, &name).await?,
            name,
            admin: r.try_get::<i64, _>("admin")? != 0,
            disabled: r.try_get::<i64, _>("disabled")? != 0,
            totp: r.try_get::<Option<String>, _>("totp_sealed")?.is_some()
                || r.try_get::<Option<String>, _>("totp_secret")?.is_some(),
            created_at: r.try_get("created_at")?,
        });
    }
    Ok(out)
}

pub async fn add_user(app: &App, actor: &str, new: NewUser) -> Result<OneTimePassword, ApiError> {
    check_name("user", &new.name)?;
    for g in &new.groups {
        check_name("group", g)?;
    }
    let otp = secret::one_time_password().map_err(ApiError::internal)?;
    let h = hash(otp.clone()).await?;
    let mut tx = app.db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (name, password_hash, password_one_time, admin, created_at) VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&new.name)
    .bind(h)
    .bind(i64::from(new.admin))
    .bind(now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted != 1 {
        return Err(ApiError::conflict(
            "user_exists",
            format!("user `{}` already exists", new.name),
        ));
    }
    for g in &new.groups {
        sqlx::query("INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(g)
            .bind(&new.name)
            .execute(&mut *tx)
            .await?;
    }
    app.audit(
        "user.change",
        json!({"actor": actor, "user": new.name, "change": "create", "admin": new.admin, "groups": new.groups}),
    )
    .await?;
    tx.commit().await?;
    Ok(OneTimePassword {
        user: new.name,
        one_time_password: otp,
    })
}

/// What can be changed about a user.
#[derive(Debug, Clone)]
pub enum UserChange {
    Disable,
    Enable,
    Admin(bool),
    JoinGroup(String),
    LeaveGroup(String),
    Delete,
}

pub async fn change_user(
    app: &App,
    actor: &str,
    user: &str,
    change: UserChange,
) -> Result<(), ApiError> {
    // A disabled or deleted user's sessions end first (and are published): should this
    // fail, the user is left with fewer sessions, never with more.
    if matches!(change, UserChange::Disable | UserChange::Delete) {
        let what = if matches!(change, UserChange::Delete) {
            "deleted"
        } else {
            "disabled"
        };
        for s in live_sessions(app, Some(user), None).await? {
            revoke_session(app, &s, &format!("user {what} by {actor}"), actor).await?;
        }
    }
    let mut tx = app.db.pool.begin().await?;
    let (sql, arg, what): (&str, Option<String>, String) = match &change {
        UserChange::Disable => (
            "UPDATE users SET disabled = 1 WHERE name = $1",
            None,
            "disable".into(),
        ),
        UserChange::Enable => (
            "UPDATE users SET disabled = 0, failed_logins = 0, locked_until = 0 WHERE name = $1",
            None,
            "enable".into(),
        ),
        UserChange::Admin(true) => (
            "UPDATE users SET admin = 1 WHERE name = $1",
            None,
            "admin=true".into(),
        ),
        UserChange::Admin(false) => (
            "UPDATE users SET admin = 0 WHERE name = $1",
            None,
            "admin=false".into(),
        ),
        UserChange::Delete => ("DELETE FROM users WHERE name = $1", None, "delete".into()),
        UserChange::JoinGroup(g) => {
            check_name("group", g)?;
            (
                "INSERT INTO group_members (group_name, user_name) SELECT $2, name FROM users WHERE name = $1 ON CONFLICT DO NOTHING",
                Some(g.clone()),
                format!("join group {g}"),
            )
        }
        UserChange::LeaveGroup(g) => {
            check_name("group", g)?;
            (
                "DELETE FROM group_members WHERE user_name = $1 AND group_name = $2",
                Some(g.clone()),
                format!("leave group {g}"),
            )
        }
    };
    require_user(&mut tx, user).await?;
    if matches!(change, UserChange::Delete) {
        // A name can be reused; what was granted to the old user must not pass to a new one.
        sqlx::query("DELETE FROM grants WHERE subject_kind = 'user' AND subject = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
    }
    let mut q = sqlx::query(sql).bind(user);
    if let Some(a) = &arg {
        q = q.bind(a);
    }
    q.execute(&mut *tx).await?;
    let mut left_access = false;
    if let UserChange::LeaveGroup(g) = &change {
        // What the group gave ends now, unless another grant still gives it.
        let resources: Vec<String> = sqlx::query(
            "SELECT DISTINCT resource FROM grants WHERE subject_kind = 'group' AND subject = $1",
        )
        .bind(g)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("resource"))
        .collect::<Result<_, _>>()?;
        for r in &resources {
            left_access |= crate::revocation::end_access(
                &mut tx,
                app.db.backend,
                user,
                r,
                &format!("left group {g} ({actor})"),
            )
            .await?;
        }
    }
    let kind = if matches!(change, UserChange::Admin(_)) {
        "permission.change"
    } else {
        "user.change"
    };
    app.audit(kind, json!({"actor": actor, "user": user, "change": what}))
        .await?;
    tx.commit().await?;
    if left_access {
        app.revocations.nudge();
    }
    Ok(())
}

pub async fn reset_password(
    app: &App,
    actor: &str,
    user: &str,
) -> Result<OneTimePassword, ApiError> {
    let otp = secret::one_time_password().map_err(ApiError::internal)?;
    let h = hash(otp.clone()).await?;
    let mut tx = app.db.pool.begin().await?;
    let n = sqlx::query("UPDATE users SET password_hash = $1, password_one_time = 1, failed_logins = 0, locked_until = 0 WHERE name = $2")
        .bind(h)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            "no_such_user",
            format!("there is no user `{user}`"),
        ));
    }
    app.audit(
        "user.change",
        json!({"actor": actor, "user": user, "change": "reset password"}),
    )
    .await?;
    tx.commit().await?;
    Ok(OneTimePassword {
        user: user.to_owned(),
        one_time_password: otp,
    })
}

/// Seals, under the KMS, TOTP seeds stored in the clear before seeds were sealed (run at
/// start). Each row changes only if its clear seed is still the one read, so several
/// instances starting at once, or a concurrent `totp-on`, are harmless.
pub async fn seal_clear_totp_seeds(app: &App) -> Result<u64, ApiError> {
    let rows = sqlx::query("SELECT name, totp_secret FROM users WHERE totp_secret IS NOT NULL")
        .fetch_all(&app.db.pool)
        .await?;
    let mut sealed = 0;
    for r in rows {
        let name: String = r.try_get("name")?;
        let clear: String = r.try_get("totp_secret")?;
        let text = secret::seal_totp(&app.kms, &app.pki.organisation, &name, &clear)
            .await
            .map_err(crate::vault::kms_error)?;
        sealed += sqlx::query(
            "UPDATE users SET totp_sealed = $1, totp_secret = NULL WHERE name = $2 AND totp_secret = $3",
        )
        .bind(&text)
        .bind(&name)
        .bind(&clear)
        .execute(&app.db.pool)
        .await?
        .rows_affected();
    }
    Ok(sealed)
}

/// Turns TOTP on (a new secret; the `otpauth://` URI to show once) or off (`None`).
pub async fn set_totp(
    app: &App,
    actor: &str,
    user: &str,
    on: bool,
) -> Result<Option<String>, ApiError> {
    let secret = if on {
        Some(secret::new_totp_secret().map_err(ApiError::internal)?)
    } else {
        None
    };
    // Sealed like every other secret; the clear seed goes out once, in the URI.
    let sealed = match &secret {
        Some(s) => Some(
            secret::seal_totp(&app.kms, &app.pki.organisation, user, s)
                .await
                .map_err(crate::vault::kms_error)?,
        ),
        None => None,
    };
    let mut tx = app.db.pool.begin().await?;
    let n = sqlx::query(
        "UPDATE users SET totp_sealed = $1, totp_secret = NULL, totp_last_step = 0 WHERE name = $2",
    )
    .bind(&sealed)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            "no_such_user",
            format!("there is no user `{user}`"),
        ));
    }
    app.audit(
        "user.change",
        json!({"actor": actor, "user": user, "change": if on { "totp on" } else { "totp off" }}),
    )
    .await?;
    tx.commit().await?;
    Ok(secret.map(|s| secret::totp_uri(&app.pki.organisation, user, &s)))
}

// ---- resources ----

/// An enum as it is stored and sent: its serde name (`ssh-key`, `verify-full`, …), so the
/// database and the wire spell every value one way.
pub fn stored_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// Checks one `protect` entry: `ADDR:PORT`, `[ADDR6]:PORT` or `PREFIX/LEN:PORT` (the
/// node's syntax).
/// The node's own parser: what a node could not intercept is refused here, not listed
/// as protected and skipped with a warning on every node.
fn check_protect(spec: &str) -> Result<(), String> {
    use lastmile_proto::target::{ProtectedTarget, TargetParseError};
    spec.parse::<ProtectedTarget>()
        .map(|_| ())
        .map_err(|e| match e {
            // These name the whole entry already.
            TargetParseError::MissingPort(_) => format!("protect: {e}"),
            _ => format!("protect `{spec}`: {e}"),
        })
}

/// Saves `r` (created or replaced): the resource as stored, `upstream_tls` filled in
/// for a postgres one.
pub async fn put_resource(app: &App, actor: &str, r: Resource) -> Result<Resource, ApiError> {
    check_name("resource", &r.name)?;
    let r = with_upstream_tls(r)?;
    if r.host.is_empty() || r.host.len() > 253 || r.host.contains(char::is_whitespace) {
        return Err(ApiError::bad_request(
            "bad_resource",
            "host must be a DNS name or an IP address",
        ));
    }
    if r.port == 0 {
        return Err(ApiError::bad_request(
            "bad_resource",
            "port must be 1-65535",
        ));
    }
    if r.protect.len() > 64 {
        return Err(ApiError::bad_request(
            "bad_resource",
            "at most 64 protect entries",
        ));
    }
    for p in &r.protect {
        check_protect(p).map_err(|why| ApiError::bad_request("bad_resource", why))?;
    }
    for p in &r.ssh_principals {
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ApiError::bad_request(
                "bad_resource",
                format!("`{p}` is not a usable SSH principal (1-64 of A-Z a-z 0-9 . _ -)"),
            ));
        }
    }
    if r.credential == Some(CredentialKind::SshCertificate) && r.ssh_principals.is_empty() {
        return Err(ApiError::bad_request(
            "bad_resource",
            "an ssh-certificate resource needs ssh_principals: the upstream users its certificates may log in as",
        ));
    }
    check_postgres_fields(&r)?;
    check_ssh_fields(&r)?;
    let t = now();
    let protect = serde_json::to_string(&r.protect).map_err(ApiError::internal)?;
    let mut tx = app.db.pool.begin().await?;
    let existed = sqlx::query("SELECT COUNT(*) AS n FROM resources WHERE name = $1")
        .bind(&r.name)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?
        != 0;
    sqlx::query(
        "INSERT INTO resources (name, kind, host, port, protect, upstream_tls, credential, ssh_principals, database_user, databases, upstream_ca, \
         ssh_host_ca, ssh_host_keys, ssh_allow_port_forwarding, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12, $13, $14, $15, $8, $8) \
         ON CONFLICT (name) DO UPDATE SET kind = $2, host = $3, port = $4, protect = $5, upstream_tls = $6, credential = $7, ssh_principals = $9, \
         database_user = $10, databases = $11, upstream_ca = $12, ssh_host_ca = $13, ssh_host_keys = $14, ssh_allow_port_forwarding = $15, updated_at = $8",
    )
    .bind(&r.name)
    .bind(stored_name(&r.kind))
    .bind(&r.host)
    .bind(i64::from(r.port))
    .bind(protect)
    // The column predates kinds without it: what their gateway does, which is ignored.
    .bind(stored_name(&r.upstream_tls.unwrap_or(UpstreamTls::Disable)))
    .bind(r.credential.map(|c| stored_name(&c)))
    .bind(t)
    .bind(serde_json::to_string(&r.ssh_principals).map_err(ApiError::internal)?)
    .bind(r.database_user.as_deref())
    .bind(serde_json::to_string(&r.databases).map_err(ApiError::internal)?)
    .bind(r.upstream_ca.as_deref())
    .bind(serde_json::to_string(&r.ssh_host_ca).map_err(ApiError::internal)?)
    .bind(serde_json::to_string(&r.ssh_host_keys).map_err(ApiError::internal)?)
    .bind(i64::from(r.ssh_allow_port_forwarding))
    .execute(&mut *tx)
    .await?;
    app.audit(
        "resource.change",
        json!({"actor": actor, "resource": r.name, "change": if existed { "update" } else { "create" }, "definition": r}),
    )
    .await?;
    tx.commit().await?;
    Ok(r)
}

/// `upstream_tls` applies to postgres resources, whose TLS the gateway negotiates inside
/// the protocol; another kind that names it is refused (it would change nothing), and a
/// postgres one without it gets the default.
fn with_upstream_tls(mut r: Resource) -> Result<Resource, ApiError> {
    let why = match (r.kind, r.upstream_tls) {
        (ResourceKind::Postgres, tls) => {
            r.upstream_tls = Some(tls.unwrap_or_default());
            return Ok(r);
        }
        (_, None) => return Ok(r),
        (ResourceKind::Tcp, Some(_)) => {
            "the gateway carries a tcp resource's bytes as they are, so a TLS service's own TLS goes end to end to the client"
        }
        (ResourceKind::Ssh, Some(_)) => {
            "ssh has its own encryption, and the gateway checks the target's host key"
        }
    };
    Err(ApiError::bad_request(
        "bad_resource",
        format!(
            "upstream_tls applies to postgres resources only ({why}): leave upstream_tls (--upstream-tls) out for a {} resource",
            stored_name(&r.kind)
        ),
    ))
}

/// A stored enum, from its serde name.
pub fn stored<T: serde::de::DeserializeOwned>(field: &str, v: String) -> Result<T, ApiError> {
    serde_json::from_value(json!(v))
        .map_err(|e| ApiError::internal(format!("stored {field} `{v}`: {e}")))
}

fn resource_row(r: &sqlx::any::AnyRow) -> Result<Resource, ApiError> {
    let protect: String = r.try_get("protect")?;
    let kind = stored("kind", r.try_get("kind")?)?;
    // Rows saved before other kinds refused it may hold a value there: it never had an
    // effect, so it is not shown.
    let upstream_tls = match kind {
        ResourceKind::Postgres => Some(stored("upstream_tls", r.try_get("upstream_tls")?)?),
        ResourceKind::Ssh | ResourceKind::Tcp => None,
    };
    Ok(Resource {
        name: r.try_get("name")?,
        kind,
        host: r.try_get("host")?,
        port: u16::try_from(r.try_get::<i64, _>("port")?).map_err(ApiError::internal)?,
        protect: serde_json::from_str(&protect).map_err(ApiError::internal)?,
        upstream_tls,
        credential: r
            .try_get::<Option<String>, _>("credential")?
            .map(|c| stored("credential", c))
            .transpose()?,
        ssh_principals: serde_json::from_str(&r.try_get::<String, _>("ssh_principals")?)
            .map_err(ApiError::internal)?,
        database_user: r.try_get("database_user")?,
        databases: serde_json::from_str(&r.try_get::<String, _>("databases")?)
            .map_err(ApiError::internal)?,
        upstream_ca: r.try_get("upstream_ca")?,
        ssh_host_ca: serde_json::from_str(&r.try_get::<String, _>("ssh_host_ca")?)
            .map_err(ApiError::internal)?,
        ssh_host_keys: serde_json::from_str(&r.try_get::<String, _>("ssh_host_keys")?)
            .map_err(ApiError::internal)?,
        ssh_allow_port_forwarding: r.try_get::<i64, _>("ssh_allow_port_forwarding")? != 0,
    })
}

const RESOURCE_COLUMNS: &str = "r.name, r.kind, r.host, r.port, r.protect, r.upstream_tls, r.credential, r.ssh_principals, \
     r.database_user, r.databases, r.upstream_ca, r.ssh_host_ca, r.ssh_host_keys, r.ssh_allow_port_forwarding";

/// What a `postgres` resource needs to be usable, checked when it is saved rather than
/// at a user's first connection.
fn check_postgres_fields(r: &Resource) -> Result<(), ApiError> {
    let pg_name = |n: &str| {
        !n.is_empty() && n.len() <= 63 && !n.bytes().any(|b| b == 0 || b.is_ascii_control())
    };
    if let Some(u) = &r.database_user
        && !pg_name(u)
    {
        return Err(ApiError::bad_request(
            "bad_resource",
            "database_user must be 1-63 bytes with no control characters (a PostgreSQL role name)",
        ));
    }
    if r.databases.len() > 256 || !r.databases.iter().all(|d| pg_name(d)) {
        return Err(ApiError::bad_request(
            "bad_resource",
            "databases: at most 256 names of 1-63 bytes with no control characters",
        ));
    }
    if let Some(ca) = &r.upstream_ca
        && (ca.len() > 64 * 1024 || !ca.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(ApiError::bad_request(
            "bad_resource",
            "upstream_ca must be PEM certificates (-----BEGIN CERTIFICATE-----), at most 64 KiB",
        ));
    }
    Ok(())
}

/// The SSH host trust of a resource must parse as OpenSSH public keys when it is saved,
/// so a typo is an error for the administrator rather than a refusal for every user.
fn check_ssh_fields(r: &Resource) -> Result<(), ApiError> {
    for (field, lines) in [
        ("ssh_host_ca", &r.ssh_host_ca),
        ("ssh_host_keys", &r.ssh_host_keys),
    ] {
        if lines.len() > 64 {
            return Err(ApiError::bad_request(
                "bad_resource",
                format!("{field}: at most 64 keys"),
            ));
        }
        for line in lines {
            if ssh_key::PublicKey::from_openssh(line.trim()).is_err() {
                return Err(ApiError::bad_request(
                    "bad_resource",
                    format!(
                        "{field}: `{line}` is not an OpenSSH public key line (`ssh-ed25519 AAAA…`)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub async fn list_resources(app: &App) -> Result<Vec<Resource>, ApiError> {
    sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r ORDER BY r.name"
    ))
    .fetch_all(&app.db.pool)
    .await?
    .iter()
    .map(resource_row)
    .collect()
}

/// The resources `user` may reach now: granted to them or to one of their groups, and
/// not expired.
/// One resource by name.
pub async fn resource(app: &App, name: &str) -> Result<Resource, ApiError> {
    sqlx::query(&format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.name = $1"
    ))
    .bind(name)
    .fetch_optional(&app.db.pool)
    .await?
    .as_ref()
    .map(resource_row)
    .transpose()?
    .ok_or_else(|| {
        ApiError::not_found("no_such_resource", format!("there is no resource `{name}`"))
    })
}

pub async fn resources_for(app: &App, user: &str) -> Result<Vec<Resource>, ApiError> {
    sqlx::query(&format!(
        "SELECT DISTINCT {RESOURCE_COLUMNS} FROM resources r JOIN grants g ON g.resource = r.name \
         WHERE (g.expires_at IS NULL OR g.expires_at > $2) AND \
         ((g.subject_kind = 'user' AND g.subject = $1) OR \
          (g.subject_kind = 'group' AND g.subject IN (SELECT group_name FROM group_members WHERE user_name = $1))) \
         ORDER BY r.name"
    ))
    .bind(user)
    .bind(now())
    .fetch_all(&app.db.pool)
    .await?
    .iter()
    .map(resource_row)
    .collect()
}

pub async fn delete_resource(app: &App, actor: &str, name: &str) -> Result<(), ApiError> {
    let mut tx = app.db.pool.begin().await?;
    let credentials = sqlx::query("SELECT COUNT(*) AS n FROM credentials WHERE resource = $1")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?;
    let n = sqlx::query("DELETE FROM resources WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            "no_such_resource",
            format!("there is no resource `{name}`"),
        ));
    }
    app.audit(
        "resource.change",
        json!({"actor": actor, "resource": name, "change": "delete", "credentials_deleted": credentials}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

// ---- grants ----

pub async fn add_grant(app: &App, actor: &str, g: NewGrant) -> Result<Grant, ApiError> {
    let (kind, subject) = match &g.subject {
        Subject::User(u) => ("user", u),
        Subject::Group(g) => ("group", g),
    };
    check_name(kind, subject)?;
    let t = now();
    if g.expires_at.is_some_and(|e| e <= t) {
        return Err(ApiError::bad_request(
            "bad_grant",
            "expires_at is in the past",
        ));
    }
    let mut tx = app.db.pool.begin().await?;
    require_resource(&mut tx, &g.resource).await?;
    if kind == "user" {
        require_user(&mut tx, subject).await?;
    }
    let id = format!("grt_{}", hex(&random::<8>().map_err(ApiError::internal)?));
    sqlx::query(
        "INSERT INTO grants (id, resource, subject_kind, subject, expires_at, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&g.resource)
    .bind(kind)
    .bind(subject)
    .bind(g.expires_at)
    .bind(actor)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    app.audit(
        "grant.change",
        json!({"actor": actor, "resource": g.resource, "change": "grant", "grant": id, "subject": g.subject, "expires_at": g.expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok(Grant {
        id,
        resource: g.resource,
        subject: g.subject,
        expires_at: g.expires_at,
        created_by: actor.to_owned(),
        created_at: t,
    })
}

pub async fn list_grants(app: &App) -> Result<Vec<Grant>, ApiError> {
    let rows = sqlx::query("SELECT id, resource, subject_kind, subject, expires_at, created_by, created_at FROM grants ORDER BY resource, id")
        .fetch_all(&app.db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let subject: String = r.try_get("subject")?;
            Ok(Grant {
                id: r.try_get("id")?,
                resource: r.try_get("resource")?,
                subject: if r.try_get::<String, _>("subject_kind")? == "group" {
                    Subject::Group(subject)
                } else {
                    Subject::User(subject)
                },
                expires_at: r.try_get("expires_at")?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn revoke_grant(app: &App, actor: &str, id: &str) -> Result<(), ApiError> {
    let mut tx = app.db.pool.begin().await?;
    let row =
        sqlx::query("DELETE FROM grants WHERE id = $1 RETURNING resource, subject_kind, subject")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                ApiError::not_found("no_such_grant", format!("there is no grant `{id}`"))
            })?;
    let resource: String = row.try_get("resource")?;
    let subject: String = row.try_get("subject")?;
    // Whoever held access through this grant: open connections end unless another grant
    // still covers them.
    let users: Vec<String> = if row.try_get::<String, _>("subject_kind")? == "group" {
        sqlx::query("SELECT user_name FROM group_members WHERE group_name = $1")
            .bind(&subject)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("user_name"))
            .collect::<Result<_, _>>()?
    } else {
        vec![subject]
    };
    let mut ended = Vec::new();
    for u in &users {
        if crate::revocation::end_access(
            &mut tx,
            app.db.backend,
            u,
            &resource,
            &format!("grant {id} revoked by {actor}"),
        )
        .await?
        {
            ended.push(u.clone());
        }
    }
    app.audit(
        "grant.change",
        json!({"actor": actor, "resource": resource, "change": "revoke", "grant": id, "access_ended": ended}),
    )
    .await?;
    tx.commit().await?;
    app.revocations.nudge();
    Ok(())
}

// ---- devices and sessions ----

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
    let mut tx = app.db.pool.begin().await?;
    let row = sqlx::query("SELECT user_name, status FROM devices WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("no_such_device", format!("there is no device `{id}`"))
        })?;
    let user: String = row.try_get("user_name")?;
    let before: String = row.try_get("status")?;
    if before == "revoked" && status != DeviceStatus::Revoked {
        return Err(ApiError::conflict(
            "device_revoked",
            "a revoked device stays revoked; the user makes a new device key",
        ));
    }
    sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
        .bind(stored_name(&status))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    app.audit(
        "device.change",
        json!({"actor": actor, "user": user, "device": id, "change": format!("{before} -> {}", stored_name(&status))}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn live_sessions(
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
                "no_such_session",
                format!("there is no live session `{session}`"),
            )
        })
}
