//! What a gateway asks the API for the tunnel: announcing its endpoint, the endpoints
//! agents see, every resource for its node, and the per-connection authorization with
//! its `connection.open` record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_proto::wire::{ConnectionAuthorized, GatewayEndpoint, Resource};
use reqwest::Method;
use serde_json::json;
use support::{Gateway, Store, authorize, start};

async fn tunnel_endpoints_and_authorization(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let echo = json!({"name": "echo", "kind": "tcp", "host": "127.0.0.1", "port": 7, "protect": ["127.0.0.2:7"]});
    let a = api
        .client
        .call(&admin, Method::PUT, "/v1/admin/resources/echo", Some(&echo))
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    // What a node could not intercept is refused here, with the node's reason: a
    // network with host bits set, a name, a bad port.
    for (protect, says) in [
        ("127.30.0.1/24:22", "did you mean 127.30.0.0/24"),
        ("db.internal:5432", "is not an IP address"),
        ("127.0.0.2:0", "not a valid port"),
        ("[::1/129]:22", "too long"),
    ] {
        let bad = json!({"name": "bad", "kind": "tcp", "host": "127.0.0.1", "port": 7, "protect": [protect]});
        let a = api
            .client
            .call(&admin, Method::PUT, "/v1/admin/resources/bad", Some(&bad))
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{protect}: {}", a.body);
        assert!(a.body.contains(says), "{protect}: {}", a.body);
    }
    let network = json!({"name": "net", "kind": "tcp", "host": "127.0.0.1", "port": 7, "protect": ["127.30.0.0/24:22"]});
    let a = api
        .client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/resources/net",
            Some(&network),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let a = api
        .client
        .call(&admin, Method::DELETE, "/v1/admin/resources/net", None)
        .await
        .unwrap();
    assert!(a.status < 300, "{}", a.body);
    let (alice, _) = api.user("alice").await;
    let (bob, _) = api.user("bob").await;
    let grant = json!({"resource": "echo", "subject": {"user": "alice"}});
    api.client
        .call(&admin, Method::POST, "/v1/admin/grants", Some(&grant))
        .await
        .unwrap();
    let gw = Gateway::enroll_at(&api, &admin, "gw1", &["127.0.0.1", "gw1.test"]).await;
    let gw2 = Gateway::enroll_at(&api, &admin, "gw2", &["127.0.0.1"]).await;

    // Announce: HOST:PORT, the host in the certificate.
    let a = gw
        .post(
            "/v1/gateways/announce",
            &json!({"tunnel": "127.0.0.9:15443"}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("tunnel_not_in_certificate"), "{}", a.body);
    let a = gw
        .post("/v1/gateways/announce", &json!({"tunnel": "127.0.0.1"}))
        .await;
    assert!(a.body.contains("bad_tunnel"), "{}", a.body);
    let a = gw
        .post("/v1/gateways/announce", &json!({"tunnel": "127.0.0.1:0"}))
        .await;
    assert!(a.body.contains("bad_tunnel"), "{}", a.body);
    for (g, port) in [(&gw, 15443), (&gw2, 15444)] {
        let a = g
            .post(
                "/v1/gateways/announce",
                &json!({"tunnel": format!("127.0.0.1:{port}")}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Announcing is for gateways only.
    let a = api
        .client
        .call(
            &alice,
            Method::POST,
            "/v1/gateways/announce",
            Some(&json!({"tunnel": "127.0.0.1:1"})),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        api.audited("gateway.change")
            .iter()
            .filter(|e| e["change"] == "announce")
            .count(),
        2
    );

    // The endpoints, for a signed user and for a gateway; not for a stranger.
    let list: Vec<GatewayEndpoint> = api
        .client
        .call(&alice, Method::GET, "/v1/gateways", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list,
        vec![
            GatewayEndpoint {
                name: "gw1".into(),
                tunnel: "127.0.0.1:15443".into()
            },
            GatewayEndpoint {
                name: "gw2".into(),
                tunnel: "127.0.0.1:15444".into()
            }
        ]
    );
    assert_eq!(
        api.client
            .send(Method::GET, "/v1/gateways", None)
            .await
            .unwrap()
            .status,
        401
    );
    // A gateway sees every resource (its node protects them all); alice only hers.
    let all: Vec<Resource> = gw.client.get("/v1/resources").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].protect, vec!["127.0.0.2:7".to_owned()]);
    let none: Vec<Resource> = api
        .client
        .call(&bob, Method::GET, "/v1/resources", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(none.is_empty());

    // Authorize: the checks of the unlock, for a resource without a credential. The id a
    // client proposes for a connection the node handed over carries its socket cookie.
    let proposed = lastmile_proto::connection::ClientConnectionId::handed_over(77, "ab12");
    let (authz, sig) = alice
        .authorize(&name("echo"), &gateway("gw1"), proposed.as_str())
        .unwrap();
    let req = json!({"resource": "echo", "authorization": authz, "authorization_signature": sig});
    let a = gw.post("/v1/connections/authorize", &req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ok: ConnectionAuthorized = a.json().unwrap();
    assert_eq!(
        (ok.resource.host.as_str(), ok.resource.port),
        ("127.0.0.1", 7)
    );
    assert_eq!(ok.user, "alice");
    assert_eq!(ok.session, alice.login.session);
    let opened = api.audited("connection.open");
    assert_eq!(opened.len(), 1);
    // The API names the connection; the client's id is kept as a hint.
    assert_eq!(opened[0]["client_connection"], proposed.as_str());
    assert_eq!(
        opened[0]["sock_cookie"], 77,
        "the join key to kernel.connect"
    );
    assert_eq!(opened[0]["connection"], ok.connection.as_str());
    assert!(ok.connection.starts_with("conn_"), "{}", ok.connection);
    assert_ne!(ok.connection, authz.connection.as_str());
    assert_eq!(opened[0]["gateway"], "gw1");
    // Each authorization opens one connection.
    let a = gw.post("/v1/connections/authorize", &req).await;
    assert!(a.body.contains("replayed_authorization"), "{}", a.body);
    // Another gateway cannot use gw1's authorization.
    let (authz, sig) = authorize(&alice, "echo", "gw1");
    let req = json!({"resource": "echo", "authorization": authz, "authorization_signature": sig});
    let a = gw2.post("/v1/connections/authorize", &req).await;
    assert!(a.body.contains("authorization_other_gateway"), "{}", a.body);
    // Bob has no grant.
    let (authz, sig) = authorize(&bob, "echo", "gw1");
    let req = json!({"resource": "echo", "authorization": authz, "authorization_signature": sig});
    let a = gw.post("/v1/connections/authorize", &req).await;
    assert!(a.body.contains("no_grant"), "{}", a.body);
    // Alice's session alone (no gateway certificate) is not enough.
    let (authz, sig) = authorize(&alice, "echo", "gw1");
    let req = json!({"resource": "echo", "authorization": authz, "authorization_signature": sig});
    let a = api
        .client
        .call(
            &alice,
            Method::POST,
            "/v1/connections/authorize",
            Some(&req),
        )
        .await
        .unwrap();
    assert!(
        a.body.contains("gateway_certificate_required"),
        "{}",
        a.body
    );
    // A revoked session is refused.
    api.client
        .call(&alice, Method::POST, "/v1/logout", None)
        .await
        .unwrap();
    let (authz, sig) = authorize(&alice, "echo", "gw1");
    let req = json!({"resource": "echo", "authorization": authz, "authorization_signature": sig});
    let a = gw.post("/v1/connections/authorize", &req).await;
    assert!(a.body.contains("session_revoked"), "{}", a.body);
    assert_eq!(api.audited("connection.open").len(), 1);
}

both_stores!(tunnel_endpoints, tunnel_endpoints_and_authorization);

fn name(n: &str) -> lastmile_proto::wire::ResourceName {
    lastmile_proto::wire::ResourceName::parse(n).unwrap()
}

fn gateway(n: &str) -> lastmile_proto::wire::GatewayName {
    lastmile_proto::wire::GatewayName::parse(n).unwrap()
}
