//! The `actorbot` command line: `run`, `config`, `migrate`.

use std::process::ExitCode;

use actorbot::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "actorbot",
    version,
    about = "A Telegram bot daemon built as an actor system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Apply the database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("actorbot: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            if let Err(err) = config.require_token() {
                eprintln!("actorbot: configuration error: {err}");
                return ExitCode::from(2);
            }
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
            actorbot::logging::init(
                &filter,
                vec![
                    config.bot_token.expose().to_string(),
                    config.webhook_secret.expose().to_string(),
                    config.ai_api_key.expose().to_string(),
                ],
            );
            let system = actix_rt::System::new();
            match system.block_on(actorbot::daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    log::error!("{err:#}");
                    eprintln!("actorbot: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate => match actorbot::storage::migrate(&config) {
            Ok((database, applied)) if applied.is_empty() => {
                println!("{database}: up to date");
                ExitCode::SUCCESS
            }
            Ok((database, applied)) => {
                println!("{database}: applied {}", applied.join(", "));
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("actorbot: migrate: {err}");
                ExitCode::FAILURE
            }
        },
    }
}
