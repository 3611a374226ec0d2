//! The API's JSON bodies (`lastmile_proto::wire::*`), as servers and clients decode what a
//! peer sent, and the text forms that travel inside them: names and ids
//! (`lastmile_proto::names`), error codes (`ErrorCode`), protected targets
//! (`target::ProtectedTarget`), client connection ids, device fingerprints, durations.
//!
//! Input: the JSON text (also read as plain text for the text forms).
//!
//! Checked beyond "no panic", for every type: a value that decodes encodes, and what it
//! encodes to decodes to a value that encodes the same (a round trip through JSON loses
//! nothing and invents nothing). For the text forms: a name parses exactly when
//! `valid_name` (and an independent reading of its rule) says so; an error code prints
//! as it was read; a protected target prints to text that parses back to it, and covers
//! its own address.

#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use lastmile_proto::connection::ClientConnectionId;
use lastmile_proto::device::{self, DeviceFingerprint, MachineFacts};
use lastmile_proto::target::ProtectedTarget;
use lastmile_proto::wire::{self, *};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Timeout {
    #[serde(with = "lastmile_proto::duration")]
    timeout: Duration,
}

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_vec(&value).expect("a decoded value encodes");
    let back: T = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => panic!(
            "{} encodes to JSON it cannot decode ({e}): {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&json)
        ),
    };
    let again = serde_json::to_vec(&back).expect("a decoded value encodes");
    assert_eq!(
        json,
        again,
        "{} changes on a round trip",
        std::any::type_name::<T>()
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip::<ErrorBody>(data);
    round_trip::<ChallengeRequest>(data);
    round_trip::<Challenge>(data);
    round_trip::<DeviceProof>(data);
    round_trip::<LoginRequest>(data);
    round_trip::<LoginResponse>(data);
    round_trip::<Refreshed>(data);
    round_trip::<Me>(data);
    round_trip::<CaBundle>(data);
    round_trip::<ResourceKind>(data);
    round_trip::<UpstreamTls>(data);
    round_trip::<Resource>(data);
    round_trip::<CredentialKind>(data);
    round_trip::<CredentialInfo>(data);
    round_trip::<UnlockAuthorization>(data);
    round_trip::<UnlockRequest>(data);
    round_trip::<Unlocked>(data);
    round_trip::<ConnectionRequest>(data);
    round_trip::<ConnectionAuthorized>(data);
    round_trip::<ResourceCertificateRequest>(data);
    round_trip::<SshHostCertificateRequest>(data);
    round_trip::<SshHostCertificate>(data);
    round_trip::<ResourceCertificate>(data);
    round_trip::<Announce>(data);
    round_trip::<GatewayEndpoint>(data);
    round_trip::<Subject>(data);
    round_trip::<NewGrant>(data);
    round_trip::<Grant>(data);
    round_trip::<NewUser>(data);
    round_trip::<User>(data);
    round_trip::<OneTimePassword>(data);
    round_trip::<DeviceStatus>(data);
    round_trip::<Device>(data);
    round_trip::<Session>(data);
    round_trip::<Revocation>(data);
    round_trip::<DevicePolicy>(data);
    round_trip::<NewGatewayToken>(data);
    round_trip::<GatewayToken>(data);
    round_trip::<Enroll>(data);
    round_trip::<Renew>(data);
    round_trip::<GatewayCertificate>(data);
    round_trip::<Gateway>(data);
    round_trip::<ErrorCode>(data);
    round_trip::<UserName>(data);
    round_trip::<ResourceName>(data);
    round_trip::<GatewayName>(data);
    round_trip::<SessionId>(data);
    round_trip::<DeviceId>(data);
    round_trip::<ConnectionId>(data);
    round_trip::<ClientConnectionId>(data);
    round_trip::<ProtectedTarget>(data);
    round_trip::<Vec<ProtectedTarget>>(data);
    round_trip::<MachineFacts>(data);
    round_trip::<Timeout>(data);

    if let Ok(a) = serde_json::from_slice::<UnlockAuthorization>(data) {
        let _ = wire::unlock_authorization_message(&a);
        let _ = a.connection.sock_cookie();
    }
    if let Ok(r) = serde_json::from_slice::<Resource>(data) {
        let _ = r.upstream_tls_mode();
        for p in &r.protect {
            let _ = p.parse::<ProtectedTarget>();
        }
    }
    if let Ok(facts) = serde_json::from_slice::<MachineFacts>(data) {
        // The fingerprint is a function of the facts.
        let one = device::fingerprint(&facts).map(|f| f.to_string());
        let two = device::fingerprint(&facts).map(|f| f.to_string());
        assert_eq!(one.ok(), two.ok());
    }

    let text = String::from_utf8_lossy(data);
    text_forms(&text);
    for line in text.lines() {
        text_forms(line);
    }
});

fn text_forms(text: &str) {
    let rule = {
        let mut chars = text.chars();
        let first = chars.next();
        first.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.len() <= 64
            && text
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    };
    assert_eq!(wire::valid_name(text), rule, "{text:?}");
    assert_eq!(UserName::parse(text).is_ok(), rule);
    assert_eq!(ResourceName::parse(text).is_ok(), rule);
    assert_eq!(
        GatewayName::parse(text).map(String::from).ok().as_deref(),
        rule.then_some(text)
    );

    let code = ErrorCode::parse(text);
    assert_eq!(code.as_str(), text);
    let _ = (code.session_gone(), code.is_unavailable());

    if let Ok(t) = text.parse::<ProtectedTarget>() {
        let shown = t.to_string();
        assert_eq!(
            shown.parse::<ProtectedTarget>(),
            Ok(t),
            "{text:?} printed as {shown:?}"
        );
        assert!(t.covers(SocketAddr::new(t.addr(), t.port())), "{t}");
        assert!(t.port() != 0);
    }

    let id = ClientConnectionId::from(text);
    if let Some(cookie) = id.sock_cookie() {
        assert!(text.starts_with("sock-"), "{text:?}");
        let _ = cookie;
    }
    if let Ok(f) = DeviceFingerprint::parse(text) {
        assert_eq!(f.as_str(), text.to_ascii_lowercase());
    }
    let _ = (
        device::normalize_machine_id(text),
        device::normalize_dmi(text),
    );
}
