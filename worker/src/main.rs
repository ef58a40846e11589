#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use platform::config::Role;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    platform::startup::run_service(Role::Worker, |settings, shutdown| async move {
        // Zero-valued series from the start: rate() and the alerts need them
        // before the first failure or dead letter happens.
        for name in [
            "messages_sent_total",
            "messages_failed_total",
            "email_retries_total",
            "emails_waiting_for_quota_total",
            "dead_letters_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        notify_worker::run(settings, shutdown).await
    })
    .await
}
