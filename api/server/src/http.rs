//! The HTTPS front: TLS 1.3 with an optional client certificate (gateways present theirs;
//! users sign their calls instead), the routes, and the revocation stream.

use lastmile_proto::wire::ErrorCode;
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{FromRequest, Path, Query, Request, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{delete, get, post, put},
};
use lastmile_proto::wire::{
    self, DevicePolicy, DeviceStatus, Me, NewGatewayToken, NewGrant, NewUser, Resource,
};
use serde::Deserialize;

mod server;
pub use server::serve;

use crate::{
    admin::{self, UserChange},
    app::App,
    auth::{self, Caller},
    error::{ApiError, json},
    gateways,
    revocation::Feed,
};

/// Every route, as the OpenAPI document must list it (a test checks both ways).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/openapi.json"),
    ("get", "/v1/health"),
    ("get", "/v1/ca"),
    ("post", "/v1/login/challenge"),
    ("post", "/v1/login"),
    ("post", "/v1/session/refresh"),
    ("post", "/v1/logout"),
    ("get", "/v1/me"),
    ("get", "/v1/resources"),
    ("get", "/v1/revocations"),
    ("post", "/v1/gateways/enroll"),
    ("post", "/v1/nodes/enroll"),
    ("post", "/v1/gateways/renew"),
    ("post", "/v1/gateways/announce"),
    ("post", "/v1/gateways/resource-certificate"),
    ("post", "/v1/gateways/ssh-host-certificate"),
    ("get", "/v1/gateways"),
    ("post", "/v1/connections/authorize"),
    ("post", "/v1/credentials/unlock"),
    ("get", "/v1/admin/credentials"),
    ("get", "/v1/admin/users"),
    ("post", "/v1/admin/users"),
    ("delete", "/v1/admin/users/{name}"),
    ("post", "/v1/admin/users/{name}/{action}"),
    ("get", "/v1/admin/resources"),
    ("put", "/v1/admin/resources/{name}"),
    ("delete", "/v1/admin/resources/{name}"),
    ("get", "/v1/admin/grants"),
    ("post", "/v1/admin/grants"),
    ("delete", "/v1/admin/grants/{id}"),
    ("get", "/v1/admin/devices"),
    ("post", "/v1/admin/devices/{id}/{action}"),
    ("get", "/v1/admin/sessions"),
    ("post", "/v1/admin/sessions/{id}/revoke"),
    ("get", "/v1/admin/gateways"),
    ("post", "/v1/admin/gateways/tokens"),
    ("delete", "/v1/admin/gateways/{name}"),
    ("put", "/v1/admin/org/device-policy"),
];

pub const OPENAPI: &str = include_str!("../openapi.json");

/// The gateway a connection's client certificate names, if it presented one.
#[derive(Debug, Clone)]
pub struct Peer(pub Option<crate::connections::GatewayPeer>);

/// A signed call's caller and body.
#[derive(Debug)]
pub struct Signed {
    pub caller: Caller,
    pub body: Bytes,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than this API accepts ({limit} bytes)"),
    )
}

async fn read_body(
    req: Request,
    limit: usize,
) -> Result<(axum::http::request::Parts, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    Ok((parts, bytes))
}

/// Refuses a declared oversized body before any handler runs (and closes the
/// connection, since the body will not be read).
async fn limit_declared_body(
    State(app): State<Arc<App>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = app.config.max_body_bytes;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        let mut r = too_large(limit).into_response();
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return r;
    }
    next.run(req).await
}

impl FromRequest<Arc<App>> for Signed {
    type Rejection = ApiError;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let (parts, body) = read_body(req, app.config.max_body_bytes).await?;
        let caller =
            auth::authenticate(app, &parts.method, &parts.uri, &parts.headers, &body).await?;
        Ok(Self { caller, body })
    }
}

/// An unsigned call's body, size-limited, with a JSON error when it is too large.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl FromRequest<Arc<App>> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        Ok(Self(read_body(req, app.config.max_body_bytes).await?.1))
    }
}

fn admin_only(c: &Caller) -> Result<String, ApiError> {
    if c.admin {
        Ok(format!("user:{}", c.user))
    } else {
        Err(ApiError::forbidden(
            ErrorCode::NotAdmin,
            "this call needs an admin",
        ))
    }
}

type Reply = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> Reply {
    Ok(Json(v).into_response())
}

fn done() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/ca", get(ca))
        .route("/v1/login/challenge", post(login_challenge))
        .route("/v1/login", post(login))
        .route("/v1/session/refresh", post(refresh))
        .route("/v1/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/v1/resources", get(my_resources))
        .route("/v1/revocations", get(revocations))
        .route("/v1/gateways/enroll", post(enroll))
        .route("/v1/nodes/enroll", post(enroll_node))
        .route("/v1/gateways/renew", post(renew))
        .route("/v1/gateways/announce", post(announce))
        .route(
            "/v1/gateways/resource-certificate",
            post(resource_certificate),
        )
        .route(
            "/v1/gateways/ssh-host-certificate",
            post(ssh_host_certificate),
        )
        .route("/v1/gateways", get(gateway_endpoints))
        .route("/v1/connections/authorize", post(authorize_connection))
        .route("/v1/credentials/unlock", post(unlock))
        .route("/v1/admin/credentials", get(credentials))
        .route("/v1/admin/users", get(users).post(add_user))
        .route("/v1/admin/users/{name}", delete(delete_user))
        .route("/v1/admin/users/{name}/{action}", post(user_action))
        .route("/v1/admin/resources", get(resources))
        .route(
            "/v1/admin/resources/{name}",
            put(put_resource).delete(delete_resource),
        )
        .route("/v1/admin/grants", get(grants).post(add_grant))
        .route("/v1/admin/grants/{id}", delete(revoke_grant))
        .route("/v1/admin/devices", get(devices))
        .route("/v1/admin/devices/{id}/{action}", post(device_action))
        .route("/v1/admin/sessions", get(sessions))
        .route("/v1/admin/sessions/{id}/revoke", post(revoke_session))
        .route("/v1/admin/gateways", get(list_gateways))
        .route("/v1/admin/gateways/tokens", post(gateway_token))
        .route("/v1/admin/gateways/{name}", delete(revoke_gateway))
        .route("/v1/admin/org/device-policy", put(device_policy))
        .fallback(|| async {
            ApiError::not_found(
                ErrorCode::NoSuchEndpoint,
                "no such endpoint; the API is described at /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_declared_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::metrics::track,
        ))
        .with_state(app)
}

async fn ca(State(app): State<Arc<App>>) -> Json<wire::CaBundle> {
    Json(app.pki.bundle())
}

async fn login_challenge(State(app): State<Arc<App>>, Body(b): Body) -> Reply {
    ok(crate::login::challenge(&app, json(&b)?).await?)
}

async fn login(State(app): State<Arc<App>>, Body(b): Body) -> Reply {
    let r = crate::login::login(&app, json(&b)?).await;
    app.metrics.login(&r);
    ok(r?)
}

async fn refresh(State(app): State<Arc<App>>, s: Signed) -> Reply {
    ok(auth::refresh(&app, &s.caller).await?)
}

async fn logout(State(app): State<Arc<App>>, s: Signed) -> Reply {
    auth::revoke_session(
        &app,
        &s.caller.session,
        "logout",
        &format!("user:{}", s.caller.user),
    )
    .await?;
    done()
}

async fn me(s: Signed) -> Reply {
    let c = s.caller;
    ok(Me {
        user: c.user,
        admin: c.admin,
        device: c.device,
        session: c.session,
        session_expires_at: c.session_expires_at,
    })
}

/// `GET /v1/resources`: a user's granted resources; for a gateway (client certificate),
/// every resource, since its node protects them all.
async fn my_resources(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Reply {
    match &peer.0 {
        Some(gw) => {
            active_gateway(&app, gw).await?;
            ok(admin::list_resources(&app).await?)
        }
        None => {
            let s = Signed::from_request(req, &app).await?;
            ok(admin::resources_for(&app, &s.caller.user).await?)
        }
    }
}

/// `GET /v1/gateways`: the gateways' tunnel endpoints, for agents (signed) and gateways.
async fn gateway_endpoints(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Reply {
    match &peer.0 {
        Some(gw) => active_gateway(&app, gw).await?,
        None => {
            Signed::from_request(req, &app).await?;
        }
    }
    ok(gateways::endpoints(&app).await?)
}

async fn active_gateway(app: &App, gw: &crate::connections::GatewayPeer) -> Result<(), ApiError> {
    gateways::require_active(app, gw).await.map(|_| ())
}

async fn announce(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Body(b): Body,
) -> Reply {
    let gw = crate::connections::require_gateway(peer.0.as_ref(), "announce a tunnel")?;
    let a: wire::Announce = json(&b)?;
    ok(gateways::announce(&app, gw, &a).await?)
}

async fn resource_certificate(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Body(b): Body,
) -> Reply {
    let gw = crate::connections::require_gateway(peer.0.as_ref(), "hold a resource's certificate")?;
    let r: wire::ResourceCertificateRequest = json(&b)?;
    ok(gateways::resource_certificate(&app, gw, &r).await?)
}

async fn ssh_host_certificate(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Body(b): Body,
) -> Reply {
    let gw = crate::connections::require_gateway(peer.0.as_ref(), "hold an SSH host certificate")?;
    let r: wire::SshHostCertificateRequest = json(&b)?;
    ok(gateways::ssh_host_certificate(&app, gw, &r).await?)
}

async fn authorize_connection(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Body(b): Body,
) -> Reply {
    let r = crate::connections::authorize_connection(
        &app,
        peer.0.as_ref(),
        &method,
        &uri,
        &headers,
        &b,
    )
    .await;
    app.metrics.authorization("connection", &r);
    ok(r?)
}

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<String>,
}

/// `GET /v1/revocations`: server-sent events: first a `position` event (id and data: the
/// `seq` the feed starts after), then one `revoke` event per revocation, its id the
/// revocation's `seq`. A gateway (client certificate) sees every revocation; a user's
/// agent (signed call) sees its own user's; an admin sees all.
async fn revocations(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<Since>,
    req: Request,
) -> Reply {
    let visible: Box<dyn Fn(&wire::Revocation) -> bool + Send + Sync> = match &peer.0 {
        Some(gw) => {
            active_gateway(&app, gw).await?;
            Box::new(|_| true)
        }
        None => {
            let s = Signed::from_request(req, &app).await?;
            if s.caller.admin {
                Box::new(|_| true)
            } else {
                let user = s.caller.user;
                Box::new(move |r| r.user.as_str() == user)
            }
        }
    };
    let since = match q
        .since
        .as_deref()
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()))
    {
        None => None,
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                ErrorCode::BadSince,
                format!("`{v}` is not a revocation sequence number (an integer)"),
            )
        })?),
    };
    let feed = Feed::start(app.db.clone(), &app.revocations, since, visible).await?;
    // First, where the feed starts, so a subscriber that came without `since` knows
    // where to resume from should the stream break before any revocation.
    let position = feed.position();
    let start = Event::default()
        .event("position")
        .id(position.to_string())
        .data(position.to_string());
    let revokes = futures_util::stream::unfold(feed, |mut feed| async move {
        let r = feed.next().await?;
        let event = Event::default()
            .event("revoke")
            .id(r.seq.to_string())
            .json_data(&r)
            .unwrap_or_else(|_| Event::default().comment("unserialisable revocation"));
        Some((Ok::<_, Infallible>(event), feed))
    });
    use futures_util::StreamExt as _;
    let stream =
        futures_util::stream::once(async move { Ok::<_, Infallible>(start) }).chain(revokes);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn enroll(State(app): State<Arc<App>>, Body(b): Body) -> Reply {
    let e: wire::Enroll = json(&b)?;
    ok(gateways::enroll(&app, &e.token, &e.csr).await?)
}

async fn enroll_node(State(app): State<Arc<App>>, Body(b): Body) -> Reply {
    let e: wire::Enroll = json(&b)?;
    ok(crate::nodes::enroll(&app, &e.token, &e.csr).await?)
}

async fn renew(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Body(b): Body,
) -> Reply {
    let gw = crate::connections::require_gateway(
        peer.0.as_ref(),
        "renew its certificate (with its current one)",
    )?;
    let r: wire::Renew = json(&b)?;
    ok(gateways::renew(&app, gw, &r.csr).await?)
}

async fn unlock(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Body(b): Body,
) -> Reply {
    let r = crate::connections::unlock(&app, peer.0.as_ref(), &method, &uri, &headers, &b).await;
    app.metrics.authorization("unlock", &r);
    ok(r?)
}

async fn credentials(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(crate::vault::list_credentials(&app).await?)
}

async fn users(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(admin::list_users(&app).await?)
}

async fn add_user(State(app): State<Arc<App>>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    let u: NewUser = json(&s.body)?;
    ok(admin::add_user(&app, &actor, u).await?)
}

async fn delete_user(State(app): State<Arc<App>>, Path(name): Path<String>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    admin::change_user(&app, &actor, &name, UserChange::Delete).await?;
    done()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    group: String,
}

async fn user_action(
    State(app): State<Arc<App>>,
    Path((name, action)): Path<(String, String)>,
    s: Signed,
) -> Reply {
    let actor = admin_only(&s.caller)?;
    let change = match action.as_str() {
        "disable" => UserChange::Disable,
        "enable" => UserChange::Enable,
        "make-admin" => UserChange::Admin(true),
        "drop-admin" => UserChange::Admin(false),
        "join" => UserChange::JoinGroup(json::<GroupBody>(&s.body)?.group),
        "leave" => UserChange::LeaveGroup(json::<GroupBody>(&s.body)?.group),
        "reset-password" => return ok(admin::reset_password(&app, &actor, &name).await?),
        "totp-on" => {
            return ok(
                serde_json::json!({"otpauth": admin::set_totp(&app, &actor, &name, true).await?}),
            );
        }
        "totp-off" => {
            admin::set_totp(&app, &actor, &name, false).await?;
            return done();
        }
        other => {
            return Err(ApiError::not_found(
                ErrorCode::NoSuchAction,
                format!(
                    "`{other}` is not a user action: disable, enable, make-admin, drop-admin, join, leave, reset-password, totp-on, totp-off"
                ),
            ));
        }
    };
    admin::change_user(&app, &actor, &name, change).await?;
    done()
}

async fn resources(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(admin::list_resources(&app).await?)
}

async fn put_resource(State(app): State<Arc<App>>, Path(name): Path<String>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    let r: Resource = json(&s.body)?;
    if r.name != name {
        return Err(ApiError::bad_request(
            ErrorCode::NameMismatch,
            format!("the body names `{}` but the path names `{name}`", r.name),
        ));
    }
    admin::put_resource(&app, &actor, r).await?;
    done()
}

async fn delete_resource(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    s: Signed,
) -> Reply {
    let actor = admin_only(&s.caller)?;
    admin::delete_resource(&app, &actor, &name).await?;
    done()
}

async fn grants(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(admin::list_grants(&app).await?)
}

async fn add_grant(State(app): State<Arc<App>>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    let g: NewGrant = json(&s.body)?;
    ok(admin::add_grant(&app, &actor, g).await?)
}

async fn revoke_grant(State(app): State<Arc<App>>, Path(id): Path<String>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    admin::revoke_grant(&app, &actor, &id).await?;
    done()
}

async fn devices(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(admin::list_devices(&app, None).await?)
}

async fn device_action(
    State(app): State<Arc<App>>,
    Path((id, action)): Path<(String, String)>,
    s: Signed,
) -> Reply {
    let actor = admin_only(&s.caller)?;
    let status = match action.as_str() {
        "approve" => DeviceStatus::Trusted,
        "revoke" => DeviceStatus::Revoked,
        other => {
            return Err(ApiError::not_found(
                ErrorCode::NoSuchAction,
                format!("`{other}` is not a device action: approve, revoke"),
            ));
        }
    };
    admin::set_device_status(&app, &actor, &id, status).await?;
    done()
}

async fn sessions(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(admin::list_sessions(&app, false).await?)
}

async fn revoke_session(State(app): State<Arc<App>>, Path(id): Path<String>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    ok(admin::revoke(&app, &actor, &id, None).await?)
}

async fn list_gateways(State(app): State<Arc<App>>, s: Signed) -> Reply {
    admin_only(&s.caller)?;
    ok(gateways::list(&app).await?)
}

async fn gateway_token(State(app): State<Arc<App>>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    let t: NewGatewayToken = json(&s.body)?;
    ok(gateways::new_token(&app, &actor, t).await?)
}

async fn revoke_gateway(State(app): State<Arc<App>>, Path(name): Path<String>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    gateways::revoke(&app, &actor, &name).await?;
    done()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    device_policy: DevicePolicy,
}

async fn device_policy(State(app): State<Arc<App>>, s: Signed) -> Reply {
    let actor = admin_only(&s.caller)?;
    let p: PolicyBody = json(&s.body)?;
    admin::set_device_policy(&app, &actor, p.device_policy).await?;
    done()
}
