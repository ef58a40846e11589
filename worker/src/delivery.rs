//! Hands a composed message to an SMTP server and classifies the result.

use std::time::{Duration, Instant};

use lettre::Message;
use platform::db::email_accounts::EmailAccount;

use crate::pool::{SendError, Transport, TransportCache};

/// How a failed attempt should be treated.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 5xx for the message (recipient refused, content rejected): final.
    Permanent { reply: String },
    /// The account's fault (authentication refused): try another account.
    Account { reply: String },
    /// No SMTP reply at all (refused, reset, TLS failure, timeout): retry
    /// later, and count against the account's circuit breaker.
    Unreachable { reply: String },
    /// A 4xx reply: retry later.
    Temporary { reply: String },
}

impl Failure {
    pub fn reply(&self) -> &str {
        match self {
            Failure::Permanent { reply }
            | Failure::Account { reply }
            | Failure::Unreachable { reply }
            | Failure::Temporary { reply } => reply,
        }
    }
}

pub async fn deliver(
    pool: &TransportCache,
    account: &EmailAccount,
    transport: &Transport,
    message: Message,
    limit: Duration,
) -> Result<String, Failure> {
    let started = Instant::now();
    let email = message.formatted();
    let send = pool.send(account, transport, message.envelope(), &email);
    let result = tokio::time::timeout(limit, send).await;
    metrics::histogram!("smtp_send_duration_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Err(_) => Err(Failure::Unreachable {
            reply: format!("no answer from the SMTP server within {limit:?}"),
        }),
        Ok(Ok(response)) => {
            let text = response.message().collect::<Vec<_>>().join(" ");
            Ok(format!("{} {}", response.code(), text).trim().to_string())
        }
        Ok(Err(e)) => Err(classify(&e)),
    }
}

fn classify(error: &SendError) -> Failure {
    let reply = error.to_string();
    let Some(code) = error.status() else {
        // No SMTP reply at all: connection refused or reset, TLS, timeout.
        return Failure::Unreachable { reply };
    };
    match code {
        // 530 auth required, 534 mechanism too weak, 535 bad credentials, 538 encryption required
        530 | 534 | 535 | 538 | 454 => Failure::Account { reply },
        // 421: the server is closing the channel (overloaded, shutting down).
        421 => Failure::Unreachable { reply },
        400..=499 => Failure::Temporary { reply },
        500..=599 => Failure::Permanent { reply },
        _ => Failure::Temporary { reply },
    }
}
