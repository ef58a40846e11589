//! Admission: quota on the best account (highest priority, least used
//! today), that account's own throttles (sends per minute, concurrent
//! connections), and during a switch the Python platform's count
//! ([`crate::shared_quota`]).

use std::time::Duration;

use chrono::NaiveDate;
use platform::db::email_accounts::{self, EmailAccount, Reservation};
use uuid::Uuid;

use crate::context::Context;
use crate::smtp::ConnectionSlot;

/// An account that takes one send, with its connection slot when it has a
/// connection cap.
pub type Admitted = (EmailAccount, Option<ConnectionSlot>);

/// When to look again for an account, and why none could take it now.
pub type Wait = (Duration, &'static str);

/// Reserves quota on the best account whose own throttles (rate per
/// minute, connection cap) admit one more send now. `Err((wait, why))`
/// when no account can take the message yet.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn reserve_admitted(
    ctx: &Context,
    today: chrono::NaiveDate,
) -> Result<Result<Admitted, Wait>, sqlx::Error> {
    let mut throttled: Vec<Uuid> = Vec::new();
    let mut soonest: Option<Duration> = None;
    loop {
        let Some(account) = email_accounts::reserve(&ctx.pool, today, &throttled).await? else {
            return Ok(Err(match soonest {
                Some(wait) => (
                    wait,
                    "waiting for an SMTP account's rate or connection limit",
                ),
                None => (
                    ctx.settings.quota_wait,
                    "waiting for an SMTP account with quota left",
                ),
            }));
        };
        match admit(ctx, &account).await {
            Ok(slot) => {
                let shared = match &ctx.shared_quota {
                    Some(shared) => shared.take(&account.email, 1).await == 1,
                    None => true,
                };
                if shared {
                    return Ok(Ok((account, slot)));
                }
                // The Python platform used the rest of the day's quota.
                email_accounts::release(&ctx.pool, today, account.id).await?;
                release_slot(ctx, slot).await;
                throttled.push(account.id);
            }
            Err(wait) => {
                email_accounts::release(&ctx.pool, today, account.id).await?;
                throttled.push(account.id);
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
    }
}

/// Applies the account's throttles; `Err(wait)` when it must wait. When
/// Redis cannot be asked, a throttled account is held back rather than
/// risk passing its provider's limits.
pub async fn admit(
    ctx: &Context,
    account: &EmailAccount,
) -> Result<Option<ConnectionSlot>, Duration> {
    let unavailable = |e: crate::smtp::ThrottleError| {
        tracing::warn!(account = %account.email, error = %e, "throttle unavailable; holding the account back");
        Duration::from_secs(5)
    };
    if let Some(limit) = account.rate_limit_per_minute {
        if let Some(wait) = ctx
            .throttle
            .admit(account.id, limit as u32)
            .await
            .map_err(unavailable)?
        {
            return Err(wait);
        }
    }
    if let Some(max) = account.max_connections {
        let slot_for = ctx.settings.task_time_limit;
        return match ctx
            .throttle
            .take_slot(account.id, max as u32, slot_for)
            .await
            .map_err(unavailable)?
        {
            Some(slot) => Ok(Some(slot)),
            None => Err(Duration::from_secs(1)),
        };
    }
    Ok(None)
}

pub async fn release_slot(ctx: &Context, slot: Option<ConnectionSlot>) {
    if let Some(slot) = slot {
        if let Err(e) = ctx.throttle.release(slot).await {
            tracing::warn!(error = %e, "cannot release a connection slot; it expires by itself");
        }
    }
}

/// Reserves quota for up to `wanted` plain sends at once (best accounts
/// first), each reservation also taken from the Python platform's count
/// during a switch.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn reserve_many(
    ctx: &Context,
    today: NaiveDate,
    wanted: i32,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let mut reservations = email_accounts::reserve_many(&ctx.pool, today, wanted).await?;
    if let Some(shared) = &ctx.shared_quota {
        for r in &mut reservations {
            let granted = shared.take(&r.account.email, r.granted).await;
            if granted < r.granted {
                email_accounts::release_many(&ctx.pool, today, r.account.id, r.granted - granted)
                    .await?;
                r.granted = granted;
            }
        }
    }
    Ok(reservations)
}
