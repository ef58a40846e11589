//! One SMTP transaction for a claimed message: the suppression list
//! checked again, the email composed (with its attachments) and signed
//! with its domain's DKIM keys, and handed to the account's pooled
//! transport within the task's time limits: the soft one bounds the SMTP
//! transaction, the hard one the whole attempt. They are the worker's, or
//! those `celery control time_limit` set for the task type, lowered by the
//! message's own `timelimit` header.

use std::time::{Duration, Instant};

use lettre::address::Envelope as SmtpEnvelope;
use lettre::Message;
use platform::celery::TaskMessage;
use platform::db::attachments::Attachment;
use platform::db::email_accounts::EmailAccount;
use platform::db::messages::MessageRecord;
use platform::db::suppressions;
use platform::mail::unsubscribe::{Claims, Scope, Target};
use platform::mail::{compose, dkim, EmailAddress, Envelope};

use super::policy::{classify, Failure};
use crate::context::Context;
use crate::smtp::{Transport, TransportCache};
use crate::time_limits::Limits;

/// One SMTP attempt for a claimed message, before anything is recorded.
pub enum Attempt {
    Sent {
        smtp_message_id: String,
        reply: String,
    },
    /// The message cannot be turned into an email.
    Unbuildable(String),
    /// A recipient is on the suppression list: the message is not sent.
    Suppressed(String),
    /// The account's transport cannot be set up (e.g. its password does not decrypt).
    NoTransport(String),
    Failed(Failure),
}

/// What sending needs besides the record, read when it is claimed.
pub struct Extras {
    /// A recipient put on the suppression list after the message was accepted.
    pub suppressed: Option<String>,
    pub files: Vec<Attachment>,
}

/// The limits of one attempt at `message`: its task type's (configured,
/// or set at run time with `celery control time_limit`), each lowered to
/// what the message's `timelimit` header asks for, if less. Cut at the
/// soft one, the send counts as a timeout and is retried, as the worker's
/// own limit is.
pub fn limits(ctx: &Context, message: &TaskMessage) -> Limits {
    let own = ctx.time_limits.of(message.task());
    let (soft, hard) = message.headers.time_limits(own.soft, own.hard);
    Limits {
        soft: soft.min(hard),
        hard,
    }
}

/// One attempt under `limits`: the soft limit bounds the SMTP transaction,
/// the hard one everything (composing, signing, DKIM keys read from the
/// database, the transaction).
pub async fn attempt(
    ctx: &Context,
    record: &MessageRecord,
    account: &EmailAccount,
    extras: Extras,
    limits: Limits,
) -> Attempt {
    match tokio::time::timeout(
        limits.hard,
        attempt_within(ctx, record, account, extras, limits.soft),
    )
    .await
    {
        Ok(attempt) => attempt,
        Err(_) => Attempt::Failed(Failure::Unreachable {
            reply: format!(
                "the attempt passed the hard time limit of {:?}",
                limits.hard
            ),
        }),
    }
}

async fn attempt_within(
    ctx: &Context,
    record: &MessageRecord,
    account: &EmailAccount,
    extras: Extras,
    soft_limit: Duration,
) -> Attempt {
    if let Some(address) = extras.suppressed {
        return Attempt::Suppressed(suppressions::reason(&address));
    }
    let list_unsubscribe = list_unsubscribe(ctx, record);
    let envelope = Envelope {
        record_id: record.id,
        from_email: &account.email,
        from_name: record.from_name.as_deref().unwrap_or(&account.display_name),
        to: &record.to_addrs,
        cc: &record.cc_addrs,
        bcc: &record.bcc_addrs,
        reply_to: record.reply_to.as_deref(),
        list_unsubscribe: list_unsubscribe.as_deref(),
    };
    let composed = match compose(
        &envelope,
        &record.subject,
        &record.html_body,
        record.text_body.as_deref(),
        &extras.files,
    ) {
        Ok(c) => c,
        Err(e) => return Attempt::Unbuildable(format!("cannot build the email: {e}")),
    };
    let transport = match ctx.transports.get(account).await {
        Ok(t) => t,
        Err(e) => return Attempt::NoTransport(e.to_string()),
    };
    let email = wire_bytes(ctx, account, &composed.message).await;
    match deliver(
        &ctx.transports,
        account,
        &transport,
        composed.message.envelope(),
        &email,
        soft_limit,
    )
    .await
    {
        Ok(reply) => Attempt::Sent {
            smtp_message_id: composed.message_id,
            reply,
        },
        Err(failure) => Attempt::Failed(failure),
    }
}

/// The bytes sent: the formatted email, signed with the DKIM keys of its
/// From domain when that has any. Should signing fail, the email goes out
/// unsigned, as mail from a domain without keys does, and the log says so.
async fn wire_bytes(ctx: &Context, account: &EmailAccount, message: &Message) -> Vec<u8> {
    let formatted = message.formatted();
    let Ok(from) = EmailAddress::parse(&account.email) else {
        return formatted;
    };
    let domain = from.domain().to_ascii_lowercase();
    let signers = ctx.dkim.for_domain(&ctx.pool, &domain).await;
    if signers.is_empty() {
        return formatted;
    }
    match dkim::signed(&formatted, &signers) {
        Ok(signed) => signed,
        Err(e) => {
            tracing::error!(domain, error = %e, "DKIM signing failed; the email goes out unsigned");
            formatted
        }
    }
}

/// The `List-Unsubscribe` value of a message recorded with an unsubscribe
/// scope (a campaign's, or a send that asked), naming its one recipient;
/// `None` for the rest.
fn list_unsubscribe(ctx: &Context, record: &MessageRecord) -> Option<String> {
    let scope = Scope::parse(record.unsubscribe_scope.as_deref()?)?;
    let links = ctx.settings.unsubscribe.as_ref()?;
    let address = record.to_addrs.first()?;
    let target = match scope {
        Scope::Global => Target::Everything,
        Scope::List => Target::CampaignLists(record.campaign_id?),
    };
    Some(links.header_value(&Claims::new(record.id, address, target)))
}

/// Sends on one of the account's connections: waiting up to `limit` for
/// one when all it may open are busy, then up to `limit` for the server.
#[tracing::instrument(name = "smtp", level = "debug", skip_all)]
pub async fn deliver(
    pool: &TransportCache,
    account: &EmailAccount,
    transport: &Transport,
    envelope: &SmtpEnvelope,
    email: &[u8],
    limit: Duration,
) -> Result<String, Failure> {
    let started = Instant::now();
    let result = pool.send(account, transport, envelope, email, limit).await;
    metrics::histogram!("smtp_send_duration_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(response) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            Ok(format!("{} {}", response.code(), text).trim().to_string())
        }
        Err(e) => Err(classify(&e)),
    }
}
