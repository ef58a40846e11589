//! The recipient domains' throttles, asked before any account's quota: a
//! send its domain holds back takes no quota, and waits in the delay
//! ladder for the time the gate gives, while the group's sends to other
//! domains go on. A send to several throttled domains (to, cc and bcc
//! together) needs a place under each.
//!
//! Costs nothing while no throttle is set: the settings are cached
//! (`DOMAIN_THROTTLE_CACHE_SECONDS`), and the recipients are read only
//! when there are some.

use std::collections::HashMap;
use std::time::Duration;

use platform::celery::TaskMessage;
use platform::db::messages;
use platform::mail::domain::recipient_domain;
use uuid::Uuid;

use super::admit::{Cause, Wait};
use crate::context::Context;
use crate::domain_throttle::{DomainLimit, Limit, Pass, Verdict};

/// What the domains said about a group's members (indexes into the group).
#[derive(Default)]
pub struct DomainGate {
    /// Sends let through, with what they took from their domains.
    pub passes: HashMap<usize, Pass>,
    /// Sends held back: when to look again, and why.
    pub held: Vec<(usize, Wait)>,
}

/// Asks the throttled domains of `members` (indexes into `group`) to
/// admit their sends; members without a throttled recipient domain are in
/// neither list.
pub async fn admit(
    ctx: &Context,
    group: &[(Uuid, &TaskMessage)],
    members: &[usize],
) -> Result<DomainGate, sqlx::Error> {
    let mut gate = DomainGate::default();
    let limits = ctx.domain_limits.limits().await?;
    if limits.is_empty() || members.is_empty() {
        return Ok(gate);
    }
    let ids: Vec<Uuid> = members.iter().map(|&i| group[i].0).collect();
    let recipients: HashMap<Uuid, Vec<String>> = messages::recipients(&ctx.pool, &ids)
        .await?
        .into_iter()
        .collect();
    let mut domains: Vec<(String, DomainLimit)> = Vec::new();
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let mut asking: Vec<usize> = Vec::new();
    for &i in members {
        let Some(addresses) = recipients.get(&group[i].0) else {
            continue;
        };
        let mut request: Vec<usize> = Vec::new();
        for domain in addresses.iter().filter_map(|a| recipient_domain(a)) {
            let Some(limit) = limits.get(&domain) else {
                continue;
            };
            let index = match domains.iter().position(|(d, _)| *d == domain) {
                Some(index) => index,
                None => {
                    domains.push((domain, *limit));
                    domains.len() - 1
                }
            };
            if !request.contains(&index) {
                request.push(index);
            }
        }
        if !request.is_empty() {
            requests.push(request);
            asking.push(i);
        }
    }
    if requests.is_empty() {
        return Ok(gate);
    }
    let named: Vec<(&str, DomainLimit)> = domains.iter().map(|(d, l)| (d.as_str(), *l)).collect();
    // A lease outlives the longest a send may take, as the accounts' do.
    let hold = ctx.settings.task_time_limit;
    match ctx.domain_gate.admit(&named, &requests, hold).await {
        Ok(verdicts) => {
            for (i, verdict) in asking.into_iter().zip(verdicts) {
                match verdict {
                    Verdict::Admitted(pass) => {
                        gate.passes.insert(i, pass);
                    }
                    Verdict::Wait {
                        delay,
                        domain,
                        limit,
                    } => {
                        let (domain, settings) = &domains[domain];
                        gate.held
                            .push((i, held_back(domain, *settings, limit, delay)));
                    }
                }
            }
        }
        Err(e) => {
            // Held back rather than risk passing a provider's limits.
            tracing::warn!(error = %e, "domain throttles unavailable; holding their sends back");
            for i in asking {
                gate.held.push((
                    i,
                    Wait {
                        delay: Duration::from_secs(5),
                        reason: "domain_throttle: the throttles of the recipient domains cannot be checked (Redis unavailable)".into(),
                        cause: Cause::DomainUnavailable,
                    },
                ));
            }
        }
    }
    Ok(gate)
}

fn held_back(domain: &str, settings: DomainLimit, limit: Limit, delay: Duration) -> Wait {
    let what = match limit {
        Limit::Rate => format!(
            "{} sends per minute",
            settings.rate_per_minute.unwrap_or_default()
        ),
        Limit::Connections => format!(
            "{} connections at once",
            settings.max_connections.unwrap_or_default()
        ),
    };
    Wait {
        delay,
        reason: format!("domain_throttle: waiting for {domain}'s limit of {what}"),
        cause: Cause::Domain {
            domain: domain.to_string(),
            limit,
        },
    }
}

/// Frees the connection leases of sends that are over.
pub async fn release(ctx: &Context, passes: Vec<Pass>) {
    if passes.iter().all(Pass::is_empty) {
        return;
    }
    if let Err(e) = ctx.domain_gate.release(passes).await {
        tracing::warn!(error = %e, "cannot release domain connection leases; they expire by themselves");
    }
}

/// Gives back what admitted sends that were not made took (no account
/// could take them, or their record was not claimable).
pub async fn give_back(ctx: &Context, passes: Vec<Pass>) {
    if passes.iter().all(Pass::is_empty) {
        return;
    }
    if let Err(e) = ctx.domain_gate.give_back(passes).await {
        tracing::warn!(error = %e, "cannot give back domain throttle places; they expire by themselves");
    }
}
