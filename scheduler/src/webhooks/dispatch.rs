//! Claims due deliveries and sends each on its own task, settling it in
//! the database when the endpoint answers (or does not).
//!
//! A claim is a session advisory lock per delivery, held on the
//! dispatcher's own connection from the claim until the outcome is
//! committed: it writes nothing, and if the dispatcher dies its connection
//! closes and the deliveries are at once free for another instance (sent
//! again with the same `webhook-id`, which receivers deduplicate).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::config::WebhookSettings;
use platform::crypto::Keyring;
use platform::db::webhooks::{self, Attempt, Claimed};
use platform::webhooks::address::host_is_private;
use platform::webhooks::signature::{signature_header, SigningKey, SECRET_PURPOSE};
use rand::Rng;
use reqwest_rustls as reqwest;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::client;
use super::settle::{self, Delivered};

/// How much of a response body is kept for the deliveries view.
const SNIPPET: usize = 512;
/// How often the backlog gauge is refreshed.
const GAUGE_EVERY: Duration = Duration::from_secs(5);
/// After a request ends, how long to wait for others before claiming again.
const CLAIM_GATHER: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    keyring: Keyring,
    settings: WebhookSettings,
    client: reqwest::Client,
    /// Requests in flight per endpoint: an endpoint is claimed for only up
    /// to `endpoint_concurrency` in flight, so a slow one holds no more.
    in_flight: Arc<Mutex<HashMap<Uuid, usize>>>,
    /// Deliveries whose outcome is committed (or could not be): their
    /// locks are let go of before the next claim.
    done: Done,
    /// Notified when the fan-out has made new deliveries.
    wake: Arc<Notify>,
}

/// Deliveries to unlock, filled by the requests' tasks and the settler.
pub type Done = Arc<Mutex<Vec<Uuid>>>;

/// The claiming connection and what it holds.
#[derive(Default)]
struct Claims {
    conn: Option<PgConnection>,
    /// Deliveries locked by `conn`, in flight or waiting to be unlocked.
    held: HashSet<Uuid>,
}

/// What one attempt came to.
enum Outcome {
    Delivered(Attempt),
    Failed(Attempt),
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        keyring: Keyring,
        settings: WebhookSettings,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Dispatcher> {
        let client = client::build(&settings)?;
        Ok(Dispatcher {
            pool,
            keyring,
            settings,
            client,
            in_flight: Arc::default(),
            done: Arc::default(),
            wake,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        metrics::gauge!("webhook_delivery_backlog_age_seconds").set(0.0);
        metrics::counter!("webhook_deliveries_total", "outcome" => "delivered").absolute(0);
        metrics::counter!("webhook_deliveries_total", "outcome" => "failed").absolute(0);
        let (settled, to_settle) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settle::run(self.pool.clone(), to_settle, self.done.clone()));
        let mut claims = Claims::default();
        let mut tasks = JoinSet::new();
        let mut gauge_at = Instant::now();
        loop {
            while tasks.try_join_next().is_some() {}
            if gauge_at.elapsed() >= GAUGE_EVERY {
                gauge_at = Instant::now();
                match webhooks::oldest_due_age(&self.pool).await {
                    Ok(age) => metrics::gauge!("webhook_delivery_backlog_age_seconds").set(age),
                    Err(e) => tracing::warn!(error = %e, "webhook backlog age"),
                }
            }
            let claimed = self.claim_round(&mut claims, &mut tasks, &settled).await;
            if shutdown.is_cancelled() {
                break;
            }
            // A full round means more are due: claim again at once. Else
            // claim again when a request ends (its endpoint has a free
            // slot, and may have more due), when the fan-out has made new
            // deliveries, or after the poll interval.
            if claimed < self.settings.batch as usize {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    _ = self.wake.notified() => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                        // Let the requests ending about now end too, so one
                        // claim fills several slots.
                        tokio::time::sleep(CLAIM_GATHER).await;
                    }
                }
            }
        }
        // Requests in flight are abandoned, those already answered written;
        // closing the connection then lets go of every delivery.
        tasks.shutdown().await;
        drop(settled);
        if let Err(e) = settler.await {
            tracing::warn!(error = %e, "the webhook settler stopped abnormally");
        }
        if let Some(conn) = claims.conn {
            let _ = conn.close().await;
        }
    }

    async fn claim_round(
        &self,
        claims: &mut Claims,
        tasks: &mut JoinSet<()>,
        settled: &mpsc::UnboundedSender<Delivered>,
    ) -> usize {
        match self.claim(claims).await {
            Ok(rows) => self.start(rows, tasks, settled),
            Err(e) => {
                // The connection may be gone, and with it every lock: start
                // afresh. Requests in flight stay in `held` until they end,
                // so they are not claimed again here meanwhile.
                tracing::warn!(error = %e, "claiming webhook deliveries");
                metrics::counter!("scheduler_errors_total", "job" => "webhooks").increment(1);
                claims.conn = None;
                0
            }
        }
    }

    /// Lets go of the deliveries that are done, then locks and reads the
    /// due ones this dispatcher has room for.
    async fn claim(&self, claims: &mut Claims) -> Result<Vec<Claimed>, sqlx::Error> {
        // Ids leave `held` before any I/O: if a statement fails, the
        // connection is dropped with all its locks, and no id may stay
        // excluded from later claims for good.
        let done: Vec<Uuid> = std::mem::take(&mut *lock(&self.done));
        for id in &done {
            claims.held.remove(id);
        }
        let conn = match claims.conn.as_mut() {
            Some(conn) => {
                webhooks::unlock(conn, &done).await?;
                conn
            }
            // A new connection holds none of the old locks.
            None => claims.conn.insert(self.pool.acquire().await?.detach()),
        };
        let busy: Vec<(Uuid, i64)> = lock(&self.in_flight)
            .iter()
            .map(|(id, n)| (*id, *n as i64))
            .collect();
        let held: Vec<Uuid> = claims.held.iter().copied().collect();
        let locked = webhooks::lock_due(
            conn,
            &busy,
            &held,
            self.settings.endpoint_concurrency,
            self.settings.batch,
        )
        .await?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let rows = webhooks::locked(conn, &locked).await?;
        // Those settled by another dispatcher since this claim's snapshot
        // are let go of; only the rows about to be sent are held (after
        // the last statement, so a failure leaves nothing held).
        let gone: Vec<Uuid> = locked
            .into_iter()
            .filter(|id| !rows.iter().any(|r| r.id == *id))
            .collect();
        webhooks::unlock(conn, &gone).await?;
        claims.held.extend(rows.iter().map(|r| r.id));
        Ok(rows)
    }

    /// Sends each claimed delivery on its own task.
    fn start(
        &self,
        rows: Vec<Claimed>,
        tasks: &mut JoinSet<()>,
        settled: &mpsc::UnboundedSender<Delivered>,
    ) -> usize {
        let count = rows.len();
        for row in rows {
            *lock(&self.in_flight).entry(row.endpoint_id).or_default() += 1;
            let this = self.clone();
            let settled = settled.clone();
            tasks.spawn(async move {
                let endpoint = row.endpoint_id;
                this.deliver(row, &settled).await;
                let mut in_flight = lock(&this.in_flight);
                if let Some(n) = in_flight.get_mut(&endpoint) {
                    *n -= 1;
                    if *n == 0 {
                        in_flight.remove(&endpoint);
                    }
                }
            });
        }
        count
    }

    #[tracing::instrument(level = "debug", skip_all,
        fields(delivery = %row.id, event = %row.event_id, endpoint = %row.endpoint_id, attempt = row.attempts))]
    async fn deliver(&self, row: Claimed, settled: &mpsc::UnboundedSender<Delivered>) {
        let outcome = self.attempt(&row).await;
        // A delivered one is unlocked by the settler, once written.
        let delivered = matches!(outcome, Outcome::Delivered(_));
        let result = match outcome {
            Outcome::Delivered(attempt) => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                // Only gone at shutdown, after every request was abandoned.
                let _ = settled.send((row.id, attempt));
                Ok(())
            }
            Outcome::Failed(attempt) => {
                let retry_in = self.backoff(row.attempts);
                tracing::debug!(error = ?attempt.error, retry_in = ?retry_in, "webhook attempt failed");
                match webhooks::record_failed(
                    &self.pool,
                    &row,
                    &attempt,
                    retry_in,
                    self.settings.retry_window,
                )
                .await
                {
                    Ok(outcome) => {
                        metrics::counter!("webhook_attempts_failed_total").increment(1);
                        if outcome.gave_up {
                            metrics::counter!("webhook_deliveries_total", "outcome" => "failed")
                                .increment(1);
                            tracing::warn!("webhook delivery given up after its retry window");
                        }
                        if outcome.endpoint_disabled {
                            metrics::counter!("webhook_endpoints_disabled_total").increment(1);
                            tracing::warn!(
                                "webhook endpoint disabled: failing for the whole retry window"
                            );
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            // Still pending and due: once unlocked it is sent again, with
            // the same webhook-id.
            tracing::warn!(error = %e, "settling a webhook delivery");
        }
        if !delivered {
            lock(&self.done).push(row.id);
        }
    }

    /// Exponential from `backoff_base`, capped at `backoff_max`, with
    /// "equal jitter" (half fixed, half random) so endpoints that recover
    /// are not hit by every retry at once.
    fn backoff(&self, attempts: i32) -> Duration {
        let exp = attempts.clamp(1, 32) as u32 - 1;
        let full = self
            .settings
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.settings.backoff_max);
        let half = full / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    async fn attempt(&self, row: &Claimed) -> Outcome {
        let failed = |error: String| {
            Outcome::Failed(Attempt {
                status: None,
                latency_ms: 0,
                response: None,
                error: Some(error),
            })
        };
        let keys = match self.signing_keys(row) {
            Ok(keys) => keys,
            Err(e) => return failed(e),
        };
        let url = match url::Url::parse(&row.url) {
            Ok(url) => url,
            Err(e) => return failed(format!("invalid URL: {e}")),
        };
        // IP literals are not resolved, so the resolver cannot check them.
        if !self.settings.allow_private && url.host().is_none_or(|h| host_is_private(&h)) {
            return failed("the URL's host is not a public address".into());
        }
        let timestamp = chrono::Utc::now().timestamp();
        let id = row.event_id.to_string();
        let signature = signature_header(&keys, &id, timestamp, row.body.as_bytes());
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                let mut attempt = Attempt {
                    status: None,
                    latency_ms: elapsed_ms(started),
                    response: None,
                    error: Some(describe(&e)),
                };
                attempt.latency_ms = elapsed_ms(started);
                return Outcome::Failed(attempt);
            }
        };
        let status = response.status();
        let snippet = read_snippet(&mut response).await;
        metrics::histogram!("webhook_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let attempt = Attempt {
            status: Some(i32::from(status.as_u16())),
            latency_ms: elapsed_ms(started),
            response: snippet,
            error: (!status.is_success()).then(|| format!("HTTP {status}")),
        };
        if status.is_success() {
            Outcome::Delivered(attempt)
        } else {
            Outcome::Failed(attempt)
        }
    }

    /// The current secret's key, and the previous one's during its grace
    /// period. Secrets are opened here and never logged.
    fn signing_keys(&self, row: &Claimed) -> Result<Vec<SigningKey>, String> {
        let mut sealed = vec![row.secret()];
        sealed.extend(row.previous_secret());
        sealed
            .iter()
            .map(|s| {
                let secret = self
                    .keyring
                    .open(s, SECRET_PURPOSE)
                    .map_err(|e| format!("signing secret: {e}"))?;
                SigningKey::parse(&secret).map_err(|e| format!("signing secret: {e}"))
            })
            .collect()
    }
}

/// A panic while holding one of these leaves consistent data: keep using it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn elapsed_ms(started: Instant) -> i32 {
    i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX)
}

/// An error and its causes, which say what actually went wrong
/// (refused, timed out, a private address).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.chars().take(SNIPPET).collect()
}

/// The first bytes of the body (a receiver's explanation), without
/// reading a large one to the end.
async fn read_snippet(response: &mut reqwest::Response) -> Option<String> {
    let mut bytes = Vec::new();
    while bytes.len() < SNIPPET {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(SNIPPET);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (!text.is_empty()).then_some(text)
}
