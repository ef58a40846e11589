//! Admission: quota on the best accounts (highest priority, least used
//! today), in one reservation per account; the per-minute rates of
//! accounts that have one (one Redis round trip per account); a backlog
//! of a few sends per allowed connection on accounts with a connection
//! cap (the connections themselves are taken when sending,
//! [`crate::smtp::TransportCache`]); and during a switch the Python
//! platform's count ([`crate::shared_quota`]).

use std::time::Duration;

use chrono::NaiveDate;
use platform::db::email_accounts::{self, EmailAccount};
use uuid::Uuid;

use super::backlog::Pending;
use crate::context::Context;

/// One admitted send: the account (an index into [`Admission::accounts`])
/// and, when the account caps its connections, its place in the backlog.
pub struct Seat {
    pub account: usize,
    pub pending: Option<Pending>,
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
/// first, as far as its quota, its rate and its backlog allow; the rest
/// goes to the next account.
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
    // Whether an account was passed over for a full backlog.
    let full = std::sync::atomic::AtomicBool::new(false);
    while admission.seats.len() < wanted {
        let left = (wanted - admission.seats.len()) as i32;
        let room = |id, max| {
            let room = ctx.backlog.room(id, max);
            if room == 0 {
                full.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            room
        };
        let Some(reserved) = email_accounts::reserve(&ctx.pool, today, &passed, left, room).await?
        else {
            break;
        };
        let account = reserved.account;
        let mut granted = reserved.granted;
        // Filled as far as it goes, the account is not asked again. One
        // with a connection cap took a round of its connections: it is
        // asked again after the others (it has sent more today now), until
        // its backlog is full.
        if account.max_connections.is_none() || granted < reserved.asked {
            passed.push(account.id);
        }
        if let Some(per_minute) = account.rate_limit_per_minute {
            passed.push(account.id);
            let (admitted, wait) = rate(ctx, &account, per_minute, granted).await;
            if admitted < granted {
                email_accounts::release(&ctx.pool, today, account.id, granted - admitted).await?;
                granted = admitted;
            }
            if let Some(wait) = wait {
                throttled_for = Some(throttled_for.map_or(wait, |w| w.min(wait)));
            }
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
        if granted <= 0 {
            continue;
        }
        let mut pending = match account.max_connections {
            Some(max) => {
                let pending = ctx.backlog.take(account.id, granted);
                if ctx.backlog.room(account.id, Some(max)) == 0 {
                    // Passed over for a full backlog, not for quota: what
                    // this account cannot take now waits a moment only.
                    full.store(true, std::sync::atomic::Ordering::Relaxed);
                    passed.push(account.id);
                }
                pending.into_iter().map(Some).collect()
            }
            None => Vec::new(),
        };
        pending.resize_with(granted as usize, || None);
        let index = match admission.accounts.iter().position(|a| a.id == account.id) {
            Some(index) => index,
            None => {
                admission.accounts.push(account);
                admission.accounts.len() - 1
            }
        };
        admission
            .seats
            .extend(pending.into_iter().map(|pending| Seat {
                account: index,
                pending,
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
            // Its connections have a backlog already: soon.
            None if full.load(std::sync::atomic::Ordering::Relaxed) => Wait {
                delay: Duration::from_secs(1),
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
    }
    for (account, count) in accounts.iter().zip(counts) {
        if count > 0 {
            email_accounts::release(&ctx.pool, today, account.id, count).await?;
        }
    }
    Ok(())
}

/// Admits up to `wanted` sends under the account's per-minute rate: how
/// many, and when fewer, when the window has room again. When Redis
/// cannot be asked, the account is held back rather than risk passing its
/// provider's limits.
async fn rate(
    ctx: &Context,
    account: &EmailAccount,
    per_minute: i32,
    wanted: i32,
) -> (i32, Option<Duration>) {
    match ctx
        .throttle
        .admit(account.id, per_minute.max(0) as u32, wanted.max(0) as u32)
        .await
    {
        Ok((admitted, wait)) => (admitted as i32, wait),
        Err(e) => {
            tracing::warn!(account = %account.email, error = %e, "throttle unavailable; holding the account back");
            (0, Some(Duration::from_secs(5)))
        }
    }
}
