//! A real API on loopback for each test: a fresh organisation, served over TLS in-process,
//! on SQLite or on a throwaway PostgreSQL.
#![allow(dead_code, missing_debug_implementations)]

use std::sync::{Arc, Mutex, Weak};

use ed25519_dalek::SigningKey;
use lastmile_api::{ApiConfig, App, admin};
use lastmile_api_client::{ApiClient, Login, Session, new_key, random32};
use lastmile_proto::wire::NewUser;
use lastmile_testkit::PgServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// One PostgreSQL server shared by the tests running at the same time; each test gets its
/// own database. It stops when the last test using it ends.
fn postgres() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pg) = g.upgrade() {
        return pg;
    }
    let pg = Arc::new(PgServer::start().expect("starting PostgreSQL (run `cargo xtask setup`)"));
    *g = Arc::downgrade(&pg);
    pg
}

pub const PASSWORD: &str = "a long enough password";

pub struct Api {
    pub dir: tempfile::TempDir,
    pub app: Arc<App>,
    pub client: ApiClient,
    pub base: String,
    pub ca: String,
    admin_otp: String,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _pg: Option<Arc<PgServer>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub struct Device {
    pub key: SigningKey,
    pub fingerprint: String,
}

impl Device {
    pub fn new() -> Self {
        Self {
            key: new_key().unwrap(),
            fingerprint: random32()
                .unwrap()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }
}

pub async fn start(store: Store, tweak: impl FnOnce(&mut ApiConfig)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let (pg, database) = match store {
        Store::Sqlite => (None, None),
        Store::Postgres => {
            let pg = postgres();
            let name = format!(
                "t{}",
                random32()
                    .unwrap()
                    .iter()
                    .take(6)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let url = pg.create_database(&name).unwrap();
            (Some(pg), Some(url))
        }
    };
    let mut config = ApiConfig {
        data_dir: dir.path().to_owned(),
        database,
        ..ApiConfig::default()
    };
    tweak(&mut config);
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .unwrap();
    lastmile_api::pki::Pki::create(&config.keys_dir(), "acme", &config.names, &kms)
        .await
        .unwrap();
    let app = App::open(config).await.unwrap();
    let otp = admin::bootstrap(&app, "admin").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(lastmile_api::http::serve(app.clone(), listener));
    let ca = app.pki.ca_pem().to_owned();
    let base = format!("https://localhost:{port}");
    Api {
        client: ApiClient::new(&base, &ca, None).unwrap(),
        base,
        ca,
        admin_otp: otp.one_time_password,
        app,
        dir,
        server,
        _pg: pg,
    }
}

impl Api {
    /// A second API instance on the same keys and database (as behind a load balancer).
    pub async fn another_instance(
        &self,
    ) -> (ApiClient, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let app = App::open(self.app.config.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(lastmile_api::http::serve(app, listener));
        (
            ApiClient::new(&format!("https://localhost:{port}"), &self.ca, None).unwrap(),
            server,
        )
    }

    pub async fn login(
        &self,
        user: &str,
        password: &str,
        new_password: Option<&str>,
        device: &Device,
    ) -> Result<Session, lastmile_api_client::ClientError> {
        self.client
            .login(&Login {
                user,
                password,
                totp: None,
                new_password,
                device_key: &device.key,
                fingerprint: &device.fingerprint,
                device_name: "test machine",
            })
            .await
    }

    /// The first admin, logged in (changing the one-time password).
    pub async fn admin(&self) -> Session {
        self.login(
            "admin",
            &self.admin_otp.clone(),
            Some(PASSWORD),
            &Device::new(),
        )
        .await
        .unwrap()
    }

    /// A new user, logged in on a new device.
    pub async fn user(&self, name: &str) -> (Session, Device) {
        let otp = admin::add_user(
            &self.app,
            "test",
            NewUser {
                name: name.into(),
                admin: false,
                groups: vec![],
            },
        )
        .await
        .unwrap();
        let device = Device::new();
        let s = self
            .login(name, &otp.one_time_password, Some(PASSWORD), &device)
            .await
            .unwrap();
        (s, device)
    }

    /// The audit events written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.app.config.audit_file())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn audited(&self, kind: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

/// An enrolled gateway: its Ed25519 key, certificate, and a client presenting it.
pub struct Gateway {
    pub name: String,
    pub key: SigningKey,
    pub client: ApiClient,
}

/// PKCS#8 v1 (RFC 8410 §7) of an Ed25519 seed, as rcgen and rustls take it.
pub fn ed25519_pkcs8(key: &SigningKey) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(key.as_bytes());
    der
}

impl Gateway {
    pub async fn enroll(api: &Api, admin: &Session, name: &str) -> Self {
        Self::enroll_at(api, admin, name, &[]).await
    }

    /// Enrolls with these certificate addresses.
    pub async fn enroll_at(api: &Api, admin: &Session, name: &str, addresses: &[&str]) -> Self {
        let token: lastmile_proto::wire::GatewayToken = api
            .client
            .call(
                admin,
                reqwest::Method::POST,
                "/v1/admin/gateways/tokens",
                Some(&serde_json::json!({"name": name, "addresses": addresses})),
            )
            .await
            .unwrap()
            .json()
            .unwrap();
        let key = new_key().unwrap();
        let pair = rcgen::KeyPair::try_from(ed25519_pkcs8(&key).as_slice()).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&pair)
            .unwrap()
            .pem()
            .unwrap();
        let cert: lastmile_proto::wire::GatewayCertificate = api
            .client
            .post(
                "/v1/gateways/enroll",
                &lastmile_proto::wire::Enroll {
                    token: token.token,
                    csr,
                },
            )
            .await
            .unwrap();
        let client = ApiClient::new(
            &api.base,
            &api.ca,
            Some((&cert.certificate, &pair.serialize_pem())),
        )
        .unwrap();
        Self {
            name: name.to_owned(),
            key,
            client,
        }
    }

    /// Sends an unlock request, signed with the gateway's key.
    pub async fn unlock(&self, req: &serde_json::Value) -> lastmile_api_client::Answer {
        self.post("/v1/credentials/unlock", req).await
    }

    /// A POST signed with the gateway's key (and its certificate at the TLS layer).
    pub async fn post(&self, path: &str, req: &serde_json::Value) -> lastmile_api_client::Answer {
        self.client
            .call_as_gateway(
                &self.name,
                &self.key,
                reqwest::Method::POST,
                path,
                &serde_json::to_vec(req).unwrap(),
            )
            .await
            .unwrap()
    }
}

/// The agent's side: a per-connection authorization signed by the session key.
pub fn authorize(
    session: &Session,
    resource: &str,
    gateway: &str,
) -> (lastmile_proto::wire::UnlockAuthorization, String) {
    session
        .authorize(
            &lastmile_proto::wire::ResourceName::parse(resource).unwrap(),
            &lastmile_proto::wire::GatewayName::parse(gateway).unwrap(),
            &format!("conn-{}", lastmile_api_client::nonce().unwrap()),
        )
        .unwrap()
}

/// An admin; resource `orders-db` (postgres, a stored password `secret`); user alice,
/// logged in, granted it; gateway `gw1`, enrolled.
pub async fn vault_fixture(api: &Api, secret: &str) -> (Session, Session, Gateway) {
    use reqwest::Method;
    use serde_json::json;
    let admin = api.admin().await;
    let db = json!({"name": "orders-db", "kind": "postgres", "host": "127.0.0.1", "port": 5432, "credential": "password"});
    let a = api
        .client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/resources/orders-db",
            Some(&db),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    lastmile_api::vault::set_credential(
        &api.app,
        "test",
        "orders-db",
        lastmile_proto::wire::CredentialKind::Password,
        zeroize::Zeroizing::new(secret.as_bytes().to_vec()),
    )
    .await
    .unwrap();
    let (alice, _) = api.user("alice").await;
    let grant = json!({"resource": "orders-db", "subject": {"user": "alice"}});
    api.client
        .call(&admin, Method::POST, "/v1/admin/grants", Some(&grant))
        .await
        .unwrap();
    let gw = Gateway::enroll(api, &admin, "gw1").await;
    (admin, alice, gw)
}

/// Runs a test body against both stores.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(support::Store::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(support::Store::Postgres).await;
            }
        }
    };
}
