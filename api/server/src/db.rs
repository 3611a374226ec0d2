//! The API's state: SQLite by default, PostgreSQL when configured, through sqlx's `Any`
//! driver so every query is written once. Queries use `$N` placeholders, which both
//! engines accept (sqlx binds SQLite's `$NNN` by number).
//!
//! Migrations are embedded per dialect and run by sqlx's migrator, which takes an
//! advisory lock on PostgreSQL so several API instances can start at once.

use std::borrow::Cow;

use sqlx::{
    AnyPool,
    any::AnyPoolOptions,
    migrate::{Migration, MigrationType, Migrator},
};

/// Which engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "database URL `{0}` is neither sqlite:… nor postgres://…: set `database` in the API config"
    )]
    UnknownScheme(String),
    #[error("cannot open the database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database schema failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "vault",
        include_str!("../migrations/sqlite/0002_vault.sql"),
    ),
    (
        3,
        "tunnel",
        include_str!("../migrations/sqlite/0003_tunnel.sql"),
    ),
    (
        4,
        "postgres",
        include_str!("../migrations/sqlite/0004_postgres.sql"),
    ),
    (
        5,
        "access",
        include_str!("../migrations/sqlite/0005_access.sql"),
    ),
    (
        6,
        "totp_sealed",
        include_str!("../migrations/sqlite/0006_totp_sealed.sql"),
    ),
    (
        7,
        "gateway_keys",
        include_str!("../migrations/sqlite/0007_gateway_keys.sql"),
    ),
    (8, "ssh", include_str!("../migrations/sqlite/0008_ssh.sql")),
    (
        9,
        "token_roles",
        include_str!("../migrations/sqlite/0009_token_roles.sql"),
    ),
    (
        10,
        "resource_names",
        include_str!("../migrations/sqlite/0010_resource_names.sql"),
    ),
];
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "vault",
        include_str!("../migrations/postgres/0002_vault.sql"),
    ),
    (
        3,
        "tunnel",
        include_str!("../migrations/postgres/0003_tunnel.sql"),
    ),
    (
        4,
        "postgres",
        include_str!("../migrations/postgres/0004_postgres.sql"),
    ),
    (
        5,
        "access",
        include_str!("../migrations/postgres/0005_access.sql"),
    ),
    (
        6,
        "totp_sealed",
        include_str!("../migrations/postgres/0006_totp_sealed.sql"),
    ),
    (
        7,
        "gateway_keys",
        include_str!("../migrations/postgres/0007_gateway_keys.sql"),
    ),
    (
        8,
        "ssh",
        include_str!("../migrations/postgres/0008_ssh.sql"),
    ),
    (
        9,
        "token_roles",
        include_str!("../migrations/postgres/0009_token_roles.sql"),
    ),
    (
        10,
        "resource_names",
        include_str!("../migrations/postgres/0010_resource_names.sql"),
    ),
];

/// A URL safe to print: the password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = url.get(s + 3..at).unwrap_or_default();
            match creds.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    url.get(..s + 3).unwrap_or_default(),
                    url.get(at..).unwrap_or_default()
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Db {
    /// Begins a transaction that takes SQLite's write lock at once (`BEGIN IMMEDIATE`):
    /// a deferred transaction that read first and then writes gets SQLITE_BUSY at once,
    /// without waiting out `busy_timeout`, when another writer committed meanwhile, as
    /// happens while a transaction waits for the audit service's acknowledgement. On
    /// PostgreSQL, a plain `BEGIN`.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnknownScheme(redact(url)));
        };
        let mut options = AnyPoolOptions::new().max_connections(match backend {
            // One writer at a time is SQLite's model; a few readers beside it.
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        });
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(url)
            .await
            .map_err(|source| DbError::Connect {
                url: redact(url),
                source,
            })?;
        let steps = match backend {
            Backend::Sqlite => SQLITE,
            Backend::Postgres => POSTGRES,
        };
        let migrator = Migrator {
            migrations: Cow::Owned(
                steps
                    .iter()
                    .map(|(v, d, sql)| {
                        Migration::new(
                            *v,
                            Cow::Borrowed(*d),
                            MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        migrator.run(&pool).await?;
        Ok(Self { pool, backend })
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            super::redact("postgres://u:secret@127.0.0.1:5/db"),
            "postgres://u:***@127.0.0.1:5/db"
        );
        assert_eq!(super::redact("sqlite:/x/api.db"), "sqlite:/x/api.db");
    }
}
