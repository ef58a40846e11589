#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use platform::config::Role;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    platform::startup::run_service(Role::Scheduler, notify_scheduler::run).await
}
