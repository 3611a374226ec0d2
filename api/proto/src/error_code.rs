//! The stable codes lastmile's refusals carry, on the wire as the `error` of an API
//! error body and the `lastmile-error` header of a refused tunnel stream.
//!
//! One enum on both ends, so that what a client matches on is what a server sends: a
//! misspelt code is a compile error, not a branch that never runs. A code this build does
//! not know (from a newer peer) is kept as [`ErrorCode::Other`] and printed as is.

use std::fmt;

macro_rules! codes {
    ($($variant:ident = $code:literal,)*) => {
        /// A refusal's code. See the module documentation.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $code, "`")]
                $variant,
            )*
            /// A code this build does not know, as it was received.
            Other(String),
        }

        impl ErrorCode {
            /// Every code this build knows.
            pub const KNOWN: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it goes on the wire.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $code,)*
                    Self::Other(code) => code,
                }
            }

            /// The code received on the wire; one this build does not know is kept as
            /// [`ErrorCode::Other`].
            #[must_use]
            pub fn parse(code: &str) -> Self {
                match code {
                    $($code => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }
    };
}

codes! {
    AlreadyInitialised = "already_initialised",
    ApiRefused = "api_refused",
    ApiUnavailable = "api_unavailable",
    ApiUnexpected = "api_unexpected",
    AuditUnavailable = "audit_unavailable",
    AuthorizationMissing = "authorization_missing",
    AuthorizationOtherGateway = "authorization_other_gateway",
    AuthorizationOtherResource = "authorization_other_resource",
    AuthorizationOtherSession = "authorization_other_session",
    BadAddress = "bad_address",
    BadAuthorization = "bad_authorization",
    BadAuthorizationSignature = "bad_authorization_signature",
    BadChallenge = "bad_challenge",
    BadCredentials = "bad_credentials",
    BadCsr = "bad_csr",
    BadDeviceProof = "bad_device_proof",
    BadFingerprint = "bad_fingerprint",
    BadGrant = "bad_grant",
    BadJson = "bad_json",
    BadKey = "bad_key",
    BadName = "bad_name",
    BadRecipient = "bad_recipient",
    BadResource = "bad_resource",
    BadSecret = "bad_secret",
    BadSignature = "bad_signature",
    BadSignatureFormat = "bad_signature_format",
    BadSince = "bad_since",
    BadSshPublicKey = "bad_ssh_public_key",
    BadStartup = "bad_startup",
    BadStreamHeader = "bad_stream_header",
    BadToken = "bad_token",
    BadTtl = "bad_ttl",
    BadTunnel = "bad_tunnel",
    BadUser = "bad_user",
    BodyChanged = "body_changed",
    BodyTooLarge = "body_too_large",
    ClientGone = "client_gone",
    ConnectionEnded = "connection_ended",
    CredentialKindMismatch = "credential_kind_mismatch",
    CredentialUnreadable = "credential_unreadable",
    DatabaseNotAllowed = "database_not_allowed",
    DeviceFingerprintMismatch = "device_fingerprint_mismatch",
    DeviceNotTrusted = "device_not_trusted",
    DeviceOtherUser = "device_other_user",
    DevicePending = "device_pending",
    DeviceRevoked = "device_revoked",
    EmptyBody = "empty_body",
    GatewayCertificateRequired = "gateway_certificate_required",
    GatewayKeyRevoked = "gateway_key_revoked",
    GatewayKeyUnsupported = "gateway_key_unsupported",
    GatewayRevoked = "gateway_revoked",
    GrantExpired = "grant_expired",
    Internal = "internal",
    KmsUnavailable = "kms_unavailable",
    MethodNotAllowed = "method_not_allowed",
    NameMismatch = "name_mismatch",
    NoCredential = "no_credential",
    NoDatabaseUser = "no_database_user",
    NoGrant = "no_grant",
    NoHost = "no_host",
    NoSuchAction = "no_such_action",
    NoSuchDevice = "no_such_device",
    NoSuchEndpoint = "no_such_endpoint",
    NoSuchGateway = "no_such_gateway",
    NoSuchGrant = "no_such_grant",
    NoSuchResource = "no_such_resource",
    NoSuchSession = "no_such_session",
    NoSuchUser = "no_such_user",
    NoTlsForKind = "no_tls_for_kind",
    NotAStream = "not_a_stream",
    NotAdmin = "not_admin",
    NotSsh = "not_ssh",
    NothingToStore = "nothing_to_store",
    PasswordChangeRequired = "password_change_required",
    ProtocolViolation = "protocol_violation",
    Refused = "refused",
    ReplayedAuthorization = "replayed_authorization",
    ReplayedNonce = "replayed_nonce",
    ReplicationRefused = "replication_refused",
    SessionDeviceMismatch = "session_device_mismatch",
    SessionExpired = "session_expired",
    SessionRevoked = "session_revoked",
    SignatureMissing = "signature_missing",
    SshCredentialMissing = "ssh_credential_missing",
    SshHostCertificateUnavailable = "ssh_host_certificate_unavailable",
    SshHostTrustUnavailable = "ssh_host_trust_unavailable",
    SshPublicKeyMissing = "ssh_public_key_missing",
    StaleAuthorization = "stale_authorization",
    StaleSignature = "stale_signature",
    TooManyLogins = "too_many_logins",
    TotpInvalid = "totp_invalid",
    TotpReplayed = "totp_replayed",
    TotpRequired = "totp_required",
    TunnelNotInCertificate = "tunnel_not_in_certificate",
    UnknownSession = "unknown_session",
    UpstreamLoginFailed = "upstream_login_failed",
    UpstreamLost = "upstream_lost",
    UpstreamProtocol = "upstream_protocol",
    UpstreamRefused = "upstream_refused",
    UpstreamUnreachable = "upstream_unreachable",
    UserDisabled = "user_disabled",
    UserExists = "user_exists",
    UserLocked = "user_locked",
    WeakPassword = "weak_password",
}

impl ErrorCode {
    /// Whether the session can no longer be used, so only a new `lastmile login` helps.
    #[must_use]
    pub fn session_gone(&self) -> bool {
        matches!(
            self,
            Self::SessionRevoked
                | Self::SessionExpired
                | Self::UnknownSession
                | Self::SessionDeviceMismatch
        )
    }
}

impl ErrorCode {
    /// Whether the gateway that said it could not reach what it needed (the API, or the
    /// resource's server): another gateway may do better, and trying again later may.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::ApiUnavailable | Self::UpstreamUnreachable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_round_trips_and_is_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::KNOWN {
            assert!(seen.insert(code.as_str()), "{code} is listed twice");
            assert_eq!(&ErrorCode::parse(code.as_str()), code);
            assert!(
                code.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code} is not snake_case"
            );
        }
    }

    #[test]
    fn a_code_from_a_newer_peer_is_kept() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded_v9\"").unwrap();
        assert_eq!(code, ErrorCode::Other("quota_exceeded_v9".into()));
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            "\"quota_exceeded_v9\""
        );
        let known: ErrorCode = serde_json::from_str("\"no_grant\"").unwrap();
        assert_eq!(known, ErrorCode::NoGrant);
        assert!(ErrorCode::SessionExpired.session_gone());
        assert!(!ErrorCode::NoGrant.session_gone());
    }
}
