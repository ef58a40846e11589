//! Admission: quota on the best accounts (highest priority, least used
//! today), the throttles of accounts that have their own (sends per
//! minute, concurrent connections), and during a switch the Python
//! platform's count ([`crate::shared_quota`]).

use std::time::Duration;

use chrono::NaiveDate;
use platform::db::email_accounts::{self, EmailAccount};
use uuid::Uuid;

use crate::context::Context;
use crate::smtp::ConnectionSlot;

/// One admitted send: the account (an index into [`Admission::accounts`])
/// and its connection slot when the account caps its connections.
pub struct Seat {
    pub account: usize,
    pub slot: Option<ConnectionSlot>,
}

/// What [`reserve`] admitted.
pub struct Admission {
    /// The accounts that took sends, best first.
    pub accounts: Vec<EmailAccount>,
    /// One per admitted send, best account first.
    pub seats: Vec<Seat>,
    /// When fewer than asked were admitted: when to look again, and why.
    pub wait: Option<Wait>,
}

/// When to look again for a send that cannot go now, and why: the
/// reason recorded on the message (its timeline's `waiting` event), which
/// starts with a code (`quota`, `account_throttle`, `domain_throttle`).
#[derive(Debug, Clone)]
pub struct Wait {
    pub delay: Duration,
    pub reason: String,
    pub cause: Cause,
}

/// What a send waits for, as the metrics count it.
#[derive(Debug, Clone)]
pub enum Cause {
    /// No account with quota left today.
    Quota,
    /// Every account with quota is at its own rate or connection limit.
    AccountThrottle,
    /// A recipient domain's limit.
    Domain {
        domain: String,
        limit: crate::domain_throttle::Limit,
    },
    /// The domain throttles could not be checked.
    DomainUnavailable,
}

/// Reserves quota for up to `wanted` sends, filling the best account
/// first. An account with its own throttles takes one send at a time, each
/// checked against them; one that refuses is passed over for the next.
#[tracing::instrument(level = "debug", skip(ctx))]
pub async fn reserve(
    ctx: &Context,
    today: NaiveDate,
    wanted: usize,
) -> Result<Admission, sqlx::Error> {
    let mut admission = Admission {
        accounts: Vec::new(),
        seats: Vec::new(),
        wait: None,
    };
    let mut passed: Vec<Uuid> = Vec::new();
    let mut throttled_for: Option<Duration> = None;
    while admission.seats.len() < wanted {
        let left = (wanted - admission.seats.len()) as i32;
        let Some(reserved) = email_accounts::reserve(&ctx.pool, today, &passed, left).await? else {
            break;
        };
        let account = reserved.account;
        let mut granted = reserved.granted;
        let mut slot = None;
        if account.is_throttled() {
            match throttles(ctx, &account).await {
                Ok(s) => slot = s,
                Err(wait) => {
                    email_accounts::release(&ctx.pool, today, account.id, granted).await?;
                    throttled_for = Some(throttled_for.map_or(wait, |w| w.min(wait)));
                    passed.push(account.id);
                    continue;
                }
            }
        } else {
            // Filled as far as it goes; the next round looks elsewhere.
            passed.push(account.id);
        }
        if let Some(shared) = &ctx.shared_quota {
            let taken = shared.take(&account.email, granted).await;
            if taken < granted {
                // The Python platform used the rest of the day's quota.
                email_accounts::release(&ctx.pool, today, account.id, granted - taken).await?;
                granted = taken;
                passed.push(account.id);
            }
        }
        if granted == 0 {
            release_slot(ctx, slot).await;
            continue;
        }
        let index = match admission.accounts.iter().position(|a| a.id == account.id) {
            Some(index) => index,
            None => {
                admission.accounts.push(account);
                admission.accounts.len() - 1
            }
        };
        admission.seats.push(Seat {
            account: index,
            slot,
        });
        admission.seats.extend((1..granted).map(|_| Seat {
            account: index,
            slot: None,
        }));
    }
    if admission.seats.len() < wanted {
        admission.wait = Some(match throttled_for {
            Some(delay) => Wait {
                delay,
                reason: "account_throttle: waiting for an SMTP account's rate or connection limit"
                    .into(),
                cause: Cause::AccountThrottle,
            },
            None => Wait {
                delay: ctx.settings.quota_wait,
                reason: "quota: waiting for an SMTP account with quota left".into(),
                cause: Cause::Quota,
            },
        });
    }
    Ok(admission)
}

/// Gives back seats that were not used (their quota and their slots);
/// `accounts` as the admission listed them.
pub async fn give_back(
    ctx: &Context,
    today: NaiveDate,
    accounts: &[EmailAccount],
    seats: impl IntoIterator<Item = Seat>,
) -> Result<(), sqlx::Error> {
    let mut counts = vec![0i32; accounts.len()];
    for seat in seats {
        counts[seat.account] += 1;
        release_slot(ctx, seat.slot).await;
    }
    for (account, count) in accounts.iter().zip(counts) {
        if count > 0 {
            email_accounts::release(&ctx.pool, today, account.id, count).await?;
        }
    }
    Ok(())
}

/// Applies the account's own throttles; `Err(wait)` when it must wait.
/// When Redis cannot be asked, the account is held back rather than risk
/// passing its provider's limits.
async fn throttles(
    ctx: &Context,
    account: &EmailAccount,
) -> Result<Option<ConnectionSlot>, Duration> {
    let unavailable = |e: crate::redis_error::RedisError| {
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
