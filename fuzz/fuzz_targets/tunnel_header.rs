//! The tunnel's stream header: what the gateway reads from an agent's opening request
//! (`header::StreamHeader::from_request`) and what the agent reads from a refusal
//! (`header::Refusal::from_response`); and the certificate readers the tunnel applies to
//! its peer's certificate (`tls::session_identity`, `gateway_name`, ...).
//!
//! Input, as lines: the method, the path, a status code, then `name: value` headers. A
//! `lastmile-authorization` value starting with `{` is base64url-encoded first, so the
//! fuzzer can work on the JSON itself. An input starting with 0x30 (a DER SEQUENCE) is a
//! certificate instead.
//!
//! Checked beyond "no panic": a header that is accepted turns back into a request
//! (`to_request`) that is accepted as the same header; a refusal survives its trip through
//! response headers with the same code and a printable message.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use lastmile_tunnel::header::{AUTHORIZATION, Refusal, StreamHeader};
use lastmile_tunnel::tls;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&0x30) {
        let cert = CertificateDer::from(data);
        let _ = tls::session_identity(&cert);
        let _ = tls::gateway_name(&cert);
        let _ = tls::certificate_addresses(&cert);
        let _ = tls::not_after(&cert);
        return;
    }
    let lines = lastmile_fuzz::lines(data, 64);
    let mut lines = lines.iter();
    let method = lines.next().map_or("POST", String::as_str);
    let path = lines.next().map_or("/v1/stream", String::as_str);
    let status = lines.next().and_then(|s| s.trim().parse::<u16>().ok());
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        let encoded;
        let value = if name.eq_ignore_ascii_case(AUTHORIZATION) && value.starts_with('{') {
            encoded = URL_SAFE_NO_PAD.encode(value);
            encoded.as_str()
        } else {
            value
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }

    if let Some(status) = status.and_then(|s| StatusCode::from_u16(s).ok()) {
        refusal(status, &headers);
    }

    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(mut req) = Request::builder()
        .method(method)
        .uri(format!("https://gw1{path}"))
        .body(())
    else {
        return;
    };
    *req.headers_mut() = headers;
    match StreamHeader::from_request(&req) {
        Ok(header) => {
            let again = header
                .to_request("gw1")
                .expect("an accepted header makes a request");
            assert_eq!(StreamHeader::from_request(&again), Ok(header));
        }
        Err(r) => {
            assert!(!r.status.is_success());
            let _ = r.to_string();
            refusal(r.status, r.to_response().headers());
        }
    }
});

fn refusal(status: StatusCode, headers: &HeaderMap) {
    let r = Refusal::from_response(status, headers);
    let _ = r.needs_login();
    let resp = r.to_response();
    let back = Refusal::from_response(resp.status(), resp.headers());
    assert_eq!(back.status, r.status);
    assert!(back.message.chars().all(|c| (' '..='~').contains(&c)));
    if r.code.as_str().chars().all(|c| (' '..='~').contains(&c)) && !r.code.as_str().is_empty() {
        assert_eq!(back.code, r.code);
    }
}
