//! Resources: what can be reached, checked as a node would check it, with its
//! credential kind and protocol fields; stored and listed.

use super::*;
use lastmile_proto::wire::ErrorCode;

/// An enum as it is stored and sent: its serde name (`ssh-key`, `verify-full`, …), so the
/// database and the wire spell every value one way.
pub fn stored_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// A DNS name a user may dial (RFC 1123 host name syntax, lower case), not an address.
fn dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.parse::<std::net::IpAddr>().is_err()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
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
            ErrorCode::BadResource,
            "host must be a DNS name or an IP address",
        ));
    }
    if r.port == 0 {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
            "port must be 1-65535",
        ));
    }
    if r.protect.len() > 64 {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
            "at most 64 protect entries",
        ));
    }
    for p in &r.protect {
        check_protect(p).map_err(|why| ApiError::bad_request(ErrorCode::BadResource, why))?;
    }
    if r.names.len() > 16 {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
            "at most 16 names",
        ));
    }
    for n in &r.names {
        if !dns_name(n) {
            return Err(ApiError::bad_request(
                ErrorCode::BadResource,
                format!(
                    "`{n}` is not a DNS name (lower-case labels of a-z 0-9 -, dot-separated, \
                     at most 253 characters; not an address: put those in protect)"
                ),
            ));
        }
    }
    for p in &r.ssh_principals {
        if p.is_empty()
            || p.len() > 64
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ApiError::bad_request(
                ErrorCode::BadResource,
                format!("`{p}` is not a usable SSH principal (1-64 of A-Z a-z 0-9 . _ -)"),
            ));
        }
    }
    if r.credential == Some(CredentialKind::SshCertificate) && r.ssh_principals.is_empty() {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
            "an ssh-certificate resource needs ssh_principals: the upstream users its certificates may log in as",
        ));
    }
    check_postgres_fields(&r)?;
    check_ssh_fields(&r)?;
    let t = now();
    let protect = serde_json::to_string(&r.protect).map_err(ApiError::internal)?;
    let mut tx = app.db.begin().await?;
    let existed = sqlx::query("SELECT COUNT(*) AS n FROM resources WHERE name = $1")
        .bind(&r.name)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?
        != 0;
    sqlx::query(
        "INSERT INTO resources (name, kind, host, port, protect, upstream_tls, credential, ssh_principals, database_user, databases, upstream_ca, \
         ssh_host_ca, ssh_host_keys, ssh_allow_port_forwarding, names, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10, $11, $12, $13, $14, $15, $16, $8, $8) \
         ON CONFLICT (name) DO UPDATE SET kind = $2, host = $3, port = $4, protect = $5, upstream_tls = $6, credential = $7, ssh_principals = $9, \
         database_user = $10, databases = $11, upstream_ca = $12, ssh_host_ca = $13, ssh_host_keys = $14, ssh_allow_port_forwarding = $15, names = $16, updated_at = $8",
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
    .bind(serde_json::to_string(&r.names).map_err(ApiError::internal)?)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::ResourceChange {
        actor,
        resource: &r.name,
        change: if existed {
            ResourceChange::Update { definition: &r }
        } else {
            ResourceChange::Create { definition: &r }
        },
    })
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
        ErrorCode::BadResource,
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
        names: serde_json::from_str(&r.try_get::<String, _>("names")?)
            .map_err(ApiError::internal)?,
    })
}

const RESOURCE_COLUMNS: &str = "r.name, r.kind, r.host, r.port, r.protect, r.upstream_tls, r.credential, r.ssh_principals, \
     r.database_user, r.databases, r.upstream_ca, r.ssh_host_ca, r.ssh_host_keys, r.ssh_allow_port_forwarding, r.names";

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
            ErrorCode::BadResource,
            "database_user must be 1-63 bytes with no control characters (a PostgreSQL role name)",
        ));
    }
    if r.databases.len() > 256 || !r.databases.iter().all(|d| pg_name(d)) {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
            "databases: at most 256 names of 1-63 bytes with no control characters",
        ));
    }
    if let Some(ca) = &r.upstream_ca
        && (ca.len() > 64 * 1024 || !ca.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(ApiError::bad_request(
            ErrorCode::BadResource,
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
                ErrorCode::BadResource,
                format!("{field}: at most 64 keys"),
            ));
        }
        for line in lines {
            if ssh_key::PublicKey::from_openssh(line.trim()).is_err() {
                return Err(ApiError::bad_request(
                    ErrorCode::BadResource,
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
        ApiError::not_found(
            ErrorCode::NoSuchResource,
            format!("there is no resource `{name}`"),
        )
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
    let mut tx = app.db.begin().await?;
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
            ErrorCode::NoSuchResource,
            format!("there is no resource `{name}`"),
        ));
    }
    app.audit(&ApiEvent::ResourceChange {
        actor,
        resource: name,
        change: ResourceChange::Delete {
            credentials_deleted: credentials,
        },
    })
    .await?;
    tx.commit().await?;
    Ok(())
}
