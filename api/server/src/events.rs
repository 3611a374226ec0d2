//! Every audit event the API writes, typed: the kind is the variant, its fields are the
//! schema's (`lastmile_audit_sink::schema`, `docs/audit-events.md`), so an event cannot
//! be written without a field its kind requires. [`App::audit`](crate::app::App::audit)
//! adds `v`, `time` and `component`; a test serializes every variant through the schema
//! check.

use lastmile_proto::{
    connection::ClientConnectionId,
    wire::{ErrorCode, Resource, Subject},
};
use serde::Serialize;

/// One audit event from the API. Fields borrow from the call site: an event is
/// serialized at once.
#[derive(Debug, Serialize)]
#[serde(tag = "kind")]
pub enum ApiEvent<'a> {
    #[serde(rename = "login")]
    Login {
        user: &'a str,
        device: &'a str,
        session: &'a str,
        totp: bool,
        password_changed: bool,
    },
    #[serde(rename = "login.failed")]
    LoginFailed {
        user: &'a str,
        reason: &'a ErrorCode,
    },
    #[serde(rename = "device.register")]
    DeviceRegister {
        user: &'a str,
        device: &'a str,
        fingerprint: &'a str,
        name: &'a str,
        status: &'a str,
    },
    #[serde(rename = "session.create")]
    SessionCreate {
        user: &'a str,
        device: &'a str,
        session: &'a str,
        expires_at: i64,
    },
    #[serde(rename = "session.revoke")]
    SessionRevoke {
        session: &'a str,
        user: &'a str,
        device: &'a str,
        reason: &'a str,
        actor: &'a str,
    },
    #[serde(rename = "grant.change")]
    GrantChange {
        actor: &'a str,
        resource: &'a str,
        grant: &'a str,
        #[serde(flatten)]
        change: GrantChange<'a>,
    },
    /// An administrative permission: a user made or unmade admin, the organisation's
    /// device policy.
    #[serde(rename = "permission.change")]
    PermissionChange {
        actor: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        change: &'a str,
    },
    #[serde(rename = "user.change")]
    UserChange {
        actor: &'a str,
        user: &'a str,
        change: &'a str,
        /// For `create`: whether the new user is an admin, and their groups.
        #[serde(skip_serializing_if = "Option::is_none")]
        admin: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        groups: Option<&'a [String]>,
    },
    #[serde(rename = "resource.change")]
    ResourceChange {
        actor: &'a str,
        resource: &'a str,
        #[serde(flatten)]
        change: ResourceChange<'a>,
    },
    #[serde(rename = "device.change")]
    DeviceChange {
        actor: &'a str,
        user: &'a str,
        device: &'a str,
        change: &'a str,
    },
    #[serde(rename = "gateway.change")]
    GatewayChange {
        /// An admin, or `gateway:NAME` for what a gateway does itself.
        actor: &'a str,
        gateway: &'a str,
        #[serde(flatten)]
        change: GatewayChange<'a>,
    },
    #[serde(rename = "identity.change")]
    IdentityChange {
        /// An admin, or the identity itself for what it does with its token.
        actor: &'a str,
        /// The certificate URI (`urn:lastmile:node:NAME`, `…:audit-reader:NAME`).
        identity: &'a str,
        #[serde(flatten)]
        change: IdentityChange,
    },
    #[serde(rename = "credential.change")]
    CredentialChange {
        actor: &'a str,
        resource: &'a str,
        version: i64,
        /// The KMS key the data key is now wrapped under.
        kms_key: &'a str,
        #[serde(flatten)]
        change: CredentialChange<'a>,
    },
    #[serde(rename = "credential.decrypt")]
    CredentialDecrypt {
        #[serde(flatten)]
        connection: ConnectionFields<'a>,
        /// 0 for a certificate made for the connection (nothing stored was decrypted).
        version: i64,
        credential_kind: &'a str,
    },
    #[serde(rename = "connection.open")]
    ConnectionOpen {
        #[serde(flatten)]
        connection: ConnectionFields<'a>,
    },
}

/// What names one connection in `connection.open` and `credential.decrypt`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConnectionFields<'a> {
    /// The API's id for the connection.
    pub connection: &'a str,
    pub client_connection: &'a ClientConnectionId,
    /// The kernel's socket cookie the client's id carries, if it carries one.
    pub sock_cookie: Option<u64>,
    pub session: &'a str,
    pub user: &'a str,
    pub device: &'a str,
    pub resource: &'a str,
    pub gateway: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum GrantChange<'a> {
    Grant {
        subject: &'a Subject,
        expires_at: Option<i64>,
    },
    /// `access_ended`: the users whose access (and open connections) it ended.
    Revoke { access_ended: &'a [String] },
}

#[derive(Debug, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ResourceChange<'a> {
    Create { definition: &'a Resource },
    Update { definition: &'a Resource },
    Delete { credentials_deleted: i64 },
}

#[derive(Debug, Serialize)]
#[serde(tag = "change")]
pub enum GatewayChange<'a> {
    #[serde(rename = "enrollment token")]
    Token {
        addresses: &'a [String],
        expires_at: i64,
    },
    #[serde(rename = "enroll")]
    Enroll { expires_at: i64 },
    #[serde(rename = "renew")]
    Renew { expires_at: i64 },
    #[serde(rename = "revoke")]
    Revoke,
    #[serde(rename = "announce")]
    Announce { tunnel: &'a str },
    #[serde(rename = "resource_certificate")]
    ResourceCertificate {
        resource: &'a str,
        names: &'a [String],
        expires_at: i64,
    },
    #[serde(rename = "ssh_host_certificate")]
    SshHostCertificate {
        resource: &'a str,
        principals: &'a [String],
        /// The host key's SHA-256 fingerprint.
        key: &'a str,
        expires_at: i64,
    },
}

/// A node's or security reader's certificate identity: its token made, it enrolled, or a
/// reader's certificate issued by an admin.
#[derive(Debug, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum IdentityChange {
    #[serde(rename = "enrollment token")]
    Token {
        expires_at: i64,
    },
    Enroll {
        expires_at: i64,
    },
    Issue {
        expires_at: i64,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum CredentialChange<'a> {
    /// A new version was stored.
    Set { credential_kind: &'a str },
    /// The data key was re-wrapped from `from_key` to `kms_key`.
    Rewrap { from_key: &'a str },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, as the API writes it, passes the schema's check of its kind.
    #[test]
    fn every_event_meets_the_schema() {
        let id = ClientConnectionId::handed_over(7, "ab");
        let conn = ConnectionFields {
            connection: "conn_1",
            client_connection: &id,
            sock_cookie: id.sock_cookie(),
            session: "ses_1",
            user: "alice",
            device: "dev_1",
            resource: "db",
            gateway: "gw1",
        };
        let resource: Resource = serde_json::from_value(serde_json::json!({
            "name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 5432
        }))
        .unwrap();
        let subject = Subject::User("alice".into());
        let names = ["db.example".to_owned()];
        let code = ErrorCode::BadCredentials;
        let events = [
            ApiEvent::Login {
                user: "alice",
                device: "dev_1",
                session: "ses_1",
                totp: false,
                password_changed: false,
            },
            ApiEvent::LoginFailed {
                user: "alice",
                reason: &code,
            },
            ApiEvent::DeviceRegister {
                user: "alice",
                device: "dev_1",
                fingerprint: "f",
                name: "laptop",
                status: "trusted",
            },
            ApiEvent::SessionCreate {
                user: "alice",
                device: "dev_1",
                session: "ses_1",
                expires_at: 1,
            },
            ApiEvent::SessionRevoke {
                session: "ses_1",
                user: "alice",
                device: "dev_1",
                reason: "logout",
                actor: "alice",
            },
            ApiEvent::GrantChange {
                actor: "admin",
                resource: "db",
                grant: "g1",
                change: GrantChange::Grant {
                    subject: &subject,
                    expires_at: None,
                },
            },
            ApiEvent::GrantChange {
                actor: "admin",
                resource: "db",
                grant: "g1",
                change: GrantChange::Revoke {
                    access_ended: &names,
                },
            },
            ApiEvent::PermissionChange {
                actor: "admin",
                user: None,
                change: "device_policy=any",
            },
            ApiEvent::UserChange {
                actor: "admin",
                user: "bob",
                change: "create",
                admin: Some(false),
                groups: Some(&names),
            },
            ApiEvent::ResourceChange {
                actor: "admin",
                resource: "db",
                change: ResourceChange::Create {
                    definition: &resource,
                },
            },
            ApiEvent::ResourceChange {
                actor: "admin",
                resource: "db",
                change: ResourceChange::Delete {
                    credentials_deleted: 1,
                },
            },
            ApiEvent::DeviceChange {
                actor: "admin",
                user: "alice",
                device: "dev_1",
                change: "pending -> trusted",
            },
            ApiEvent::GatewayChange {
                actor: "gateway:gw1",
                gateway: "gw1",
                change: GatewayChange::SshHostCertificate {
                    resource: "web",
                    principals: &names,
                    key: "SHA256:x",
                    expires_at: 1,
                },
            },
            ApiEvent::GatewayChange {
                actor: "admin",
                gateway: "gw1",
                change: GatewayChange::Revoke,
            },
            ApiEvent::IdentityChange {
                actor: "admin",
                identity: "urn:lastmile:node:bastion-1",
                change: IdentityChange::Token { expires_at: 1 },
            },
            ApiEvent::IdentityChange {
                actor: "urn:lastmile:node:bastion-1",
                identity: "urn:lastmile:node:bastion-1",
                change: IdentityChange::Enroll { expires_at: 1 },
            },
            ApiEvent::IdentityChange {
                actor: "admin",
                identity: "urn:lastmile:audit-reader:sam",
                change: IdentityChange::Issue { expires_at: 1 },
            },
            ApiEvent::CredentialChange {
                actor: "admin",
                resource: "db",
                version: 2,
                kms_key: "k",
                change: CredentialChange::Set {
                    credential_kind: "password",
                },
            },
            ApiEvent::CredentialDecrypt {
                connection: conn,
                version: 2,
                credential_kind: "password",
            },
            ApiEvent::ConnectionOpen { connection: conn },
        ];
        for e in &events {
            let mut v = serde_json::to_value(e).unwrap();
            v["v"] = lastmile_audit_sink::schema::VERSION.into();
            lastmile_audit_sink::schema::check(&v).unwrap_or_else(|why| panic!("{v}: {why}"));
        }
        // The credential's kind no longer collides with the event's.
        let v = serde_json::to_value(&events[18]).unwrap();
        assert_eq!(v["kind"], "credential.decrypt");
        assert_eq!(v["credential_kind"], "password");
        assert_eq!(v["sock_cookie"], 7);
        let v = serde_json::to_value(&events[6]).unwrap();
        assert_eq!(v["change"], "revoke");
    }
}
