//! Connections the API authorizes: a gateway, proved by its certificate and signature,
//! acting on a user's fresh authorization signed by their live, device-bound session,
//! for a resource the user holds a grant to. `POST /v1/connections/authorize` records
//! `connection.open` and may release the credential in the same call;
//! `POST /v1/credentials/unlock` releases it alone. What is released and how is
//! [`crate::vault`]'s.

use axum::http::{HeaderMap, Method, Uri};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, VerifyingKey};
use lastmile_proto::wire::{
    ErrorCode, UnlockAuthorization, UnlockRequest, Unlocked, unlock_authorization_message,
};
use sqlx::Row as _;

use crate::{
    app::App,
    auth::{check_fresh, live_session, parse_signatures, sig_error, spend_nonce},
    config::secs,
    error::ApiError,
    events::{ApiEvent, ConnectionFields},
    vault::release,
};

/// The gateway a connection's client certificate proved, and its key.
#[derive(Debug, Clone)]
pub struct GatewayPeer {
    pub name: String,
    /// The certificate's Ed25519 key; `None` for another algorithm.
    pub key: Option<[u8; 32]>,
}

/// The gateway on the TLS connection, checked before the body is read.
pub(crate) fn require_gateway<'a>(
    peer: Option<&'a GatewayPeer>,
    what: &str,
) -> Result<&'a GatewayPeer, ApiError> {
    peer.ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::GatewayCertificateRequired,
            format!("only a gateway can {what}: present the gateway's certificate (a user session alone never suffices)"),
        )
    })
}

/// A connection the API has authorized: the gateway that asked, the user's live,
/// device-bound session, and the user's signed authorization for this one connection.
#[derive(Debug)]
pub struct Authorized {
    /// This connection's id, chosen here. (The client's `authorization.connection` is
    /// only a hint, recorded as `client_connection`: it carries the node's socket cookie,
    /// the join key to kernel events, but a client could name anything.)
    pub connection: String,
    pub gateway: String,
    pub session: crate::auth::LiveSession,
    pub authorization: UnlockAuthorization,
    /// When the grant it rests on ends (`None`: never).
    pub grant_expires_at: Option<i64>,
}

impl Authorized {
    /// What names this connection in its audit events.
    pub fn fields<'a>(&'a self, resource: &'a str) -> ConnectionFields<'a> {
        ConnectionFields {
            connection: &self.connection,
            client_connection: &self.authorization.connection,
            sock_cookie: self.authorization.connection.sock_cookie(),
            session: &self.session.id,
            user: &self.session.user,
            device: &self.session.device,
            resource,
            gateway: &self.gateway,
        }
    }
}

/// Checks everything that lets a gateway act for a user on one connection to `resource`
/// (shared by `POST /v1/connections/authorize` and `POST /v1/credentials/unlock`):
/// 1. the gateway: a valid certificate (checked at the handshake), still enrolled, and the
///    request signed with that certificate's key;
/// 2. the user's authorization for this connection: signed by a live session's key, bound
///    to its device, fresh, for this gateway and resource, never used before;
/// 3. an unexpired grant of the resource to the user or one of their groups.
pub async fn authorize(
    app: &App,
    peer: Option<&GatewayPeer>,
    signed: (&Method, &Uri, &HeaderMap, &[u8]),
    resource: &str,
    authorization: Option<&UnlockAuthorization>,
    authorization_signature: Option<&str>,
) -> Result<Authorized, ApiError> {
    let (method, uri, headers, body) = signed;
    let gw = require_gateway(peer, "act for a user")?;
    crate::gateways::require_active(app, gw).await?;
    let key = gw
        .key
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| {
            ApiError::forbidden(
                ErrorCode::GatewayKeyUnsupported,
                "the gateway's certificate key is not Ed25519; enroll it again with an Ed25519 key",
            )
        })?;
    let sigs = parse_signatures(method, uri, headers, body)?;
    let sig = sigs.iter().find(|s| s.label == "gateway").ok_or_else(|| {
        ApiError::unauthorized(
            ErrorCode::SignatureMissing,
            "an unlock must be signed by the gateway's key with the label `gateway`",
        )
    })?;
    if sig.keyid != gw.name {
        return Err(ApiError::unauthorized(
            ErrorCode::BadSignature,
            "the gateway signature's keyid is not the certificate's gateway",
        ));
    }
    sig.verify(&key).map_err(sig_error)?;
    check_fresh(app, sig)?;
    let t = app.clock.now();
    let window = secs(app.config.signature_window);
    if !spend_nonce(
        app,
        &format!("gateway:{}", gw.name),
        &sig.nonce,
        sig.created,
    )
    .await?
    {
        return Err(ApiError::unauthorized(
            ErrorCode::ReplayedNonce,
            "this gateway request was already made (its nonce is spent)",
        ));
    }

    // 2. The user's authorization for this connection.
    let (Some(authz), Some(authz_sig)) = (authorization, authorization_signature) else {
        return Err(ApiError::unauthorized(
            ErrorCode::AuthorizationMissing,
            "an unlock needs the user's per-connection authorization, signed by their session key: a gateway alone never suffices",
        ));
    };
    if authz.gateway.as_str() != gw.name {
        return Err(ApiError::forbidden(
            ErrorCode::AuthorizationOtherGateway,
            format!(
                "the authorization is for gateway `{}`, not `{}`",
                authz.gateway, gw.name
            ),
        ));
    }
    if authz.resource != resource {
        return Err(ApiError::forbidden(
            ErrorCode::AuthorizationOtherResource,
            format!(
                "the authorization is for resource `{}`, not `{}`",
                authz.resource, resource
            ),
        ));
    }
    if (authz.created - t).abs() > window {
        return Err(ApiError::unauthorized(
            ErrorCode::StaleAuthorization,
            format!(
                "the authorization was made at {} and the server's clock says {t}: more than {window}s apart",
                authz.created
            ),
        ));
    }
    if authz.nonce.len() < 16
        || authz.nonce.len() > 128
        || authz.connection.as_str().is_empty()
        || authz.connection.as_str().len() > 128
    {
        return Err(ApiError::bad_request(
            ErrorCode::BadAuthorization,
            "the authorization's nonce must be 16-128 characters and its connection 1-128",
        ));
    }
    let session = live_session(app, &authz.session).await?;
    let signature = B64
        .decode(authz_sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let signed = signature.is_some_and(|s| {
        session.session_key().is_ok_and(|k| {
            k.verify_strict(&unlock_authorization_message(authz), &s)
                .is_ok()
        })
    });
    if !signed {
        return Err(ApiError::unauthorized(
            ErrorCode::BadAuthorizationSignature,
            "the authorization is not signed by the session's key",
        ));
    }
    if !spend_nonce(
        app,
        &format!("authz:{}", session.id),
        &authz.nonce,
        authz.created,
    )
    .await?
    {
        return Err(ApiError::unauthorized(
            ErrorCode::ReplayedAuthorization,
            "this authorization was already used: each connection needs its own",
        ));
    }
    // The session key signed this device id: a mismatch is its holder's own doing.
    if authz.device.as_str() != session.device {
        return Err(session.presented_elsewhere(app, &authz.device).await);
    }
    session.check_standing()?;

    // 3. The grant.
    let grants = sqlx::query(
        "SELECT g.expires_at FROM grants g WHERE g.resource = $1 AND \
         ((g.subject_kind = 'user' AND g.subject = $2) OR \
          (g.subject_kind = 'group' AND g.subject IN (SELECT group_name FROM group_members WHERE user_name = $2)))",
    )
    .bind(resource)
    .bind(&session.user)
    .fetch_all(&app.db.pool)
    .await?;
    let expiries: Vec<Option<i64>> = grants
        .iter()
        .map(|r| r.try_get("expires_at"))
        .collect::<Result<_, _>>()?;
    if !expiries.iter().any(|e| e.is_none_or(|e| e > t)) {
        return Err(if expiries.is_empty() {
            ApiError::forbidden(
                ErrorCode::NoGrant,
                format!("user `{}` has no grant for `{}`", session.user, resource),
            )
        } else {
            ApiError::forbidden(
                ErrorCode::GrantExpired,
                format!(
                    "user `{}`'s grant for `{}` has expired",
                    session.user, resource
                ),
            )
        });
    }

    // The latest end among the grants in force (none: one never ends).
    let grant_expires_at = if expiries.iter().any(Option::is_none) {
        None
    } else {
        expiries.iter().flatten().copied().filter(|e| *e > t).max()
    };
    Ok(Authorized {
        connection: crate::auth::new_id("conn")?,
        gateway: gw.name.clone(),
        session,
        authorization: authz.clone(),
        grant_expires_at,
    })
}

/// `POST /v1/credentials/unlock`.
pub async fn unlock(
    app: &App,
    peer: Option<&GatewayPeer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Unlocked, ApiError> {
    require_gateway(peer, "unlock a credential")?;
    let req: UnlockRequest = crate::error::json(body)?;
    let authorized = authorize(
        app,
        peer,
        (method, uri, headers, body),
        &req.resource,
        req.authorization.as_ref(),
        req.authorization_signature.as_deref(),
    )
    .await?;
    release(
        app,
        &authorized,
        &req.resource,
        &req.recipient,
        req.ssh_public_key.as_deref(),
    )
    .await
}

/// `POST /v1/connections/authorize`: may this gateway open `resource` for the user whose
/// authorization it carries? The `connection.open` audit event is written before the
/// answer; no record, no connection.
pub async fn authorize_connection(
    app: &App,
    peer: Option<&GatewayPeer>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<lastmile_proto::wire::ConnectionAuthorized, ApiError> {
    require_gateway(peer, "open a connection")?;
    let req: lastmile_proto::wire::ConnectionRequest = crate::error::json(body)?;
    // Read before the session is checked: a revocation after the check is after this.
    let revocations_after = app.revocations.last();
    let a = authorize(
        app,
        peer,
        (method, uri, headers, body),
        &req.resource,
        req.authorization.as_ref(),
        req.authorization_signature.as_deref(),
    )
    .await?;
    let resource = crate::admin::resource(app, &req.resource).await?;
    app.audit(&ApiEvent::ConnectionOpen {
        connection: a.fields(&req.resource),
    })
    .await?;
    // The same authorization covers the credential: a handler that logs in upstream
    // asks for both in one call (one nonce, one round trip).
    let logs_in = resource.kind != lastmile_proto::wire::ResourceKind::Tcp;
    let credential = match &req.recipient {
        Some(recipient) if logs_in && resource.credential.is_some() => Some(
            release(
                app,
                &a,
                &req.resource,
                recipient,
                req.ssh_public_key.as_deref(),
            )
            .await?,
        ),
        _ => None,
    };
    Ok(lastmile_proto::wire::ConnectionAuthorized {
        resource,
        // Names in the database were checked when they were made.
        user: lastmile_proto::wire::UserName::parse(a.session.user.clone())
            .map_err(ApiError::internal)?,
        session: a.session.id.clone().into(),
        device: a.session.device.clone().into(),
        session_expires_at: a.session.expires_at,
        grant_expires_at: a.grant_expires_at,
        credential,
        revocations_after: Some(revocations_after),
        connection: a.connection.clone().into(),
    })
}
