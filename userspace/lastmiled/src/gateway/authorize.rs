//! The API's word on one stream: `POST /v1/connections/authorize`.

use lastmile_audit_sink::error_chain;
use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{ConnectionAuthorized, ConnectionRequest, ErrorBody};
use lastmile_tunnel::header::{Refusal, StreamHeader};
use reqwest::Method;

use super::Gateway;

/// Asks the API whether this stream may open, and for the resource's credential sealed
/// to `recipient` (the API releases one only to handlers that log in: not for `tcp`);
/// for an `ssh-certificate` resource, a user certificate for `ssh_public_key`.
pub(super) async fn authorize(
    gw: &Gateway,
    header: &StreamHeader,
    recipient: Option<&str>,
    ssh_public_key: Option<&str>,
) -> Result<ConnectionAuthorized, Refusal> {
    let body = serde_json::to_vec(&ConnectionRequest {
        resource: header.resource.clone(),
        authorization: Some(header.authorization.clone()),
        authorization_signature: Some(header.signature.clone()),
        recipient: recipient.map(str::to_owned),
        ssh_public_key: ssh_public_key.map(str::to_owned),
    })
    .map_err(|e| {
        Refusal::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        )
    })?;
    let answer = gw
        .api()
        .call_as_gateway(&gw.name, &gw.key, Method::POST, "/v1/connections/authorize", &body)
        .await
        .map_err(|e| {
            Refusal::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ApiUnavailable,
                format!(
                    "the gateway cannot reach the API to check this connection, so it is refused: {}",
                    error_chain(&e)
                ),
            )
        })?;
    if (200..300).contains(&answer.status) {
        return answer.json().map_err(|e| {
            Refusal::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorCode::ApiUnexpected,
                error_chain(&e),
            )
        });
    }
    let status = http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::FORBIDDEN);
    Err(match serde_json::from_str::<ErrorBody>(&answer.body) {
        Ok(b) => Refusal::new(status, b.error, b.message),
        Err(_) => Refusal::new(status, ErrorCode::ApiRefused, answer.body),
    })
}
