//! The JSON bodies of the API, shared by the server, the CLIs and the agent.
//!
//! Times are Unix seconds (UTC). Keys are Ed25519, 32 raw bytes, in standard base64.
//! Names of users, groups, resources and gateways follow [`valid_name`].

use serde::{Deserialize, Serialize};

pub use crate::error_code::ErrorCode;
pub use crate::names::{
    ConnectionId, DeviceId, GatewayName, NameError, ResourceName, SessionId, UserName,
};

/// Every error the API returns: a stable code to match on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}

/// Whether `name` is usable as a user, group, resource or gateway name: 1–64 of
/// `a-z 0-9 . _ -`, starting with a letter or digit. Names appear in certificate URIs and
/// audit events, so they are kept plain.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `POST /v1/login/challenge`: the first step of a login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    pub user: String,
    /// The device's public key.
    pub device_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    /// 32 random bytes, base64; single use, expires at `expires_at`.
    pub challenge: String,
    pub expires_at: i64,
}

/// The device a login comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProof {
    pub public_key: String,
    /// [`crate::device::fingerprint`] of the machine.
    pub fingerprint: String,
    /// A name for people ("alice's laptop"); the hostname by default.
    pub name: String,
    /// The device key's signature over [`login_proof_message`], base64.
    pub signature: String,
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// The current TOTP code, when the user has TOTP.
    #[serde(default)]
    pub totp: Option<String>,
    /// Required when the password is a one-time password: the password to set.
    #[serde(default)]
    pub new_password: Option<String>,
    pub challenge: String,
    /// The new session's public key, made by the client for this session only.
    pub session_key: String,
    pub device: DeviceProof,
}

/// What the device key signs at login: it binds the challenge, the user, the session key
/// and the machine fingerprint together, so a proof cannot be moved to another session,
/// user or machine. Length-prefixed (u32 big-endian) fields after a domain tag.
pub fn login_proof_message(
    user: &str,
    challenge: &str,
    session_key: &str,
    fingerprint: &str,
) -> Vec<u8> {
    length_prefixed(&[
        "lastmile-login-v1",
        user,
        challenge,
        session_key,
        fingerprint,
    ])
}

/// Each field as a u32 big-endian length and its bytes: no two field lists encode alike.
fn length_prefixed(fields: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
    for field in fields {
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// A session: what login and refresh return.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub user: String,
    /// The key id of the device signature on every later call.
    pub device: String,
    /// The key id of the session signature on every later call.
    pub session: String,
    pub session_expires_at: i64,
    /// The session's client certificate (PEM), for mutual TLS to gateways.
    pub certificate: String,
    pub certificate_expires_at: i64,
    /// The organisation's CA (PEM): it signs gateway, client and API certificates.
    pub ca: String,
}

/// `POST /v1/session/refresh`: a new certificate for the same session key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refreshed {
    pub certificate: String,
    pub certificate_expires_at: i64,
}

/// `GET /v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    pub user: String,
    pub admin: bool,
    pub device: String,
    pub session: String,
    pub session_expires_at: i64,
}

/// `GET /v1/ca`: what clients and gateways pin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaBundle {
    pub organisation: String,
    /// PEM.
    pub x509: String,
    /// OpenSSH public key lines.
    pub ssh_user_ca: String,
    pub ssh_host_ca: String,
}

/// `HOST:PORT` as a user writes it: `[::1]:5432` for an IPv6 address, `db.internal:5432`
/// or `127.0.0.2:5432` otherwise.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Which protocol a resource speaks: how the gateway serves it, and how a refused
/// connection is told why (the node and the agent use the same enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Postgres,
    Ssh,
    Tcp,
}

impl std::fmt::Display for ResourceKind {
    /// As configs, flags and the wire spell it (`postgres`, `ssh`, `tcp`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres => "postgres",
            Self::Ssh => "ssh",
            Self::Tcp => "tcp",
        })
    }
}

/// How the gateway reaches the target: libpq's `sslmode` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: String,
    pub kind: ResourceKind,
    /// Where the gateway connects.
    pub host: String,
    pub port: u16,
    /// What nodes redirect: `ADDR:PORT`, `[ADDR6]:PORT` or `PREFIX/LEN:PORT`.
    #[serde(default)]
    pub protect: Vec<String>,
    /// DNS names users dial for it (the organisation's DNS, or `/etc/hosts`, resolves
    /// them to a protected address): named, with the protected hosts, by the gateway's
    /// SSH host certificate and TLS certificate for it, and by users' known_hosts lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// For `postgres` (the only kind whose upstream connection can be TLS): how the
    /// gateway reaches the target; `None` on other kinds, and absent from their JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// How the gateway logs in: a stored `password` or `ssh-key` (set with
    /// `lastmile-api credentials set`), or an `ssh-certificate` signed per connection.
    #[serde(default)]
    pub credential: Option<CredentialKind>,
    /// For `ssh-certificate`: the principals (upstream user names) certificates name.
    #[serde(default)]
    pub ssh_principals: Vec<String>,
    /// For `postgres`: the database user the gateway logs in as (the user the client
    /// names is not used). Without it, the gateway refuses connections, saying so.
    #[serde(default)]
    pub database_user: Option<String>,
    /// For `postgres`: the databases a client may ask for; empty means any.
    #[serde(default)]
    pub databases: Vec<String>,
    /// For `upstream_tls = verify-full`: the CA certificates (PEM) the target's
    /// certificate must chain to; without, the gateway host's system roots.
    #[serde(default)]
    pub upstream_ca: Option<String>,
    /// For `ssh`: the OpenSSH CA public keys (one per entry) whose host certificates the
    /// gateway accepts from the target. With neither this nor `ssh_host_keys`, the
    /// organisation's own SSH host CA (the `/v1/ca` bundle's `ssh_host_ca`): lastmile
    /// never trusts a target's host key on first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_ca: Vec<String>,
    /// For `ssh`: the target's host keys (OpenSSH public key lines), pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
    /// For `ssh`: whether users may forward ports through the target (`ssh -L`, `-J`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssh_allow_port_forwarding: bool,
}

impl Resource {
    /// How the gateway reaches a `postgres` target: `upstream_tls`, else the default.
    pub fn upstream_tls_mode(&self) -> UpstreamTls {
        self.upstream_tls.unwrap_or_default()
    }
}

/// What the gateway logs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// A PostgreSQL (or other) password, stored in the vault.
    Password,
    /// An OpenSSH private key, stored in the vault.
    SshKey,
    /// Nothing stored: the API signs a short-lived OpenSSH user certificate for the
    /// gateway's per-connection key, with the resource's principals.
    SshCertificate,
}

/// A stored credential, without its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub resource: String,
    pub kind: CredentialKind,
    pub version: i64,
    /// The KMS master key its data key is wrapped under.
    pub key_id: String,
    pub created_at: i64,
    pub created_by: String,
}

/// A user's consent to one connection: made by the agent, signed with the session key,
/// carried by the gateway to `POST /v1/credentials/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockAuthorization {
    pub session: SessionId,
    pub device: DeviceId,
    pub resource: ResourceName,
    pub gateway: GatewayName,
    /// The id the client proposes for the connection, unique per connection (the API
    /// chooses the id every event uses and keeps this one as `client_connection`).
    pub connection: crate::connection::ClientConnectionId,
    pub created: i64,
    pub nonce: String,
}

/// What the session key signs: every field, length-prefixed after a domain tag.
pub fn unlock_authorization_message(a: &UnlockAuthorization) -> Vec<u8> {
    let created = a.created.to_string();
    length_prefixed(&[
        "lastmile-unlock-v1",
        &a.session,
        &a.device,
        &a.resource,
        &a.gateway,
        a.connection.as_str(),
        &created,
        &a.nonce,
    ])
}

/// `POST /v1/credentials/unlock`, by a gateway (client certificate, and the request
/// signed with its key, label `gateway`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    pub resource: ResourceName,
    #[serde(default)]
    pub authorization: Option<UnlockAuthorization>,
    /// The session key's signature over [`unlock_authorization_message`], base64.
    #[serde(default)]
    pub authorization_signature: Option<String>,
    /// An age X25519 recipient (`age1…`), fresh per unlock: the secret is sealed to it.
    pub recipient: String,
    /// For `ssh-certificate`: the gateway's per-connection OpenSSH public key.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unlocked {
    pub resource: String,
    pub kind: CredentialKind,
    pub version: i64,
    /// The secret, age-encrypted to the request's recipient, base64 (stored kinds).
    #[serde(default)]
    pub sealed: Option<String>,
    /// The OpenSSH user certificate (`ssh-certificate`).
    #[serde(default)]
    pub ssh_certificate: Option<String>,
}

/// `POST /v1/connections/authorize`: a gateway asks whether it may open `resource` for the
/// user whose authorization it carries. With a `recipient` (and, for `ssh-certificate`,
/// an `ssh_public_key`) the same call also releases the resource's credential sealed to
/// it, so one authorization (one nonce) covers the whole connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRequest {
    pub resource: ResourceName,
    #[serde(default)]
    pub authorization: Option<UnlockAuthorization>,
    /// The session key's signature over [`unlock_authorization_message`], base64.
    #[serde(default)]
    pub authorization_signature: Option<String>,
    /// An age X25519 recipient (`age1…`), fresh per connection: ask for the credential,
    /// sealed to it.
    #[serde(default)]
    pub recipient: Option<String>,
    /// For `ssh-certificate`: the gateway's per-connection OpenSSH public key.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
}

/// The answer: the connection may open; where to and for whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionAuthorized {
    pub resource: Resource,
    pub user: UserName,
    pub session: SessionId,
    pub device: DeviceId,
    pub session_expires_at: i64,
    /// When the grant this connection rests on ends; `None`: it does not.
    #[serde(default)]
    pub grant_expires_at: Option<i64>,
    /// The credential, when the request named a recipient.
    #[serde(default)]
    pub credential: Option<Unlocked>,
    /// The revocation stream's position before this authorization checked the session:
    /// any revocation that can end this connection comes after it. A gateway that has
    /// not yet followed the stream resumes from the lowest it holds.
    #[serde(default)]
    pub revocations_after: Option<i64>,
    /// The connection's id, chosen by the API (the authorization's `connection` is the
    /// client's hint). Events, logs and SSH certificate key ids use this one.
    #[serde(default)]
    pub connection: ConnectionId,
}

/// `POST /v1/gateways/resource-certificate`: a gateway asks for a TLS server certificate
/// for a resource it serves, so clients that insist on TLS (`sslmode=verify-full`) can
/// verify the resource's name against the organisation's CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceCertificateRequest {
    pub resource: String,
    /// A PEM PKCS#10 request signed by the gateway's key for this certificate.
    pub csr: String,
}

/// `POST /v1/gateways/ssh-host-certificate`: the gateway's SSH host key, to be
/// certified by the organisation's SSH host CA for an `ssh` resource's names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshHostCertificateRequest {
    pub resource: String,
    /// An OpenSSH public key line (the gateway's host key).
    pub public_key: String,
}

/// The answer: an OpenSSH host certificate (one line) for the protected names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshHostCertificate {
    pub resource: String,
    pub certificate: String,
    /// Its principals: the resource's name and each protected host or address.
    pub principals: Vec<String>,
    pub expires_at: i64,
}

/// The answer: a certificate naming the resource's host and protected addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceCertificate {
    pub resource: String,
    pub certificate: String,
    /// The names and addresses it is valid for.
    pub names: Vec<String>,
    pub expires_at: i64,
}

/// `POST /v1/gateways/announce`: where agents reach this gateway's tunnel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// `HOST:PORT`; HOST must be one of the gateway certificate's addresses.
    pub tunnel: String,
}

/// `GET /v1/gateways`: the gateways an agent may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEndpoint {
    pub name: String,
    /// `HOST:PORT` of its tunnel; HOST is a name in its certificate.
    pub tunnel: String,
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    pub resource: String,
    pub subject: Subject,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub resource: String,
    pub subject: Subject,
    pub expires_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub admin: bool,
    pub disabled: bool,
    pub totp: bool,
    pub groups: Vec<String>,
    pub created_at: i64,
}

/// A new user, or a reset password: shown once, never stored in the clear.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimePassword {
    pub user: String,
    pub one_time_password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Trusted,
    Pending,
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub user: String,
    pub name: String,
    pub fingerprint: String,
    pub status: DeviceStatus,
    pub created_at: i64,
    pub last_seen: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub device: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
}

/// One event on `GET /v1/revocations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Increasing; resume a stream with `?since=<seq>` or `Last-Event-ID`.
    pub seq: i64,
    pub session: SessionId,
    pub user: UserName,
    pub device: DeviceId,
    pub reason: String,
    pub at: i64,
    /// Set when what ended is the user's access to this resource (a grant revoked, a
    /// group left), not a session: `session` is then `*`, every session of the user.
    #[serde(default)]
    pub resource: Option<String>,
}

/// The `session` of an access revocation: every session of its user.
pub const ALL_SESSIONS: &str = "*";

/// How an organisation treats a device it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DevicePolicy {
    /// Trusted on first use.
    Tofu,
    /// Pending until an admin approves it.
    Approval,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGatewayToken {
    pub name: String,
    /// DNS names and IP addresses the gateway serves on (its certificate's SANs).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Seconds the token stays usable; 1 hour by default.
    #[serde(default)]
    pub ttl: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayToken {
    pub name: String,
    pub token: String,
    pub expires_at: i64,
}

/// `POST /v1/gateways/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    pub token: String,
    /// PKCS#10, PEM; only its public key is used.
    pub csr: String,
}

/// `POST /v1/gateways/renew`, over mutual TLS with the current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    pub csr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayCertificate {
    pub name: String,
    pub certificate: String,
    pub ca: String,
    pub expires_at: i64,
}

/// `lastmile-api nodes token`: a one-time token for `POST /v1/nodes/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeToken {
    pub name: String,
    pub token: String,
    pub expires_at: i64,
}

/// `POST /v1/nodes/enroll`'s reply: the node's audit-writer certificate (URI SAN
/// `urn:lastmile:node:NAME`, client authentication only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCertificate {
    pub name: String,
    pub certificate: String,
    pub ca: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gateway {
    pub name: String,
    pub addresses: Vec<String>,
    pub certificate_expires_at: i64,
    pub enrolled_at: i64,
}

/// Certificate SAN URIs: who a certificate speaks for.
pub mod uri {
    pub fn user(name: &str) -> String {
        format!("urn:lastmile:user:{name}")
    }
    pub fn session(id: &str) -> String {
        format!("urn:lastmile:session:{id}")
    }
    pub fn device(id: &str) -> String {
        format!("urn:lastmile:device:{id}")
    }
    pub fn gateway(name: &str) -> String {
        format!("urn:lastmile:gateway:{name}")
    }
    /// A node (`lastmiled node enroll`): an audit writer, nothing else.
    pub fn node(name: &str) -> String {
        format!("urn:lastmile:node:{name}")
    }
    /// A security reader of the audit log (`lastmile-api audit-readers issue`).
    pub fn audit_reader(name: &str) -> String {
        format!("urn:lastmile:audit-reader:{name}")
    }

    /// The roles an audit service's `writers` and `readers` lists may name instead of
    /// single identities: `role:NAME` stands for every identity this CA issued in it.
    pub const ROLES: &[&str] = &["gateway", "node", "api", "audit-reader"];

    /// The role `identity` was issued in, if it is one of [`ROLES`].
    pub fn role_of(identity: &str) -> Option<&'static str> {
        if identity == API {
            return Some("api");
        }
        let rest = identity.strip_prefix("urn:lastmile:")?;
        let (role, name) = rest.split_once(':')?;
        let role = ROLES.iter().copied().find(|r| *r == role && *r != "api")?;
        crate::wire::valid_name(name).then_some(role)
    }
    /// The API's own certificate names this, and clients require it: a gateway's
    /// certificate (also `serverAuth`, from the same CA) cannot stand in for the API.
    pub const API: &str = "urn:lastmile:api";
    /// The gateway name in a gateway URI.
    pub fn gateway_name(uri: &str) -> Option<&str> {
        uri.strip_prefix("urn:lastmile:gateway:")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_certificate_identity_has_a_role_only_when_this_ca_issues_it_in_one() {
        use super::uri::*;
        assert_eq!(role_of(&gateway("gw-1")), Some("gateway"));
        assert_eq!(role_of(&node("bastion-1")), Some("node"));
        assert_eq!(role_of(&audit_reader("sam")), Some("audit-reader"));
        assert_eq!(role_of(API), Some("api"));
        assert_eq!(role_of(&user("alice")), None);
        assert_eq!(role_of(&session("s1")), None);
        assert_eq!(role_of("urn:lastmile:api:x"), None);
        assert_eq!(role_of("urn:lastmile:node:"), None);
        assert_eq!(role_of("urn:lastmile:node:a:b"), None);
        assert_eq!(role_of("CN=gw-1"), None);
    }

    #[test]
    fn host_port_brackets_ipv6_only() {
        assert_eq!(host_port("::1", 15432), "[::1]:15432");
        assert_eq!(host_port("127.0.0.1", 5432), "127.0.0.1:5432");
        assert_eq!(host_port("db.internal", 5432), "db.internal:5432");
    }

    use super::*;

    #[test]
    fn names() {
        for good in ["alice", "db-1", "a.b_c", "0"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Alice", "-x", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_login_proof_cannot_shift_bytes_between_fields() {
        assert_ne!(
            login_proof_message("ab", "c", "k", "f"),
            login_proof_message("a", "bc", "k", "f")
        );
    }
}
