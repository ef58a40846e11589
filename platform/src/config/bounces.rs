//! Bounces and complaints: how the scheduler's bounce processor reads the
//! accounts' mailboxes (`BOUNCE_POLL_INTERVAL_MS`, `BOUNCE_IMAP_TIMEOUT_SECONDS`,
//! `BOUNCE_FETCH_BATCH`) and what reports do (`BOUNCE_SOFT_LIMIT`,
//! `BOUNCE_SOFT_WINDOW_DAYS`, `BOUNCE_RATE_WINDOW_DAYS`, `BOUNCE_RATE_MIN_SENT`,
//! `BOUNCE_RATE_PAUSE_THRESHOLD`, `COMPLAINT_RATE_PAUSE_THRESHOLD`).

use std::time::Duration;

use p256::ecdsa::VerifyingKey;
use secrecy::SecretString;

use super::vars::Vars;
use super::{ConfigError, Environment};
use crate::db::bounces::{PausePolicy, SoftBouncePolicy};

#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// How often each mailbox is read (`BOUNCE_POLL_INTERVAL_MS`, default
    /// one minute).
    pub poll_interval: Duration,
    /// Connecting, logging in, and each IMAP command
    /// (`BOUNCE_IMAP_TIMEOUT_SECONDS`, default 30).
    pub imap_timeout: Duration,
    /// Messages fetched per IMAP command (`BOUNCE_FETCH_BATCH`, default 50).
    pub fetch_batch: usize,
    /// Soft bounces of one address within the window that suppress it
    /// (`BOUNCE_SOFT_LIMIT`, default 3; `BOUNCE_SOFT_WINDOW_DAYS`, default 7).
    pub soft: SoftBouncePolicy,
    /// When an account is paused for its rates (`BOUNCE_RATE_WINDOW_DAYS`,
    /// default 7; `BOUNCE_RATE_MIN_SENT`, default 200;
    /// `BOUNCE_RATE_PAUSE_THRESHOLD`, default 0.05;
    /// `COMPLAINT_RATE_PAUSE_THRESHOLD`, default 0.003, Gmail's and
    /// Yahoo's published ceiling for bulk senders).
    pub pause: PausePolicy,
    /// Provider webhooks: each provider left unconfigured is refused.
    pub inbound: InboundSettings,
}

/// How each provider's webhook is authenticated; `None`: not taken.
#[derive(Debug, Clone, Default)]
pub struct InboundSettings {
    /// SNS topics whose SES notifications are taken (`SES_SNS_TOPIC_ARNS`,
    /// comma-separated).
    pub ses_topic_arns: Option<Vec<String>>,
    /// SendGrid's verification key (`SENDGRID_WEBHOOK_PUBLIC_KEY`, base64
    /// DER as SendGrid shows it).
    pub sendgrid_key: Option<VerifyingKey>,
    /// Basic credentials in Postmark's webhook URL
    /// (`POSTMARK_WEBHOOK_USERNAME`, `POSTMARK_WEBHOOK_PASSWORD`).
    pub postmark: Option<(String, SecretString)>,
    /// `MAILGUN_WEBHOOK_SIGNING_KEY`.
    pub mailgun_key: Option<SecretString>,
    /// Signed timestamps further from now are refused
    /// (`INBOUND_WEBHOOK_MAX_AGE_SECONDS`, default 300).
    pub max_age: Duration,
    /// SNS certificate and subscription URLs may be http on loopback
    /// (`INBOUND_WEBHOOK_ALLOW_LOOPBACK`): for tests, refused in production.
    pub allow_loopback: bool,
}

impl BounceSettings {
    /// A mailbox belongs to its reader this long; a dead reader's lapses.
    pub fn lease(&self) -> Duration {
        self.imap_timeout * 10 + Duration::from_secs(60)
    }
}

pub(super) fn settings(vars: &Vars<'_>, env: Environment) -> Result<BounceSettings, ConfigError> {
    let rate = |key: &'static str, default: f64| -> Result<f64, ConfigError> {
        let value: f64 = vars.parse_or(key, default)?;
        if !(value > 0.0 && value <= 1.0) {
            return Err(ConfigError::Invalid {
                var: key,
                reason: format!("{value} is not a fraction in (0, 1]"),
            });
        }
        Ok(value)
    };
    Ok(BounceSettings {
        poll_interval: Duration::from_millis(
            vars.parse_positive_or("BOUNCE_POLL_INTERVAL_MS", 60_000)?,
        ),
        imap_timeout: vars.seconds_or("BOUNCE_IMAP_TIMEOUT_SECONDS", 30)?,
        fetch_batch: vars.parse_positive_or("BOUNCE_FETCH_BATCH", 50)?,
        soft: SoftBouncePolicy {
            limit: vars.parse_positive_or("BOUNCE_SOFT_LIMIT", 3)?,
            window: chrono::Duration::days(vars.parse_positive_or("BOUNCE_SOFT_WINDOW_DAYS", 7)?),
        },
        pause: PausePolicy {
            window_days: vars.parse_positive_or("BOUNCE_RATE_WINDOW_DAYS", 7)?,
            min_sent: vars.parse_positive_or("BOUNCE_RATE_MIN_SENT", 200)?,
            max_bounce_rate: rate("BOUNCE_RATE_PAUSE_THRESHOLD", 0.05)?,
            max_complaint_rate: rate("COMPLAINT_RATE_PAUSE_THRESHOLD", 0.003)?,
        },
        inbound: inbound(vars, env)?,
    })
}

fn inbound(vars: &Vars<'_>, env: Environment) -> Result<InboundSettings, ConfigError> {
    let allow_loopback = vars.parse_bool_or("INBOUND_WEBHOOK_ALLOW_LOOPBACK", false)?;
    if allow_loopback && env.is_production() {
        return Err(ConfigError::Insecure {
            var: "INBOUND_WEBHOOK_ALLOW_LOOPBACK",
            reason: "lets anyone on the host sign SNS messages; tests only".into(),
        });
    }
    let ses_topic_arns = vars
        .get("SES_SNS_TOPIC_ARNS")
        .map(|raw| {
            let arns: Vec<String> = raw
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            match arns.iter().find(|a| !a.starts_with("arn:aws")) {
                Some(bad) => Err(ConfigError::Invalid {
                    var: "SES_SNS_TOPIC_ARNS",
                    reason: format!("{bad:?} is not a topic ARN (arn:aws:sns:...)"),
                }),
                None => Ok(arns),
            }
        })
        .transpose()?;
    let sendgrid_key = vars
        .get("SENDGRID_WEBHOOK_PUBLIC_KEY")
        .map(|raw| {
            crate::bounces::providers::sendgrid::parse_key(&raw).map_err(|reason| {
                ConfigError::Invalid {
                    var: "SENDGRID_WEBHOOK_PUBLIC_KEY",
                    reason,
                }
            })
        })
        .transpose()?;
    let postmark = match (
        vars.get("POSTMARK_WEBHOOK_USERNAME"),
        vars.get("POSTMARK_WEBHOOK_PASSWORD"),
    ) {
        (Some(user), Some(password)) => {
            if env.is_production() {
                super::security::check_production_secret("POSTMARK_WEBHOOK_PASSWORD", &password)?;
            }
            Some((user, SecretString::from(password)))
        }
        (None, None) => None,
        (None, Some(_)) => return Err(ConfigError::Missing("POSTMARK_WEBHOOK_USERNAME")),
        (Some(_), None) => return Err(ConfigError::Missing("POSTMARK_WEBHOOK_PASSWORD")),
    };
    Ok(InboundSettings {
        ses_topic_arns,
        sendgrid_key,
        postmark,
        mailgun_key: vars
            .get("MAILGUN_WEBHOOK_SIGNING_KEY")
            .map(SecretString::from),
        max_age: vars.seconds_or("INBOUND_WEBHOOK_MAX_AGE_SECONDS", 300)?,
        allow_loopback,
    })
}
