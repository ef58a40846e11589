//! The scheduler ("beat"). Every instance runs an outbox relay, releases
//! due delayed sends (`release`), fans out and dispatches webhook
//! deliveries (`webhooks`) and reads the accounts' mailboxes for bounces
//! (`bounces`); one elected leader (`leader`) runs the
//! periodic duties (`duties`): campaigns, periodic tasks, retention and the
//! reconciler. Several instances may run at once: exactly once comes from
//! row locks and unique run rows, not from there being one.

pub mod bounces;
pub mod duties;
pub mod leader;
pub mod release;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use platform::outbox::{OutboxRelay, OutboxWaker};
use platform::{broker, db, Settings};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Migrates the database, checks that RabbitMQ answers, then runs until
/// `shutdown`.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let timing = settings
        .scheduler
        .clone()
        .context("the scheduler's settings are not loaded")?;
    let pool = db::open(&settings).await?;
    let conn = broker::connect(&settings, "notify-scheduler")
        .await
        .context("connecting to RabbitMQ")?;
    broker::close(&conn, 200, "start-up check").await;
    tracing::info!("notify-scheduler running");
    let waker = OutboxWaker::default();
    let releaser = release::Releaser {
        pool: pool.clone(),
        queue: settings.queues.tasks.clone(),
        batch: timing.release_batch,
        poll: timing.poll,
        waker: waker.clone(),
    };
    let election = leader::Election {
        database_url: settings.database_url.clone(),
        retry: timing.leader_retry,
    };
    // Webhooks' own pool: its commits need no disk flush (a fan-out lost
    // with the server's last WAL leaves its events pending, as they were),
    // and a backlog must not take the connections the other duties need.
    let dispatcher_pool = platform::db::connect_async_commit(&settings, 5)
        .await
        .context("connecting the webhook dispatcher to PostgreSQL")?;
    let webhook_settings = settings
        .webhooks
        .clone()
        .context("the webhook settings are not loaded")?;
    let new_deliveries = Arc::new(Notify::new());
    let fan_out = webhooks::FanOut {
        pool: dispatcher_pool.clone(),
        poll: webhook_settings.poll,
        wake: new_deliveries.clone(),
    };
    let dispatcher = webhooks::Dispatcher::new(
        dispatcher_pool,
        settings.keyring()?.clone(),
        webhook_settings,
        new_deliveries,
    )?;
    let bounce_processor = bounces::BounceProcessor::new(
        pool.clone(),
        settings.keyring()?.clone(),
        settings.clone(),
        settings
            .bounces
            .clone()
            .context("the bounce settings are not loaded")?,
    );
    let duties = duties::Duties::new(pool.clone(), settings.clone(), timing, waker.clone());
    let tasks = [
        tokio::spawn(releaser.run(shutdown.clone())),
        tokio::spawn(fan_out.run(shutdown.clone())),
        tokio::spawn(dispatcher.run(shutdown.clone())),
        tokio::spawn(bounce_processor.run(shutdown.clone())),
        tokio::spawn(election.run(shutdown.clone(), move |token| duties.clone().run(token))),
        tokio::spawn(OutboxRelay::new(pool, settings, waker).run(shutdown.clone())),
    ];
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("notify-scheduler stopped");
    Ok(())
}
