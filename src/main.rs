//! The `actorbot` command line: `run`, `worker`, `sandbox`, `loadtest`,
//! `config`, `migrate`, `dashboard`, `dead-letters`, `healthcheck`.

use std::process::ExitCode;

use actorbot::config::Config;

/// mimalloc: the daemon allocates and frees many small objects on several
/// threads at once (messages, JSON, HTTP buffers), where glibc's allocator
/// spent a quarter of the CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Run only the PDF and image pools, taking document jobs from a
    /// cluster's PostgreSQL (DATABASE_URL), until SIGTERM or SIGINT.
    Worker,
    /// Try the bot without a token or a network: the daemon against a
    /// Telegram emulator in the same process, with a web chat at
    /// http://HTTP_ADDR/sandbox (and the offline AI stand-in unless
    /// AI_API_URL is set).
    Sandbox,
    /// The operator's stress test: simulated users against this binary run
    /// as a daemon, pointed at the built-in emulator and AI stand-in; or,
    /// with --emulator, against a running emulator and its daemon.
    Loadtest {
        /// Simulated users.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Seconds of load after the ramp.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Seconds over which the users join.
        #[arg(long, default_value_t = 10.0)]
        ramp: f64,
        /// Mean seconds a user thinks between interactions.
        #[arg(long, default_value_t = 3.0)]
        think: f64,
        /// Weights of the interactions.
        #[arg(long, default_value = "start=10,ask=60,stats=10,photo=10,report=10")]
        mix: String,
        /// Write the report as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        /// Thresholds, e.g. p95=2s,p99=5s,errors=0.1%,lost=0; missing one
        /// makes the exit status 3.
        #[arg(long)]
        slo: Option<String>,
        /// Seconds an interaction may wait for its answer.
        #[arg(long, default_value_t = 60.0)]
        drain: f64,
        /// Let the emulator enforce Telegram's flood limits (off: the
        /// daemon is measured, not Telegram's 30 messages a second).
        #[arg(long, conflicts_with = "emulator")]
        flood_limits: bool,
        /// The AI stand-in's milliseconds to the first word, and between words.
        #[arg(long, default_value_t = 500, conflicts_with = "emulator")]
        ai_latency_ms: u64,
        #[arg(long, default_value_t = 20, conflicts_with = "emulator")]
        ai_word_delay_ms: u64,
        /// More environment for the daemon, KEY=VALUE (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE", conflicts_with = "emulator")]
        env: Vec<String>,
        /// Start nothing: drive the running emulator at URL (its control
        /// API, e.g. http://HTTP_ADDR/sandbox/emulator of `actorbot
        /// sandbox`), which a running daemon polls.
        #[arg(long, value_name = "URL")]
        emulator: Option<String>,
        /// With --emulator: the daemon's pid, for its memory and CPU
        /// (without it they are not measured).
        #[arg(long, requires = "emulator")]
        pid: Option<u32>,
        /// With --emulator: the daemon's HTTP endpoint, whose /metrics
        /// the hints read.
        #[arg(long, value_name = "URL", requires = "emulator")]
        daemon_url: Option<String>,
        /// No live line while it runs.
        #[arg(long)]
        quiet: bool,
    },
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Apply the database migrations and exit.
    Migrate,
    /// Show the running daemon's figures, actors and alerts in the terminal.
    Dashboard {
        /// The daemon's HTTP endpoint; default: http://HTTP_ADDR.
        #[arg(long)]
        url: Option<String>,
        /// Print once and exit.
        #[arg(long)]
        once: bool,
        /// Write the status, history and actor tree as JSON to FILE, then exit.
        #[arg(long, value_name = "FILE")]
        export: Option<std::path::PathBuf>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 5.0)]
        refresh: f64,
    },
    /// List, retry or drop the updates set aside because they crashed their
    /// session every time they were handled.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Exit 0 if the running daemon's /health answers 200, else 1 (for
    /// container health checks).
    Healthcheck {
        /// The daemon's HTTP endpoint; default: http://HTTP_ADDR.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Print them, newest first, one JSON object a line.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Take one back: the running daemon handles it at once; with none
    /// running, the next start does.
    Retry {
        /// The update's id.
        update_id: i64,
        /// The daemon's HTTP endpoint; default: http://HTTP_ADDR.
        #[arg(long)]
        url: Option<String>,
    },
    /// Drop one for good.
    Drop {
        /// The update's id.
        update_id: i64,
    },
}

/// The daemon's endpoint as a client reaches it: a wildcard listen address
/// is reached on loopback.
fn local_url(config: &Config) -> String {
    let mut addr = config.http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// Transparent huge pages off for this process. The allocator asks for
/// them, and each first touch of one has the kernel zero 2 MiB at once: in
/// a burst of new users that took a tenth of the daemon's CPU, and it
/// rounds the memory of small actors up. Latency-minded servers (Redis
/// among them) run without them for the same reasons.
#[cfg(target_os = "linux")]
fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "actorbot: could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn without_huge_pages() {}

/// Runs the daemon until it stops; the exit status says how it ended.
/// The log, at `RUST_LOG` or `LOG_LEVEL`, with every secret masked.
fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    actorbot::logging::init(
        &filter,
        vec![
            config.bot_token.expose().to_string(),
            config.webhook_secret.expose().to_string(),
            config.ai_api_key.expose().to_string(),
            config.admin_http_token.expose().to_string(),
        ],
    );
}

fn serve(config: Config, extra: Option<actorbot::http::Extra>) -> ExitCode {
    init_logging(&config);
    let system = actix_rt::System::new();
    match system.block_on(actorbot::daemon::run_with(config, extra)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err:#}");
            eprintln!("actorbot: {err:#}");
            use actorbot::cluster::LeaseLost;
            use actorbot::daemon::SupervisionGaveUp;
            if err.downcast_ref::<SupervisionGaveUp>().is_some() {
                ExitCode::from(SupervisionGaveUp::EXIT_STATUS)
            } else if err.downcast_ref::<LeaseLost>().is_some() {
                ExitCode::from(LeaseLost::EXIT_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn main() -> ExitCode {
    without_huge_pages();
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
            serve(config, None)
        }
        Command::Worker => {
            if let Err(err) = config.require_token() {
                eprintln!("actorbot: configuration error: {err}");
                return ExitCode::from(2);
            }
            init_logging(&config);
            let system = actix_rt::System::new();
            match system.block_on(actorbot::worker::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    log::error!("{err:#}");
                    eprintln!("actorbot worker: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sandbox => {
            let mut config = config;
            let ai_url_set = std::env::var_os("AI_API_URL").is_some();
            let sandbox = match actorbot::sandbox::Sandbox::start(&mut config, ai_url_set) {
                Ok(sandbox) => sandbox,
                Err(err) => {
                    eprintln!("actorbot: the sandbox's emulator cannot start: {err}");
                    return ExitCode::FAILURE;
                }
            };
            println!(
                "actorbot sandbox: the web chat is at http://{}/sandbox (no token, no network; data in {})",
                config.http_addr,
                config.data_dir.display()
            );
            println!(
                "actorbot sandbox: the emulator's control API is at http://{}{} (for tools: actorbot loadtest --emulator URL)",
                config.http_addr,
                actorbot::sandbox::EMULATOR_PATH
            );
            let routes = sandbox.routes();
            serve(config, Some(routes))
        }
        Command::Loadtest {
            users,
            duration,
            ramp,
            think,
            mix,
            output,
            slo,
            drain,
            flood_limits,
            ai_latency_ms,
            ai_word_delay_ms,
            env,
            quiet,
            emulator,
            pid,
            daemon_url,
        } => {
            let parsed = (|| -> Result<actorbot::loadtest::Options, String> {
                let secs = |name: &str, v: f64| {
                    (v.is_finite() && v >= 0.0)
                        .then(|| std::time::Duration::from_secs_f64(v))
                        .ok_or_else(|| format!("--{name}: expected seconds ≥ 0"))
                };
                Ok(actorbot::loadtest::Options {
                    users: users.max(1),
                    duration: secs("duration", duration)?,
                    ramp: secs("ramp", ramp)?,
                    think: secs("think", think)?,
                    mix: actorbot::loadtest::Mix::parse(&mix)?,
                    output,
                    slo: slo
                        .as_deref()
                        .map(actorbot::loadtest::Slo::parse)
                        .transpose()?,
                    drain: secs("drain", drain)?,
                    flood_limits,
                    env: actorbot::loadtest::parse_env(&env)?,
                    ai_latency: std::time::Duration::from_millis(ai_latency_ms),
                    ai_word_delay: std::time::Duration::from_millis(ai_word_delay_ms),
                    quiet,
                    emulator,
                    pid,
                    daemon_url,
                })
            })();
            let options = match parsed {
                Ok(options) => options,
                Err(err) => {
                    eprintln!("actorbot loadtest: {err}");
                    return ExitCode::from(2);
                }
            };
            let output = options.output.clone();
            let report = match actix_rt::System::new().block_on(actorbot::loadtest::run(options)) {
                Ok(report) => report,
                Err(err) => {
                    eprintln!("actorbot loadtest: {err}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report.text());
            if let Some(path) = output {
                let json = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(err) = std::fs::write(&path, json) {
                    eprintln!("actorbot loadtest: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if report.slo_missed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Command::Dashboard {
            url,
            once,
            export,
            refresh,
        } => {
            let options = actorbot::dashboard::Options {
                url: url.unwrap_or_else(|| local_url(&config)),
                token: config.admin_http_token.expose().to_string(),
                once,
                export,
                refresh: std::time::Duration::from_secs_f64(refresh.max(0.5)),
            };
            match actix_rt::System::new().block_on(actorbot::dashboard::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("actorbot dashboard: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters { action } => {
            let url = local_url(&config);
            match actix_rt::System::new().block_on(dead_letters(&config, action, url)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("actorbot dead-letters: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { url } => {
            let url = format!("{}/health", url.unwrap_or_else(|| local_url(&config)));
            let checked = actix_rt::System::new().block_on(async move {
                let client = awc::Client::builder()
                    .timeout(std::time::Duration::from_secs(5))
                    .finish();
                client.get(url.as_str()).send().await.map(|r| r.status())
            });
            match checked {
                Ok(status) if status.is_success() => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("actorbot healthcheck: {status}");
                    ExitCode::FAILURE
                }
                Err(err) => {
                    eprintln!("actorbot healthcheck: {err}");
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

/// `actorbot dead-letters …`: on the database directly, except a retry,
/// which a running daemon carries out at once.
async fn dead_letters(
    config: &Config,
    action: DeadLetterAction,
    default_url: String,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let storage = actorbot::storage::Storage::open(config)
        .await
        .context("cannot open the database")?;
    match action {
        DeadLetterAction::List { limit } => {
            let count = storage.dead_letters_count().await?;
            for letter in storage.dead_letters_list(limit).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            eprintln!("{count} dead letters");
        }
        DeadLetterAction::Retry { update_id, url } => {
            let url = format!(
                "{}/dead-letters/{update_id}/retry",
                url.unwrap_or(default_url)
            );
            let mut request = awc::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .finish()
                .post(url.as_str());
            let token = config.admin_http_token.expose();
            if !token.is_empty() {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(mut response) => {
                    let body = response.body().await.unwrap_or_default();
                    let body = String::from_utf8_lossy(&body);
                    if !response.status().is_success() {
                        anyhow::bail!("{url}: {} {body}", response.status());
                    }
                    println!("{body}");
                }
                // No daemon there: the next start replays it.
                Err(awc::error::SendRequestError::Connect(_)) => {
                    match storage.dead_letter_take(update_id).await? {
                        Some(_) => println!(
                            "update {update_id} taken back; no daemon answers at {url}, \
                             so the next start handles it"
                        ),
                        None => anyhow::bail!("no dead letter {update_id}"),
                    }
                }
                Err(err) => anyhow::bail!("{url}: {err}"),
            }
        }
        DeadLetterAction::Drop { update_id } => {
            if !storage.dead_letter_drop(update_id).await? {
                anyhow::bail!("no dead letter {update_id}");
            }
            println!("dead letter {update_id} dropped");
        }
    }
    Ok(())
}
