//! Certificate identities that are not gateways: nodes (a host's interception, which
//! writes `kernel.connect` and `node.handoff` to the audit log) and security readers of
//! the audit log. Each gets a client certificate from the organisation's CA naming it
//! (`urn:lastmile:node:NAME`, `urn:lastmile:audit-reader:NAME`), so the audit service can
//! accept writers and readers by role (`role:node`, `role:audit-reader`) instead of
//! certificates made by hand.
//!
//! A node enrolls like a gateway: an admin makes a one-time token
//! (`lastmile-api nodes token NAME`), the node makes its own key and sends a CSR with it
//! (`lastmiled node enroll`). A node's certificate lasts `node_certificate_ttl` and is not
//! renewed in place yet: enroll again with a new token before it ends. A reader's
//! certificate is issued by an admin for a CSR (`lastmile-api audit-readers issue`).

use lastmile_proto::wire::{ErrorCode, NodeCertificate, NodeToken, uri, valid_name};
use sqlx::Row as _;

use crate::{
    app::App,
    config::secs,
    error::ApiError,
    events::{ApiEvent, IdentityChange},
    gateways::{one_time_token, token_hash},
};

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::BadName,
            format!("{what} names are 1-64 of a-z 0-9 . _ - starting with a letter or digit"),
        ))
    }
}

fn issued(e: crate::pki::PkiError) -> ApiError {
    match e {
        crate::pki::PkiError::BadCsr(why) => ApiError::bad_request(ErrorCode::BadCsr, why),
        e => ApiError::internal(lastmile_audit_sink::error_chain(&e)),
    }
}

/// A one-time token for `name` to enroll as a node, valid `ttl` seconds. Only its hash
/// is stored.
pub async fn new_token(
    app: &App,
    actor: &str,
    name: &str,
    ttl: i64,
) -> Result<NodeToken, ApiError> {
    check_name("node", name)?;
    let token = one_time_token("lmnd", ttl)?;
    let expires_at = app.clock.now() + ttl;
    let mut tx = app.db.begin().await?;
    sqlx::query(
        "INSERT INTO gateway_tokens (token_hash, name, addresses, expires_at, created_by, role) \
         VALUES ($1, $2, '[]', $3, $4, 'node')",
    )
    .bind(token_hash(&token))
    .bind(name)
    .bind(expires_at)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::IdentityChange {
        actor,
        identity: &uri::node(name),
        change: IdentityChange::Token { expires_at },
    })
    .await?;
    tx.commit().await?;
    Ok(NodeToken {
        name: name.to_owned(),
        token,
        expires_at,
    })
}

/// `POST /v1/nodes/enroll`: spends a node token (once, and only if the certificate is
/// issued) and certifies the CSR's key.
pub async fn enroll(app: &App, token: &str, csr: &str) -> Result<NodeCertificate, ApiError> {
    let t = app.clock.now();
    let mut tx = app.db.begin().await?;
    let row = sqlx::query(
        "UPDATE gateway_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL \
         AND expires_at > $1 AND role = 'node' RETURNING name",
    )
    .bind(t)
    .bind(token_hash(token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::BadToken,
            "this node enrollment token is unknown, expired or already used: ask an admin \
             for a new one (`lastmile-api nodes token NAME`)",
        )
    })?;
    let name: String = row.try_get("name")?;
    let identity = uri::node(&name);
    let expires_at = t + secs(app.config.node_certificate_ttl);
    let certificate = app
        .pki
        .client_certificate(&name, identity.clone(), csr, expires_at)
        .map_err(issued)?;
    app.audit(&ApiEvent::IdentityChange {
        actor: &identity,
        identity: &identity,
        change: IdentityChange::Enroll { expires_at },
    })
    .await?;
    tx.commit().await?;
    Ok(NodeCertificate {
        name,
        certificate,
        ca: app.pki.ca_pem().to_owned(),
        expires_at,
    })
}

/// `lastmile-api audit-readers issue`: a security reader's certificate for the key in
/// `csr`, valid `ttl` seconds.
pub async fn issue_reader(
    app: &App,
    actor: &str,
    name: &str,
    csr: &str,
    ttl: i64,
) -> Result<NodeCertificate, ApiError> {
    check_name("reader", name)?;
    if !(3600..=366 * 86_400).contains(&ttl) {
        return Err(ApiError::bad_request(
            ErrorCode::BadTtl,
            "a reader certificate lasts between an hour and 366 days",
        ));
    }
    let identity = uri::audit_reader(name);
    let expires_at = app.clock.now() + ttl;
    let certificate = app
        .pki
        .client_certificate(name, identity.clone(), csr, expires_at)
        .map_err(issued)?;
    app.audit(&ApiEvent::IdentityChange {
        actor,
        identity: &identity,
        change: IdentityChange::Issue { expires_at },
    })
    .await?;
    Ok(NodeCertificate {
        name: name.to_owned(),
        certificate,
        ca: app.pki.ca_pem().to_owned(),
        expires_at,
    })
}
