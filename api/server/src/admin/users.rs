//! Users and groups: adding, changing, disabling and deleting users, their groups,
//! passwords and TOTP.

use super::*;
use lastmile_proto::wire::ErrorCode;

async fn user_groups(app: &App, user: &str) -> Result<Vec<String>, ApiError> {
    Ok(
        sqlx::query(
            "SELECT group_name FROM group_members WHERE user_name = $1 ORDER BY group_name",
        )
        .bind(user)
        .fetch_all(&app.db.pool)
        .await?
        .iter()
        .map(|r| r.try_get("group_name"))
        .collect::<Result<_, _>>()?,
    )
}

pub async fn list_users(app: &App) -> Result<Vec<User>, ApiError> {
    let rows = sqlx::query(
        "SELECT name, admin, disabled, totp_secret, totp_sealed, created_at FROM users ORDER BY name",
    )
    .fetch_all(&app.db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get("name")?;
        out.push(User {
            groups: user_groups(app, &name).await?,
            name,
            admin: r.try_get::<i64, _>("admin")? != 0,
            disabled: r.try_get::<i64, _>("disabled")? != 0,
            totp: r.try_get::<Option<String>, _>("totp_sealed")?.is_some()
                || r.try_get::<Option<String>, _>("totp_secret")?.is_some(),
            created_at: r.try_get("created_at")?,
        });
    }
    Ok(out)
}

pub async fn add_user(app: &App, actor: &str, new: NewUser) -> Result<OneTimePassword, ApiError> {
    check_name("user", &new.name)?;
    for g in &new.groups {
        check_name("group", g)?;
    }
    let otp = secret::one_time_password().map_err(ApiError::internal)?;
    let h = hash(otp.clone()).await?;
    let mut tx = app.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (name, password_hash, password_one_time, admin, created_at) VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&new.name)
    .bind(h)
    .bind(i64::from(new.admin))
    .bind(now())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted != 1 {
        return Err(ApiError::conflict(
            ErrorCode::UserExists,
            format!("user `{}` already exists", new.name),
        ));
    }
    for g in &new.groups {
        sqlx::query("INSERT INTO group_members (group_name, user_name) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(g)
            .bind(&new.name)
            .execute(&mut *tx)
            .await?;
    }
    app.audit(&ApiEvent::UserChange {
        actor,
        user: &new.name,
        change: "create",
        admin: Some(new.admin),
        groups: Some(&new.groups),
    })
    .await?;
    tx.commit().await?;
    Ok(OneTimePassword {
        user: new.name,
        one_time_password: otp,
    })
}

/// What can be changed about a user.
#[derive(Debug, Clone)]
pub enum UserChange {
    Disable,
    Enable,
    Admin(bool),
    JoinGroup(String),
    LeaveGroup(String),
    Delete,
}

pub async fn change_user(
    app: &App,
    actor: &str,
    user: &str,
    change: UserChange,
) -> Result<(), ApiError> {
    // A disabled or deleted user's sessions end first (and are published): should this
    // fail, the user is left with fewer sessions, never with more.
    if matches!(change, UserChange::Disable | UserChange::Delete) {
        let what = if matches!(change, UserChange::Delete) {
            "deleted"
        } else {
            "disabled"
        };
        for s in live_sessions(app, Some(user), None).await? {
            revoke_session(app, &s, &format!("user {what} by {actor}"), actor).await?;
        }
    }
    let mut tx = app.db.begin().await?;
    let (sql, arg, what): (&str, Option<String>, String) = match &change {
        UserChange::Disable => (
            "UPDATE users SET disabled = 1 WHERE name = $1",
            None,
            "disable".into(),
        ),
        UserChange::Enable => (
            "UPDATE users SET disabled = 0, failed_logins = 0, locked_until = 0 WHERE name = $1",
            None,
            "enable".into(),
        ),
        UserChange::Admin(true) => (
            "UPDATE users SET admin = 1 WHERE name = $1",
            None,
            "admin=true".into(),
        ),
        UserChange::Admin(false) => (
            "UPDATE users SET admin = 0 WHERE name = $1",
            None,
            "admin=false".into(),
        ),
        UserChange::Delete => ("DELETE FROM users WHERE name = $1", None, "delete".into()),
        UserChange::JoinGroup(g) => {
            check_name("group", g)?;
            (
                "INSERT INTO group_members (group_name, user_name) SELECT $2, name FROM users WHERE name = $1 ON CONFLICT DO NOTHING",
                Some(g.clone()),
                format!("join group {g}"),
            )
        }
        UserChange::LeaveGroup(g) => {
            check_name("group", g)?;
            (
                "DELETE FROM group_members WHERE user_name = $1 AND group_name = $2",
                Some(g.clone()),
                format!("leave group {g}"),
            )
        }
    };
    require_user(&mut tx, user).await?;
    if matches!(change, UserChange::Delete) {
        // A name can be reused; what was granted to the old user must not pass to a new one.
        sqlx::query("DELETE FROM grants WHERE subject_kind = 'user' AND subject = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
    }
    let mut q = sqlx::query(sql).bind(user);
    if let Some(a) = &arg {
        q = q.bind(a);
    }
    q.execute(&mut *tx).await?;
    let mut left_access = false;
    if let UserChange::LeaveGroup(g) = &change {
        // What the group gave ends now, unless another grant still gives it.
        let resources: Vec<String> = sqlx::query(
            "SELECT DISTINCT resource FROM grants WHERE subject_kind = 'group' AND subject = $1",
        )
        .bind(g)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("resource"))
        .collect::<Result<_, _>>()?;
        for r in &resources {
            left_access |= crate::revocation::end_access(
                &mut tx,
                app.db.backend,
                user,
                r,
                &format!("left group {g} ({actor})"),
            )
            .await?;
        }
    }
    let event = if matches!(change, UserChange::Admin(_)) {
        ApiEvent::PermissionChange {
            actor,
            user: Some(user),
            change: &what,
        }
    } else {
        ApiEvent::UserChange {
            actor,
            user,
            change: &what,
            admin: None,
            groups: None,
        }
    };
    app.audit(&event).await?;
    tx.commit().await?;
    if left_access {
        app.revocations.nudge();
    }
    Ok(())
}

pub async fn reset_password(
    app: &App,
    actor: &str,
    user: &str,
) -> Result<OneTimePassword, ApiError> {
    let otp = secret::one_time_password().map_err(ApiError::internal)?;
    let h = hash(otp.clone()).await?;
    let mut tx = app.db.begin().await?;
    let n = sqlx::query("UPDATE users SET password_hash = $1, password_one_time = 1, failed_logins = 0, locked_until = 0 WHERE name = $2")
        .bind(h)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            ErrorCode::NoSuchUser,
            format!("there is no user `{user}`"),
        ));
    }
    app.audit(&ApiEvent::UserChange {
        actor,
        user,
        change: "reset password",
        admin: None,
        groups: None,
    })
    .await?;
    tx.commit().await?;
    Ok(OneTimePassword {
        user: user.to_owned(),
        one_time_password: otp,
    })
}

/// Seals, under the KMS, TOTP seeds stored in the clear before seeds were sealed (run at
/// start). Each row changes only if its clear seed is still the one read, so several
/// instances starting at once, or a concurrent `totp-on`, are harmless.
pub async fn seal_clear_totp_seeds(app: &App) -> Result<u64, ApiError> {
    let rows = sqlx::query("SELECT name, totp_secret FROM users WHERE totp_secret IS NOT NULL")
        .fetch_all(&app.db.pool)
        .await?;
    let mut sealed = 0;
    for r in rows {
        let name: String = r.try_get("name")?;
        let clear: String = r.try_get("totp_secret")?;
        let text = secret::seal_totp(&app.kms, &app.pki.organisation, &name, &clear)
            .await
            .map_err(crate::vault::kms_error)?;
        sealed += sqlx::query(
            "UPDATE users SET totp_sealed = $1, totp_secret = NULL WHERE name = $2 AND totp_secret = $3",
        )
        .bind(&text)
        .bind(&name)
        .bind(&clear)
        .execute(&app.db.pool)
        .await?
        .rows_affected();
    }
    Ok(sealed)
}

/// Turns TOTP on (a new secret; the `otpauth://` URI to show once) or off (`None`).
pub async fn set_totp(
    app: &App,
    actor: &str,
    user: &str,
    on: bool,
) -> Result<Option<String>, ApiError> {
    let secret = if on {
        Some(secret::new_totp_secret().map_err(ApiError::internal)?)
    } else {
        None
    };
    // Sealed like every other secret; the clear seed goes out once, in the URI.
    let sealed = match &secret {
        Some(s) => Some(
            secret::seal_totp(&app.kms, &app.pki.organisation, user, s)
                .await
                .map_err(crate::vault::kms_error)?,
        ),
        None => None,
    };
    let mut tx = app.db.begin().await?;
    let n = sqlx::query(
        "UPDATE users SET totp_sealed = $1, totp_secret = NULL, totp_last_step = 0 WHERE name = $2",
    )
    .bind(&sealed)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Err(ApiError::not_found(
            ErrorCode::NoSuchUser,
            format!("there is no user `{user}`"),
        ));
    }
    app.audit(&ApiEvent::UserChange {
        actor,
        user,
        change: if on { "totp on" } else { "totp off" },
        admin: None,
        groups: None,
    })
    .await?;
    tx.commit().await?;
    Ok(secret.map(|s| secret::totp_uri(&app.pki.organisation, user, &s)))
}
