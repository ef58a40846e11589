//! The bounce processor: reads the mailboxes of the accounts that have an
//! IMAP side (`account_mailboxes`) for delivery status notifications and
//! abuse reports, and applies them (`platform::db::bounces::apply`): the
//! message `bounced` or `complained`, the address suppressed.
//!
//! It runs in the scheduler, not the worker: it is periodic work unrelated
//! to the send queue, and the scheduler runs as a few instances, so each
//! mailbox sees few IMAP logins (providers cap them per account). Every
//! instance runs it; a lease per mailbox makes one read it at a time, and
//! each report's unique source reference applies it once even when two
//! readers overlap (a lease lapsed mid-read) or a reader dies between
//! applying and flagging.
//!
//! Per message, in UID order: parse, apply, then flag `\Seen
//! $NotifyProcessed` and move the read position past it. Mail that is not
//! a report, reports about no message of ours, and reports that cannot be
//! read are counted and left as they are (unflagged) for a person to see.

mod imap;

use std::collections::BTreeSet;
use std::time::Duration;

use platform::bounces::{self, Parsed, Report};
use platform::config::BounceSettings;
use platform::crypto::Keyring;
use platform::db::account_mailboxes::{self, Counts, Lease};
use platform::db::bounces::{Applied, Incoming};
use platform::db::email_accounts::PASSWORD_PURPOSE;
use platform::Settings;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use imap::PROCESSED;
use imap::{ImapError, Mailbox};

/// Mailboxes one instance reads at once.
const PARALLEL_READS: i64 = 4;

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the account's password cannot be decrypted: {0}")]
    Password(#[from] platform::crypto::CryptoError),
    #[error("the lease on the mailbox was lost")]
    LeaseLost,
}

pub struct BounceProcessor {
    pool: PgPool,
    keyring: Keyring,
    settings: Settings,
    bounces: BounceSettings,
    /// This instance, as lease owner.
    owner: String,
}

impl BounceProcessor {
    pub fn new(
        pool: PgPool,
        keyring: Keyring,
        settings: Settings,
        bounces: BounceSettings,
    ) -> Self {
        BounceProcessor {
            pool,
            keyring,
            settings,
            bounces,
            owner: format!("scheduler-{}", Uuid::new_v4().simple()),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        // Zero-valued series from the start, for rate() and the alerts.
        for name in ["accounts_auto_paused_total", "bounce_mailbox_errors_total"] {
            metrics::counter!(name).increment(0);
        }
        let tick = self.bounces.poll_interval.min(Duration::from_secs(1));
        while !shutdown.is_cancelled() {
            match account_mailboxes::lease_due(
                &self.pool,
                &self.owner,
                self.bounces.poll_interval,
                self.bounces.lease(),
                PARALLEL_READS,
            )
            .await
            {
                Ok(leases) => {
                    let reads = leases.into_iter().map(|lease| self.read(lease));
                    futures_util::future::join_all(reads).await;
                }
                Err(e) => tracing::warn!(error = %e, "bounce processor: leasing mailboxes failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// One read of one mailbox, its outcome recorded and the lease returned.
    async fn read(&self, lease: Lease) {
        let account = lease.account_email.clone();
        let result =
            match tokio::time::timeout(self.bounces.lease(), self.read_mailbox(&lease)).await {
                Ok(result) => result,
                Err(_) => Err(ReadError::Imap(ImapError::Timeout("reading the mailbox"))),
            };
        let error = result.as_ref().err().map(ToString::to_string);
        if let Some(error) = &error {
            metrics::counter!("bounce_mailbox_errors_total").increment(1);
            tracing::warn!(%account, %error, "bounce processor: reading the mailbox failed");
        }
        if let Err(e) =
            account_mailboxes::finish(&self.pool, lease.account_id, &self.owner, error.as_deref())
                .await
        {
            tracing::warn!(%account, error = %e, "bounce processor: recording the read failed");
        }
    }

    async fn read_mailbox(&self, lease: &Lease) -> Result<(), ReadError> {
        let password = self.keyring.open(&lease.password, PASSWORD_PURPOSE)?;
        let mut mailbox = Mailbox::open(
            &lease.endpoint,
            password.expose_secret(),
            &lease.mailbox,
            self.bounces.imap_timeout,
        )
        .await?;
        let validity = i64::from(mailbox.uid_validity);
        // A new UIDVALIDITY: the mailbox was recreated and old UIDs mean
        // nothing; read it all again (processed reports are flagged, and
        // apply is idempotent anyway).
        let mut last = if lease.uid_validity == Some(validity) {
            u32::try_from(lease.last_uid).unwrap_or(0)
        } else {
            0
        };
        let uids = mailbox.uids_after(last).await?;
        for chunk in uids.chunks(self.bounces.fetch_batch) {
            let messages = mailbox.fetch(chunk).await?;
            let mut counts = Counts::default();
            let mut processed = Vec::new();
            let mut accounts = BTreeSet::new();
            for (uid, raw) in &messages {
                let source_ref = format!("{}/{}/{validity}/{uid}", lease.account_id, lease.mailbox);
                match bounces::parse(raw) {
                    Parsed::Report(report) => {
                        match self
                            .apply(lease, &report, &source_ref, &mut accounts)
                            .await?
                        {
                            true => {
                                counts.reports += 1;
                                processed.push(*uid);
                            }
                            false => counts.unmatched += 1,
                        }
                    }
                    Parsed::NotAReport => counts.ignored += 1,
                    Parsed::Malformed(why) => {
                        counts.malformed += 1;
                        tracing::warn!(account = %lease.account_email, uid, %why,
                            "bounce processor: a report could not be read; left in the mailbox");
                    }
                }
            }
            record_counts(&counts);
            mailbox.flag_processed(&processed).await?;
            last = chunk.last().copied().unwrap_or(last);
            let still_ours = account_mailboxes::advance(
                &self.pool,
                lease.account_id,
                &self.owner,
                validity,
                i64::from(last),
                counts,
            )
            .await?;
            for account in accounts {
                self.pause_if_over(account).await;
            }
            if !still_ours {
                return Err(ReadError::LeaseLost);
            }
        }
        mailbox.logout().await;
        Ok(())
    }

    /// Applies each recipient's feedback of one report; whether the report
    /// was about a message of ours.
    async fn apply(
        &self,
        lease: &Lease,
        report: &Report,
        source_ref: &str,
        accounts: &mut BTreeSet<Uuid>,
    ) -> Result<bool, sqlx::Error> {
        let record_id = report.original.record_id();
        let mut ours = false;
        for (i, feedback) in report.feedback.iter().enumerate() {
            let incoming = Incoming {
                source: "imap",
                source_ref: format!("{source_ref}/{i}"),
                account_id: Some(lease.account_id),
                record_id,
                feedback,
            };
            let applied =
                platform::db::bounces::apply(&self.pool, &incoming, self.bounces.soft).await?;
            match &applied {
                Applied::Applied {
                    account_id,
                    suppressed,
                    ..
                } => {
                    ours = true;
                    accounts.extend(*account_id);
                    metrics::counter!("bounces_total",
                        "kind" => feedback.kind.as_str(), "source" => "imap")
                    .increment(1);
                    if suppressed.is_some() {
                        metrics::counter!("bounce_suppressions_total",
                            "kind" => feedback.kind.as_str())
                        .increment(1);
                    }
                }
                // Applied before this read (a crash before flagging): ours
                // when it names a record, which apply found then.
                Applied::Duplicate => ours |= record_id.is_some(),
                Applied::Unmatched => {}
            }
            tracing::debug!(account = %lease.account_email, ?applied, "bounce report");
        }
        Ok(ours)
    }

    async fn pause_if_over(&self, account: Uuid) {
        let today = platform::today(&self.settings);
        match platform::db::bounces::pause_if_over(&self.pool, account, today, self.bounces.pause)
            .await
        {
            Ok(Some(reason)) => {
                metrics::counter!("accounts_auto_paused_total").increment(1);
                tracing::warn!(%account, %reason, "account paused for its bounce or complaint rate");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%account, error = %e, "checking an account's rates failed"),
        }
    }
}

fn record_counts(counts: &Counts) {
    for (outcome, n) in [
        ("applied", counts.reports),
        ("unmatched", counts.unmatched),
        ("malformed", counts.malformed),
        ("ignored", counts.ignored),
    ] {
        if n > 0 {
            metrics::counter!("bounce_reports_total", "outcome" => outcome).increment(n as u64);
        }
    }
}
