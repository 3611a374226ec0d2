//! Gateway identities: an admin makes a one-time enrollment token; the gateway makes its
//! own key, sends a CSR with the token, and gets a short-lived certificate; before it
//! ends, the gateway renews over mutual TLS with the certificate it still holds.

use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{
    Announce, Gateway, GatewayCertificate, GatewayEndpoint, GatewayToken, NewGatewayToken,
};
use sha2::Digest as _;
use sqlx::Row as _;

use crate::{
    app::App,
    config::secs,
    connections::GatewayPeer,
    error::ApiError,
    events::{ApiEvent, GatewayChange},
    pki::random,
};

pub(crate) fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new one-time enrollment token, `PREFIX_<48 hex>`, after checking that its `ttl`
/// (seconds) is between a minute and a week.
pub(crate) fn one_time_token(prefix: &str, ttl: i64) -> Result<String, ApiError> {
    if !(60..=7 * 86_400).contains(&ttl) {
        return Err(ApiError::bad_request(
            ErrorCode::BadTtl,
            "ttl must be between 60 seconds and 7 days",
        ));
    }
    Ok(format!(
        "{prefix}_{}",
        random::<24>()
            .map_err(ApiError::internal)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// Makes a one-time enrollment token. Only its hash is stored.
pub async fn new_token(
    app: &App,
    actor: &str,
    req: NewGatewayToken,
) -> Result<GatewayToken, ApiError> {
    if !lastmile_proto::wire::valid_name(&req.name) {
        return Err(ApiError::bad_request(
            ErrorCode::BadName,
            "gateway names are 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        ));
    }
    for a in &req.addresses {
        let ok = a.parse::<std::net::IpAddr>().is_ok()
            || (!a.is_empty()
                && a.len() <= 253
                && a.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !ok {
            return Err(ApiError::bad_request(
                ErrorCode::BadAddress,
                format!("`{a}` is neither a DNS name nor an IP address"),
            ));
        }
    }
    let ttl = req.ttl.unwrap_or(3600);
    let token = one_time_token("lmgw", ttl)?;
    let expires_at = app.clock.now() + ttl;
    let mut tx = app.db.begin().await?;
    sqlx::query(
        "INSERT INTO gateway_tokens (token_hash, name, addresses, expires_at, created_by) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash(&token))
    .bind(&req.name)
    .bind(serde_json::to_string(&req.addresses).map_err(ApiError::internal)?)
    .bind(expires_at)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::GatewayChange {
        actor,
        gateway: &req.name,
        change: GatewayChange::Token {
            addresses: &req.addresses,
            expires_at,
        },
    })
    .await?;
    tx.commit().await?;
    Ok(GatewayToken {
        name: req.name,
        token,
        expires_at,
    })
}

async fn issue(
    app: &App,
    name: &str,
    addresses: &[String],
    csr: &str,
) -> Result<GatewayCertificate, ApiError> {
    let expires_at = app.clock.now() + secs(app.config.gateway_certificate_ttl);
    let certificate = app
        .pki
        .gateway_certificate(name, addresses, csr, expires_at)
        .map_err(|e| match e {
            crate::pki::PkiError::BadCsr(why) => ApiError::bad_request(ErrorCode::BadCsr, why),
            e => ApiError::internal(error_chain(&e)),
        })?;
    Ok(GatewayCertificate {
        name: name.to_owned(),
        certificate,
        ca: app.pki.ca_pem().to_owned(),
        expires_at,
    })
}

/// `POST /v1/gateways/enroll`: spends the token (once) and certifies the CSR's key.
pub async fn enroll(app: &App, token: &str, csr: &str) -> Result<GatewayCertificate, ApiError> {
    let t = app.clock.now();
    let mut tx = app.db.begin().await?;
    let row = sqlx::query(
        "UPDATE gateway_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
         AND role = 'gateway' RETURNING name, addresses",
    )
    .bind(t)
    .bind(token_hash(token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        ApiError::unauthorized(ErrorCode::BadToken, "this enrollment token is unknown, expired or already used: ask an admin for a new one (`lastmile-api gateways token NAME`)")
    })?;
    let name: String = row.try_get("name")?;
    let addresses: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("addresses")?)
        .map_err(ApiError::internal)?;
    let cert = issue(app, &name, &addresses, csr).await?;
    let key = certificate_key(&cert.certificate)?;
    if key_revoked(&mut tx, &key).await? {
        return Err(ApiError::forbidden(
            ErrorCode::GatewayKeyRevoked,
            "this key belonged to a revoked gateway certificate: enroll with a new key \
             (remove gateway.key from the gateway's state_dir, then enroll again)",
        ));
    }
    // Enrolling a name again retires the key it had: its certificate stops working.
    let previous: Option<String> = sqlx::query("SELECT key FROM gateways WHERE name = $1")
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("key"))
        .transpose()?
        .flatten();
    if let Some(old) = previous.filter(|old| *old != key) {
        revoke_key(&mut tx, &name, &old, t).await?;
    }
    sqlx::query(
        "INSERT INTO gateways (name, addresses, cert_expires_at, enrolled_at, key) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET addresses = $2, cert_expires_at = $3, enrolled_at = $4, key = $5, revoked_at = NULL",
    )
    .bind(&name)
    .bind(serde_json::to_string(&addresses).map_err(ApiError::internal)?)
    .bind(cert.expires_at)
    .bind(t)
    .bind(&key)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::GatewayChange {
        actor: &format!("gateway:{name}"),
        gateway: &name,
        change: GatewayChange::Enroll {
            expires_at: cert.expires_at,
        },
    })
    .await?;
    tx.commit().await?;
    Ok(cert)
}

/// `POST /v1/gateways/renew`: the caller proved (mutual TLS) it holds a valid
/// certificate for `peer`'s name and key. A CSR for another key rotates the key: the
/// old one is revoked with the old certificate.
pub async fn renew(
    app: &App,
    peer: &GatewayPeer,
    csr: &str,
) -> Result<GatewayCertificate, ApiError> {
    let name = require_active(app, peer).await?;
    let mut tx = app.db.begin().await?;
    let row =
        sqlx::query("SELECT addresses, key FROM gateways WHERE name = $1 AND revoked_at IS NULL")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                ApiError::forbidden(
                    ErrorCode::GatewayRevoked,
                    format!("gateway `{name}` was revoked; enroll it again with a new token"),
                )
            })?;
    let addresses: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("addresses")?)
        .map_err(ApiError::internal)?;
    let old: Option<String> = row.try_get("key")?;
    let cert = issue(app, name, &addresses, csr).await?;
    let key = certificate_key(&cert.certificate)?;
    if key_revoked(&mut tx, &key).await? {
        return Err(ApiError::forbidden(
            ErrorCode::GatewayKeyRevoked,
            "the CSR's key belonged to a revoked gateway certificate: renew with a new key",
        ));
    }
    if let Some(old) = old.filter(|old| *old != key) {
        revoke_key(&mut tx, name, &old, app.clock.now()).await?;
    }
    sqlx::query("UPDATE gateways SET cert_expires_at = $1, key = $2 WHERE name = $3")
        .bind(cert.expires_at)
        .bind(&key)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    app.audit(&ApiEvent::GatewayChange {
        actor: &format!("gateway:{name}"),
        gateway: name,
        change: GatewayChange::Renew {
            expires_at: cert.expires_at,
        },
    })
    .await?;
    tx.commit().await?;
    Ok(cert)
}

/// Whether `peer` is an enrolled, unrevoked gateway presenting its current key. A
/// gateway enrolled before keys were recorded has its key taken from its first
/// certificate seen.
pub async fn is_active(app: &App, peer: &GatewayPeer) -> Result<bool, ApiError> {
    let Some(key) = peer.key.as_ref().map(hex) else {
        return Ok(false);
    };
    let row = sqlx::query(
        "SELECT key, (SELECT COUNT(*) FROM revoked_gateway_keys r WHERE r.key = $2) AS revoked \
         FROM gateways WHERE name = $1 AND revoked_at IS NULL",
    )
    .bind(&peer.name)
    .bind(&key)
    .fetch_optional(&app.db.pool)
    .await?;
    let Some(row) = row else { return Ok(false) };
    if row.try_get::<i64, _>("revoked")? > 0 {
        return Ok(false);
    }
    match row.try_get::<Option<String>, _>("key")? {
        Some(current) => Ok(current == key),
        None => {
            let n = sqlx::query("UPDATE gateways SET key = $1 WHERE name = $2 AND key IS NULL")
                .bind(&key)
                .bind(&peer.name)
                .execute(&app.db.pool)
                .await?
                .rows_affected();
            // Another request may have filled it in first, with another key.
            Ok(n == 1 || {
                let now: Option<String> = sqlx::query("SELECT key FROM gateways WHERE name = $1")
                    .bind(&peer.name)
                    .fetch_one(&app.db.pool)
                    .await?
                    .try_get("key")?;
                now.as_deref() == Some(key.as_str())
            })
        }
    }
}

fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex Ed25519 key of a PEM gateway certificate this API just issued.
fn certificate_key(pem: &str) -> Result<String, ApiError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(ApiError::internal)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(ApiError::internal)?;
    let raw = <[u8; 32]>::try_from(cert.public_key().subject_public_key.data.as_ref())
        .map_err(|_| ApiError::internal("a gateway certificate's key is not 32 bytes"))?;
    Ok(hex(&raw))
}

async fn key_revoked(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    key: &str,
) -> Result<bool, ApiError> {
    Ok(
        sqlx::query("SELECT COUNT(*) AS n FROM revoked_gateway_keys WHERE key = $1")
            .bind(key)
            .fetch_one(&mut **tx)
            .await?
            .try_get::<i64, _>("n")?
            > 0,
    )
}

async fn revoke_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
    key: &str,
    at: i64,
) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO revoked_gateway_keys (key, name, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(name)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn revoke(app: &App, actor: &str, name: &str) -> Result<(), ApiError> {
    let mut tx = app.db.begin().await?;
    let n =
        sqlx::query("UPDATE gateways SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(app.clock.now())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            ErrorCode::NoSuchGateway,
            format!("there is no active gateway `{name}`"),
        ));
    }
    // The key stays revoked when the name is enrolled again.
    let key: Option<String> = sqlx::query("SELECT key FROM gateways WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .try_get("key")?;
    if let Some(key) = key {
        revoke_key(&mut tx, name, &key, app.clock.now()).await?;
    }
    app.audit(&ApiEvent::GatewayChange {
        actor,
        gateway: name,
        change: GatewayChange::Revoke,
    })
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list(app: &App) -> Result<Vec<Gateway>, ApiError> {
    sqlx::query("SELECT name, addresses, cert_expires_at, enrolled_at FROM gateways WHERE revoked_at IS NULL ORDER BY name")
        .fetch_all(&app.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Gateway {
                name: r.try_get("name")?,
                addresses: serde_json::from_str(&r.try_get::<String, _>("addresses")?).map_err(ApiError::internal)?,
                certificate_expires_at: r.try_get("cert_expires_at")?,
                enrolled_at: r.try_get("enrolled_at")?,
            })
        })
        .collect()
}

/// Records where agents reach `name`'s tunnel. The host must be one of the addresses its
/// certificate names, or agents could not verify it.
pub async fn announce(
    app: &App,
    peer: &GatewayPeer,
    a: &Announce,
) -> Result<GatewayEndpoint, ApiError> {
    let name = require_active(app, peer).await?;
    let bad = || {
        ApiError::bad_request(
            ErrorCode::BadTunnel,
            format!("tunnel `{}` is not HOST:PORT with a port above 0", a.tunnel),
        )
    };
    let (host, port) = a.tunnel.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if port.parse::<u16>().map_err(|_| bad())? == 0 {
        return Err(bad());
    }
    let mut tx = app.db.begin().await?;
    let row = sqlx::query("SELECT addresses FROM gateways WHERE name = $1 AND revoked_at IS NULL")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            ApiError::forbidden(
                ErrorCode::GatewayRevoked,
                format!("gateway `{name}` was revoked or is not enrolled"),
            )
        })?;
    let addresses: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("addresses")?)
        .map_err(ApiError::internal)?;
    if !addresses.iter().any(|x| x == host) {
        return Err(ApiError::bad_request(
            ErrorCode::TunnelNotInCertificate,
            format!(
                "`{host}` is not one of gateway `{name}`'s certificate addresses ({}): agents could not verify it; enroll with `--address {host}`",
                addresses.join(", ")
            ),
        ));
    }
    let t = app.clock.now();
    let previous: Option<String> = sqlx::query("SELECT tunnel FROM gateways WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *tx)
        .await?
        .try_get("tunnel")?;
    sqlx::query("UPDATE gateways SET tunnel = $1, announced_at = $2 WHERE name = $3")
        .bind(&a.tunnel)
        .bind(t)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if previous.as_deref() != Some(a.tunnel.as_str()) {
        app.audit(&ApiEvent::GatewayChange {
            actor: &format!("gateway:{name}"),
            gateway: name,
            change: GatewayChange::Announce { tunnel: &a.tunnel },
        })
        .await?;
    }
    tx.commit().await?;
    Ok(GatewayEndpoint {
        name: name.to_owned(),
        tunnel: a.tunnel.clone(),
    })
}

/// The active gateways that announced a tunnel, in name order.
pub async fn endpoints(app: &App) -> Result<Vec<GatewayEndpoint>, ApiError> {
    sqlx::query(
        "SELECT name, tunnel FROM gateways WHERE revoked_at IS NULL AND tunnel IS NOT NULL ORDER BY name",
    )
    .fetch_all(&app.db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(GatewayEndpoint {
            name: r.try_get("name")?,
            tunnel: r.try_get("tunnel")?,
        })
    })
    .collect()
}

/// The names a resource's TLS certificate is valid for: its host, and each single
/// protected address (a prefix names no one host).
pub fn resource_names(r: &lastmile_proto::wire::Resource) -> Vec<String> {
    with_protected_hosts(vec![r.host.clone()], r)
}

/// `names`, then each single protected host or address of `r` without its port (a
/// prefix names no one host) not among them yet.
fn with_protected_hosts(mut names: Vec<String>, r: &lastmile_proto::wire::Resource) -> Vec<String> {
    for n in &r.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    for p in &r.protect {
        if let Some((host, _)) = p.rsplit_once(':') {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !host.is_empty() && !host.contains('/') && !names.iter().any(|n| n == host) {
                names.push(host.to_owned());
            }
        }
    }
    names
}

/// `peer`'s name, when it is an enrolled, unrevoked gateway presenting its current key.
pub async fn require_active<'a>(app: &App, peer: &'a GatewayPeer) -> Result<&'a str, ApiError> {
    if is_active(app, peer).await? {
        Ok(peer.name.as_str())
    } else {
        Err(ApiError::forbidden(
            ErrorCode::GatewayRevoked,
            format!(
                "gateway `{}` was revoked, is not enrolled, or this certificate's key is no longer its key; enroll it again with a new token",
                peer.name
            ),
        ))
    }
}

/// `POST /v1/gateways/resource-certificate`: a TLS certificate for a `postgres`
/// resource, for gateway `name` to present to clients that ask for TLS.
pub async fn resource_certificate(
    app: &App,
    peer: &GatewayPeer,
    req: &lastmile_proto::wire::ResourceCertificateRequest,
) -> Result<lastmile_proto::wire::ResourceCertificate, ApiError> {
    let name = require_active(app, peer).await?;
    let resource = crate::admin::resource(app, &req.resource).await?;
    if resource.kind != lastmile_proto::wire::ResourceKind::Postgres {
        return Err(ApiError::bad_request(
            ErrorCode::NoTlsForKind,
            format!(
                "resource `{}` is not a postgres resource: only those are served over TLS by gateways",
                resource.name
            ),
        ));
    }
    let names = resource_names(&resource);
    let expires_at = app.clock.now() + secs(app.config.gateway_certificate_ttl);
    let certificate = app
        .pki
        .resource_certificate(&resource.name, &names, &req.csr, expires_at)
        .map_err(|e| match e {
            crate::pki::PkiError::BadCsr(why) => ApiError::bad_request(ErrorCode::BadCsr, why),
            e => ApiError::internal(error_chain(&e)),
        })?;
    app.audit(&ApiEvent::GatewayChange {
        actor: &format!("gateway:{name}"),
        gateway: name,
        change: GatewayChange::ResourceCertificate {
            resource: &resource.name,
            names: &names,
            expires_at,
        },
    })
    .await?;
    Ok(lastmile_proto::wire::ResourceCertificate {
        resource: resource.name,
        certificate,
        names,
        expires_at,
    })
}

/// The principals of a gateway's SSH host certificate for `r`: the resource's name, its
/// DNS names, and each protected host or address without its port (a prefix names no one host). These
/// are what users dial, and what `lastmile login`'s `@cert-authority` line covers.
pub fn ssh_host_principals(r: &lastmile_proto::wire::Resource) -> Vec<String> {
    with_protected_hosts(vec![r.name.clone()], r)
}

/// `POST /v1/gateways/ssh-host-certificate`: an OpenSSH host certificate for gateway
/// `name`'s SSH host key, naming an `ssh` resource's protected names, so the user's
/// `ssh` (trusting the SSH host CA through `lastmile login`'s `@cert-authority` line)
/// accepts the gateway as the target.
pub async fn ssh_host_certificate(
    app: &App,
    peer: &GatewayPeer,
    req: &lastmile_proto::wire::SshHostCertificateRequest,
) -> Result<lastmile_proto::wire::SshHostCertificate, ApiError> {
    let name = require_active(app, peer).await?;
    let resource = crate::admin::resource(app, &req.resource).await?;
    if resource.kind != lastmile_proto::wire::ResourceKind::Ssh {
        return Err(ApiError::bad_request(
            ErrorCode::NotSsh,
            format!(
                "resource `{}` is not an ssh resource: only those get SSH host certificates",
                resource.name
            ),
        ));
    }
    let key = ssh_key::PublicKey::from_openssh(req.public_key.trim()).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::BadSshPublicKey,
            "public_key is not an OpenSSH public key line",
        )
    })?;
    let principals = ssh_host_principals(&resource);
    let expires_at = app.clock.now() + secs(app.config.ssh_host_certificate_ttl);
    let certificate = app
        .pki
        .ssh_host_certificate(
            &key,
            &principals,
            &format!("gateway:{name}/{}", resource.name),
            expires_at,
        )
        .map_err(|e| ApiError::internal(error_chain(&e)))?;
    let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    app.audit(&ApiEvent::GatewayChange {
        actor: &format!("gateway:{name}"),
        gateway: name,
        change: GatewayChange::SshHostCertificate {
            resource: &resource.name,
            principals: &principals,
            key: &fingerprint,
            expires_at,
        },
    })
    .await?;
    Ok(lastmile_proto::wire::SshHostCertificate {
        resource: resource.name,
        certificate,
        principals,
        expires_at,
    })
}
