//! lastmile's control plane: the organisation's CAs, users and their devices, sessions,
//! signed API calls, revocation, gateway enrollment, resources and grants.
//!
//! Layout: [`db`] (SQLite or PostgreSQL through sqlx), [`pki`] (X.509 and SSH CAs),
//! [`secret`] (argon2id, TOTP), [`auth`] (login and the signed-call check),
//! [`revocation`] (the stream), [`admin`] and [`gateways`] (changes, each audited),
//! [`vault`] (stored credentials and their unlock), [`http`] (TLS and routes).

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod connections;
pub mod db;
pub mod error;
pub mod events;
pub mod gateways;
pub mod http;
pub mod login;
pub mod metrics;
pub mod nodes;
pub mod pki;
pub mod revocation;
pub mod secret;
pub mod vault;

pub use app::App;
pub use config::ApiConfig;
