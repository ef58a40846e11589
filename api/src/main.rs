#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use platform::config::Role;
use platform::{db, startup, telemetry, Settings};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(
    name = "notify-api",
    version,
    about = "REST API of the notification platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an API key; prints the key and its secret once.
    CreateApiKey {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Grant the admin scope (SMTP accounts, keys).
        #[arg(long)]
        admin: bool,
    },
    /// Container health probe: GET http://127.0.0.1:$API_PORT/health; exit 0 or 1.
    HealthCheck,
    /// Re-encrypt stored SMTP passwords under the current ENCRYPTION_KEY_ID
    /// (older keys must be listed in ENCRYPTION_PREVIOUS_KEYS).
    RotateEncryptionKey,
    /// Import the Python platform's SMTP accounts (Fernet passwords
    /// re-encrypted), API keys (secrets keep working), today's send counts
    /// and optionally recent message records. Re-runnable. The Fernet key
    /// comes from PYTHON_ENCRYPTION_KEY (comma-separated for several),
    /// else from ENCRYPTION_KEY.
    ImportPython(ImportPythonArgs),
}

#[derive(Args)]
struct ImportPythonArgs {
    /// The Python platform's DATABASE_URL [default: PYTHON_DATABASE_URL]
    #[arg(long = "from")]
    from: Option<String>,
    /// Report what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also import final message records of the last DAYS days.
    #[arg(long, value_name = "DAYS")]
    messages_since_days: Option<u32>,
    /// How to connect on a port other than 465, 587, 25 or 2525
    /// (repeatable), e.g. --port-tls 1025=none.
    #[arg(long, value_name = "PORT=MODE", value_parser = notify_api::cli::import_python::parse_port_tls)]
    port_tls: Vec<(u16, platform::db::email_accounts::TlsMode)>,
    /// Only raise today's send counts to the Python platform's.
    #[arg(long)]
    quota_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before loading settings: the probe only needs API_PORT.
    if matches!(cli.command, Some(Command::HealthCheck)) {
        return platform::healthcheck::run(Role::Api).await;
    }
    let settings = match startup::load_settings(Role::Api) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if !matches!(command, Command::Serve) {
        // One-shot commands print their own output; keep logs to problems.
        let mut quiet = settings.clone();
        quiet.log_level = "warn".into();
        telemetry::init_tracing(&quiet);
    } else {
        telemetry::init_tracing(&settings);
    }
    let result = match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => db::migrate(&settings.database_url)
            .await
            .map(|applied| {
                println!(
                    "migrations applied: {}",
                    if applied.is_empty() {
                        "none pending".into()
                    } else {
                        applied.join(", ")
                    }
                )
            })
            .map_err(Into::into),
        Command::CreateApiKey {
            name,
            description,
            admin,
        } => notify_api::cli::create_api_key(&settings, &name, &description, admin).await,
        Command::RotateEncryptionKey => notify_api::cli::rotate::rotate_encryption_key(&settings)
            .await
            .map(|report| println!("{report}"))
            .map_err(Into::into),
        Command::ImportPython(args) => import_python(&settings, args).await,
        // Answered before the settings were loaded.
        Command::HealthCheck => Ok(()),
    };
    startup::exit_code(Role::Api, result)
}

async fn import_python(settings: &Settings, args: ImportPythonArgs) -> anyhow::Result<()> {
    use notify_api::cli::import_python::{import_python, ImportOptions};
    let from = args
        .from
        .or_else(|| settings.python_database_url.clone())
        .context("--from is required when PYTHON_DATABASE_URL is not set")?;
    let options = ImportOptions {
        from,
        fernet_keys: settings.python_encryption_keys.expose_secret().to_string(),
        dry_run: args.dry_run,
        messages_since_days: args.messages_since_days,
        port_tls: args.port_tls.into_iter().collect(),
        quota_only: args.quota_only,
    };
    let report = import_python(settings, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = notify_api::Application::build(settings).await?;
    app.run(startup::shutdown_on_signal()).await
}
