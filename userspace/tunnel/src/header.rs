//! The stream header: what opens each stream, and how the gateway says no.
//!
//! A stream is an HTTP/2 `POST /v1/stream` (RFC 9113 §8.3: `:method`, `:scheme`,
//! `:authority` the gateway's name, `:path`) whose headers carry:
//! - `lastmile-resource`: the resource to open;
//! - `lastmile-authorization`: the [`UnlockAuthorization`] as JSON, base64url (no padding);
//! - `lastmile-authorization-signature`: the session key's Ed25519 signature over
//!   [`lastmile_proto::wire::unlock_authorization_message`], standard base64.
//!
//! The gateway answers `200` once the resource is open, then both DATA directions carry
//! the connection. Anything else is a refusal: the status, `lastmile-error` (a stable code,
//! the API's own when the API refused) and `lastmile-message` (what to do), and the stream
//! ends.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use lastmile_proto::wire::{ErrorCode, ResourceName, UnlockAuthorization};

use crate::client::ConnectError;

pub const PATH: &str = "/v1/stream";
pub const RESOURCE: &str = "lastmile-resource";
pub const AUTHORIZATION: &str = "lastmile-authorization";
pub const SIGNATURE: &str = "lastmile-authorization-signature";
pub const ERROR: &str = "lastmile-error";
pub const MESSAGE: &str = "lastmile-message";

/// What opens a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub resource: ResourceName,
    pub authorization: UnlockAuthorization,
    /// Standard base64 of the session key's signature.
    pub signature: String,
}

fn value(s: &str) -> Result<HeaderValue, ConnectError> {
    HeaderValue::from_str(s)
        .map_err(|_| ConnectError::Header(format!("`{s}` is not a header value")))
}

impl StreamHeader {
    /// The request that opens the stream at gateway `gateway`.
    pub fn to_request(&self, gateway: &str) -> Result<Request<()>, ConnectError> {
        let json = serde_json::to_vec(&self.authorization)
            .map_err(|e| ConnectError::Header(e.to_string()))?;
        Request::post(format!("https://{gateway}{PATH}"))
            .header(RESOURCE, value(&self.resource)?)
            .header(AUTHORIZATION, value(&URL_SAFE_NO_PAD.encode(json))?)
            .header(SIGNATURE, value(&self.signature)?)
            .body(())
            .map_err(|e| ConnectError::Header(e.to_string()))
    }

    /// Reads the header from an opening request; the refusal says what is wrong.
    pub fn from_request<B>(req: &Request<B>) -> Result<Self, Refusal> {
        let bad = |m: &str| Refusal::new(StatusCode::BAD_REQUEST, ErrorCode::BadStreamHeader, m);
        if req.method() != http::Method::POST || req.uri().path() != PATH {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotAStream,
                format!("open a stream with POST {PATH}"),
            ));
        }
        let h = req.headers();
        let text = |name: &str| -> Result<&str, Refusal> {
            h.get(name)
                .ok_or_else(|| bad(&format!("the stream header lacks `{name}`")))?
                .to_str()
                .map_err(|_| bad(&format!("`{name}` is not text")))
        };
        let resource = ResourceName::parse(text(RESOURCE)?)
            .map_err(|e| bad(&format!("`lastmile-resource`: {e}")))?;
        let json = URL_SAFE_NO_PAD
            .decode(text(AUTHORIZATION)?)
            .map_err(|_| bad("`lastmile-authorization` is not base64url"))?;
        let authorization: UnlockAuthorization = serde_json::from_slice(&json).map_err(|e| {
            bad(&format!(
                "`lastmile-authorization` is not an authorization: {e}"
            ))
        })?;
        let signature = text(SIGNATURE)?.to_owned();
        if STANDARD.decode(&signature).map(|s| s.len()) != Ok(64) {
            return Err(bad(
                "`lastmile-authorization-signature` is not a base64 Ed25519 signature",
            ));
        }
        Ok(Self {
            resource,
            authorization,
            signature,
        })
    }
}

/// A gateway's "no", with a stable code and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl Refusal {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// Whether a new login is what it takes: the session is gone, or its key no longer
    /// signs for it.
    pub fn needs_login(&self) -> bool {
        self.code.session_gone() || self.code == ErrorCode::BadAuthorizationSignature
    }

    pub fn to_response(&self) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = self.status;
        // Header values are visible ASCII; anything else becomes '?'.
        let clean = |s: &str| {
            let printable: String = s
                .chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect();
            HeaderValue::from_str(&printable).unwrap_or(HeaderValue::from_static("?"))
        };
        r.headers_mut().insert(ERROR, clean(self.code.as_str()));
        r.headers_mut().insert(MESSAGE, clean(&self.message));
        r
    }

    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Self {
        let get = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            status,
            code: get(ERROR).map_or(ErrorCode::Refused, |code| ErrorCode::parse(&code)),
            message: get(MESSAGE).unwrap_or_else(|| format!("the gateway answered {status}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            resource: ResourceName::parse("orders-db").unwrap(),
            authorization: UnlockAuthorization {
                session: "ses_1".into(),
                device: "dev_1".into(),
                resource: ResourceName::parse("orders-db").unwrap(),
                gateway: lastmile_proto::wire::GatewayName::parse("gw1").unwrap(),
                connection: "c1".into(),
                created: 1,
                nonce: "n".repeat(22),
            },
            signature: STANDARD.encode([7u8; 64]),
        }
    }

    #[test]
    fn the_header_round_trips() {
        let req = header().to_request("gw1").unwrap();
        assert_eq!(StreamHeader::from_request(&req).unwrap(), header());
    }

    #[test]
    fn a_bad_header_is_refused_with_what_is_wrong() {
        let mut req = header().to_request("gw1").unwrap();
        req.headers_mut().remove(SIGNATURE);
        let r = StreamHeader::from_request(&req).unwrap_err();
        assert_eq!(r.code, ErrorCode::BadStreamHeader);
        assert!(r.message.contains(SIGNATURE), "{r}");
        let mut req = header().to_request("gw1").unwrap();
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_static("e30"));
        let r = StreamHeader::from_request(&req).unwrap_err();
        assert!(r.message.contains("not an authorization"), "{r}");
        let mut req = header().to_request("gw1").unwrap();
        req.headers_mut()
            .insert(RESOURCE, HeaderValue::from_static("../etc"));
        assert!(StreamHeader::from_request(&req).is_err());
        let req = Request::get("https://gw1/").body(()).unwrap();
        assert_eq!(
            StreamHeader::from_request(&req).unwrap_err().code,
            ErrorCode::NotAStream
        );
    }

    #[test]
    fn refusals_survive_the_trip_and_non_ascii_is_replaced() {
        let r = Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NoGrant,
            "user `bob` has no grant — ask",
        );
        let resp = r.to_response();
        let back = Refusal::from_response(resp.status(), resp.headers());
        assert_eq!(back.code, ErrorCode::NoGrant);
        assert_eq!(back.message, "user `bob` has no grant ? ask");
    }
}
