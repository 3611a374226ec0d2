//! Grants: who may reach a resource, until when; revoking one ends the connections it
//! carried.

use super::*;
use lastmile_proto::wire::ErrorCode;

pub async fn add_grant(app: &App, actor: &str, g: NewGrant) -> Result<Grant, ApiError> {
    let (kind, subject) = match &g.subject {
        Subject::User(u) => ("user", u),
        Subject::Group(g) => ("group", g),
    };
    check_name(kind, subject)?;
    let t = now();
    if g.expires_at.is_some_and(|e| e <= t) {
        return Err(ApiError::bad_request(
            ErrorCode::BadGrant,
            "expires_at is in the past",
        ));
    }
    let mut tx = app.db.begin().await?;
    require_resource(&mut tx, &g.resource).await?;
    if kind == "user" {
        require_user(&mut tx, subject).await?;
    }
    let id = format!("grt_{}", hex(&random::<8>().map_err(ApiError::internal)?));
    sqlx::query(
        "INSERT INTO grants (id, resource, subject_kind, subject, expires_at, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&g.resource)
    .bind(kind)
    .bind(subject)
    .bind(g.expires_at)
    .bind(actor)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    app.audit(&ApiEvent::GrantChange {
        actor,
        resource: &g.resource,
        grant: &id,
        change: GrantChange::Grant {
            subject: &g.subject,
            expires_at: g.expires_at,
        },
    })
    .await?;
    tx.commit().await?;
    Ok(Grant {
        id,
        resource: g.resource,
        subject: g.subject,
        expires_at: g.expires_at,
        created_by: actor.to_owned(),
        created_at: t,
    })
}

pub async fn list_grants(app: &App) -> Result<Vec<Grant>, ApiError> {
    let rows = sqlx::query("SELECT id, resource, subject_kind, subject, expires_at, created_by, created_at FROM grants ORDER BY resource, id")
        .fetch_all(&app.db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let subject: String = r.try_get("subject")?;
            Ok(Grant {
                id: r.try_get("id")?,
                resource: r.try_get("resource")?,
                subject: if r.try_get::<String, _>("subject_kind")? == "group" {
                    Subject::Group(subject)
                } else {
                    Subject::User(subject)
                },
                expires_at: r.try_get("expires_at")?,
                created_by: r.try_get("created_by")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn revoke_grant(app: &App, actor: &str, id: &str) -> Result<(), ApiError> {
    let mut tx = app.db.begin().await?;
    let row =
        sqlx::query("DELETE FROM grants WHERE id = $1 RETURNING resource, subject_kind, subject")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                ApiError::not_found(ErrorCode::NoSuchGrant, format!("there is no grant `{id}`"))
            })?;
    let resource: String = row.try_get("resource")?;
    let subject: String = row.try_get("subject")?;
    // Whoever held access through this grant: open connections end unless another grant
    // still covers them.
    let users: Vec<String> = if row.try_get::<String, _>("subject_kind")? == "group" {
        sqlx::query("SELECT user_name FROM group_members WHERE group_name = $1")
            .bind(&subject)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("user_name"))
            .collect::<Result<_, _>>()?
    } else {
        vec![subject]
    };
    let mut ended = Vec::new();
    for u in &users {
        if crate::revocation::end_access(
            &mut tx,
            app.db.backend,
            u,
            &resource,
            &format!("grant {id} revoked by {actor}"),
        )
        .await?
        {
            ended.push(u.clone());
        }
    }
    app.audit(&ApiEvent::GrantChange {
        actor,
        resource: &resource,
        grant: id,
        change: GrantChange::Revoke {
            access_ended: &ended,
        },
    })
    .await?;
    tx.commit().await?;
    app.revocations.nudge();
    Ok(())
}
