//! Every endpoint, fed bad input unsigned and signed by an admin, answers 4xx with a JSON
//! error that says what is wrong: never a 500, never a panic, never a hang.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_api::http::ROUTES;
use lastmile_api_client::{nonce, now};
use lastmile_proto::wire::ErrorBody;
use lastmile_proto::wire::ErrorCode;
use reqwest::Method;
use support::{Store, start};

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        ("empty", Vec::new()),
        ("truncated JSON", b"{\"name\": \"al".to_vec()),
        ("not JSON", b"\xff\xfe garbage".to_vec()),
        ("wrong types", br#"{"name": 5, "user": [], "resource": {}, "subject": 7, "token": false, "csr": 1, "kind": "ftp", "port": 70000, "device_policy": "maybe", "group": null}"#.to_vec()),
        ("unknown fields", br#"{"zzz": 1}"#.to_vec()),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("1 MiB", vec![b'a'; 1 << 20]),
    ]
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap()
}

async fn bad_input(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let mut checked = 0;
    for (m, path) in ROUTES {
        let path = path
            .replace("{name}", "nobody")
            .replace("{id}", "nobody")
            .replace("{action}", "disable");
        for (what, body) in bodies() {
            // Unsigned.
            let a = api.client.send(method(m), &path, Some(body.clone())).await;
            let Some(a) = answered(&format!("{m} {path} unsigned, {what}"), a) else {
                continue;
            };
            check(&format!("{m} {path} unsigned, {what}"), a.status, &a.body);
            // Signed by an admin. The revocation stream would stay open on success, and
            // logout would end the admin's session (both are tested elsewhere).
            if path == "/v1/revocations" || path == "/v1/logout" {
                continue;
            }
            let h = api
                .client
                .sign(&admin, &method(m), &path, &body, now(), &nonce().unwrap())
                .unwrap();
            let a = api.client.send_signed(method(m), &path, &h, body).await;
            let Some(a) = answered(&format!("{m} {path} signed, {what}"), a) else {
                continue;
            };
            check(&format!("{m} {path} signed, {what}"), a.status, &a.body);
            checked += 2;
        }
    }
    assert!(checked > 400, "{checked}");
    // And the API still works.
    assert_eq!(
        api.client
            .call(&admin, Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status,
        200
    );
}

/// The answer; or `None` when the server answered an oversized body before reading it
/// and closed the connection while the client was still sending (the client then sees
/// a broken pipe instead of the 413, which is how HTTP/1.1 clients without
/// `Expect: 100-continue` behave).
fn answered(
    what: &str,
    a: Result<lastmile_api_client::Answer, lastmile_api_client::ClientError>,
) -> Option<lastmile_api_client::Answer> {
    match a {
        Ok(a) => Some(a),
        Err(lastmile_api_client::ClientError::Transport(e))
            if what.ends_with("1 MiB") && format!("{e:?}").contains("BodyWrite") =>
        {
            None
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

fn check(what: &str, status: u16, body: &str) {
    assert!(status < 500, "{what}: {status} {body}");
    if status >= 400 {
        let e: ErrorBody = serde_json::from_str(body)
            .unwrap_or_else(|_| panic!("{what}: {status} without a JSON error: {body}"));
        // A code the shared enum does not know would be one no client can match on.
        assert!(
            !matches!(e.error, ErrorCode::Other(_)) && e.message.len() > 10,
            "{what}: {e:?}"
        );
    }
}
both_stores!(every_endpoint_answers_bad_input_with_a_4xx, bad_input);

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let api = start(Store::Sqlite, |_| {}).await;
    let doc: serde_json::Value = api.client.get("/openapi.json").await.unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    documented.sort();
    routes.sort();
    assert_eq!(documented, routes);
    // Each listed route is really routed.
    for (m, p) in ROUTES {
        let a = api
            .client
            .send(method(m), &p.replace(['{', '}'], ""), None)
            .await
            .unwrap();
        let code = serde_json::from_str::<ErrorBody>(&a.body)
            .ok()
            .map(|e| e.error);
        assert!(
            code != Some(ErrorCode::NoSuchEndpoint) && code != Some(ErrorCode::MethodNotAllowed),
            "{m} {p}: {}",
            a.body
        );
    }
}
