//! Configuration, parsed once at start into one typed struct.
//!
//! Three layers, each overriding the one before: `config/default.toml` (which
//! lists every key, so it doubles as the reference), the profile file chosen
//! by `APP_PROFILE`, and environment variables named after the keys in upper
//! case. The files are read from `CONFIG_DIR` (default `./config`) when that
//! directory exists and otherwise from copies built into the binary, so the
//! daemon starts from any working directory.
//!
//! Environment values are typed by the default they override, which is what
//! lets a malformed value stop the start with one line naming the variable
//! and what it expected. Besides this module, `main` reads `RUST_LOG` for
//! the log filter and, for `actorbot sandbox`, whether `AI_API_URL` was set
//! at all; the usual proxy variables (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY` naming an HTTP proxy, `NO_PROXY`) are read by the HTTP
//! clients of the AI backend (reqwest's own reading) and of the Bot API
//! ([`crate::telegram::proxy`]).

pub mod live;
mod secret;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use secret::{Secret, SecretUrl};

const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");
const EMBEDDED_PROFILES: &[(&str, &str)] = &[
    ("development", include_str!("../../config/development.toml")),
    ("testing", include_str!("../../config/testing.toml")),
    ("production", include_str!("../../config/production.toml")),
    ("high-load", include_str!("../../config/high-load.toml")),
];

/// The bounds of a setting in seconds or per second.
const MIN_SETTING: f64 = 0.001;
const MAX_SETTING: f64 = 1e9;

/// Where a setting's value came from, lowest layer first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    Profile,
    Environment,
    Runtime,
}

/// Each setting's source, by key.
pub type Sources = std::collections::BTreeMap<String, Source>;

/// The profile used when `APP_PROFILE` is not set.
pub const DEFAULT_PROFILE: &str = "production";

/// A configuration problem, reported as one line before anything starts.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "APP_PROFILE: unknown profile {0:?}, expected one of development, testing, production, high-load"
    )]
    UnknownProfile(String),
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: unknown key {key:?}")]
    UnknownKey { origin: String, key: String },
    #[error("{var}: expected {expected}, got {value:?}")]
    Env {
        var: String,
        value: String,
        expected: &'static str,
    },
    #[error("{name}: {message}")]
    Invalid { name: String, message: String },
    #[error("{var} is not set: expected {expected}")]
    Missing {
        var: &'static str,
        expected: &'static str,
    },
}

/// The effective configuration. Field names are the keys of
/// `config/default.toml`; see that file for what each one means.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which profile file was applied (set by the loader, not by a file).
    #[serde(skip_deserializing, default)]
    pub profile: String,

    pub bot_token: Secret,
    pub telegram_api_url: String,
    pub telegram_local_mode: bool,
    pub telegram_max_connections: usize,
    pub telegram_http_version: String,
    pub telegram_ca_file: String,
    pub http_timeout: f64,
    pub polling_timeout: u32,
    pub polling_limit: u32,
    pub webhook_url: String,
    pub webhook_secret: Secret,
    pub webhook_path: String,
    pub webhook_max_connections: u32,

    pub telegram_global_rate: f64,
    pub telegram_global_burst: u32,
    pub telegram_private_rate: f64,
    pub telegram_private_burst: u32,
    pub telegram_group_per_minute: f64,
    pub telegram_group_burst: u32,
    pub telegram_send_attempts: u32,
    pub telegram_send_patience: f64,
    pub outbox_capacity: usize,

    pub http_addr: SocketAddr,
    pub http_addr_file: String,

    pub database_url: SecretUrl,
    pub db_pool_min_size: u32,
    pub db_pool_max_size: u32,
    pub data_dir: PathBuf,
    pub sqlite_synchronous: String,
    pub sqlite_max_size_mb: u64,
    pub redis_url: SecretUrl,

    pub cluster: bool,
    pub cluster_lease_ttl: f64,
    pub instance_id: String,

    pub ai_api_url: String,
    pub ai_api_key: Secret,
    pub ai_model: String,
    pub ai_system_prompt: String,
    pub ai_history_turns: usize,
    pub ai_max_tokens: u32,
    pub ai_stream: bool,
    pub ai_first_token_timeout: f64,
    pub ai_stream_idle_timeout: f64,
    pub ai_semaphore_limit: usize,
    pub ai_queue_size: usize,
    pub ai_per_user_inflight: usize,
    pub ai_user_queue: usize,
    pub ai_max_attempts: u32,
    pub ai_breaker_failures: u32,
    pub ai_breaker_cooldown: f64,
    pub ai_cache_ttl: f64,
    pub ai_cache_size: usize,
    pub draft_interval: f64,
    pub edit_interval: f64,
    pub typing_interval: f64,

    pub pdf_semaphore_limit: usize,
    pub pdf_queue_size: usize,
    pub image_queue_size: usize,
    pub job_max_attempts: u32,
    pub job_lease: f64,
    pub job_claim_interval: f64,
    pub job_local: bool,
    pub max_report_pages: usize,
    pub max_photos_per_pdf: usize,
    pub max_download_bytes: usize,
    pub max_image_pixels: u64,
    pub image_cache_ttl: f64,
    pub image_cache_size: usize,
    pub queue_notice_ahead: usize,
    pub fault_panic: String,
    pub fault_hold: String,

    pub health_interval: f64,
    pub dependency_check_interval: f64,
    pub alert_errors_per_minute: f64,
    pub alert_p95_latency_ms: f64,
    pub alert_queue_depth: u64,
    pub alert_rss_mb: u64,
    pub memory_limit_mb: u64,
    pub memory_per_update_kb: u64,
    pub alert_quiet_period: f64,
    pub admin_http_token: Secret,
    pub debug_endpoints: bool,

    pub user_state_timeout: f64,
    pub max_user_states: usize,
    pub user_mailbox_capacity: usize,
    pub user_arbiters: usize,
    pub stats_cache_ttl: f64,
    pub cleanup_interval: f64,
    pub summary_interval: f64,
    pub inbox_retention: f64,
    pub temp_file_max_age: f64,

    pub admin_ids: Vec<i64>,
    pub max_concurrent_requests: usize,
    pub thread_pool_size: usize,
    pub rate_limit_per_user: u32,
    pub anti_flood_messages: u32,
    pub anti_flood_window: f64,

    pub shutdown_timeout: f64,
    pub supervisor_max_restarts: u32,
    pub supervisor_period: f64,
    pub supervisor_exit_grace: f64,
    pub session_max_restarts: u32,
    pub log_level: String,
}

impl Config {
    /// Loads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Config::load(&env)
    }

    /// Loads the configuration from the given environment (tests pass their own).
    pub fn load(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::load_layers(env, None, &toml::Table::new()).map(|(config, _)| config)
    }

    /// Loads the layers: the default file, the profile (`profile`, else
    /// `APP_PROFILE`), the environment, then `runtime` (values set while
    /// running, typed as their defaults); answers where each value came from.
    pub fn load_layers(
        env: &HashMap<String, String>,
        profile: Option<&str>,
        runtime: &toml::Table,
    ) -> Result<(Config, Sources), ConfigError> {
        let profile = profile
            .map(String::from)
            .or_else(|| env.get("APP_PROFILE").filter(|p| !p.is_empty()).cloned())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        let dir = PathBuf::from(env.get("CONFIG_DIR").map_or("config", |d| d.as_str()));
        let (default_text, profile_text) = read_files(&dir, &profile)?;

        let mut table = parse_table(&default_text, "default.toml")?;
        let mut sources: Sources = table.keys().map(|k| (k.clone(), Source::Default)).collect();
        let profile_table = parse_table(&profile_text, &format!("{profile}.toml"))?;
        for (key, value) in profile_table {
            if !table.contains_key(&key) {
                return Err(ConfigError::UnknownKey {
                    origin: format!("{profile}.toml"),
                    key,
                });
            }
            table.insert(key.clone(), value);
            sources.insert(key, Source::Profile);
        }

        let mut names = HashMap::new();
        let keys: Vec<String> = table.keys().cloned().collect();
        for key in keys {
            let var = key.to_uppercase();
            if let Some(raw) = env.get(&var) {
                let typed = env_value(&var, raw, &table[&key])?;
                table.insert(key.clone(), typed);
                sources.insert(key.clone(), Source::Environment);
                names.insert(key, var);
            }
        }
        for (key, value) in runtime {
            let Some(default) = table.get(key) else {
                return Err(ConfigError::UnknownKey {
                    origin: "the runtime settings".into(),
                    key: key.clone(),
                });
            };
            let typed = runtime_value(key, value, default)?;
            table.insert(key.clone(), typed);
            sources.insert(key.clone(), Source::Runtime);
            names.insert(key.clone(), key.to_uppercase());
        }

        let mut config: Config = serde_path_to_error::deserialize(table).map_err(|err| {
            let key = err.path().to_string();
            let name = match names.get(&key) {
                Some(var) => var.clone(),
                None => format!("{key} (in {profile}.toml or default.toml)"),
            };
            ConfigError::Invalid {
                name,
                message: err.into_inner().to_string(),
            }
        })?;
        config.profile = profile;
        config.validate()?;
        Ok((config, sources))
    }

    /// The profiles there are, by name.
    pub fn profiles() -> impl Iterator<Item = &'static str> {
        EMBEDDED_PROFILES.iter().map(|(name, _)| *name)
    }

    /// The keys a profile file sets, as the daemon would read it now.
    pub fn profile_table(
        env: &HashMap<String, String>,
        profile: &str,
    ) -> Result<toml::Table, ConfigError> {
        let dir = PathBuf::from(env.get("CONFIG_DIR").map_or("config", |d| d.as_str()));
        let (_, text) = read_files(&dir, profile)?;
        parse_table(&text, &format!("{profile}.toml"))
    }

    /// Every setting as a TOML table, secrets redacted.
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, message: &str| ConfigError::Invalid {
            name: name.to_uppercase(),
            message: message.to_string(),
        };
        let url_like = |s: &str| s.starts_with("http://") || s.starts_with("https://");
        if !url_like(&self.telegram_api_url) {
            return Err(invalid(
                "telegram_api_url",
                "expected an http:// or https:// URL",
            ));
        }
        if !url_like(&self.ai_api_url) {
            return Err(invalid("ai_api_url", "expected an http:// or https:// URL"));
        }
        if !self.webhook_url.is_empty() && !url_like(&self.webhook_url) {
            return Err(invalid("webhook_url", "expected an https:// URL"));
        }
        if !self.webhook_path.starts_with('/') {
            return Err(invalid("webhook_path", "expected a path starting with /"));
        }
        if !(1..=100).contains(&self.webhook_max_connections) {
            return Err(invalid(
                "webhook_max_connections",
                "expected a number from 1 to 100",
            ));
        }
        if !(1..=100).contains(&self.polling_limit) {
            return Err(invalid("polling_limit", "expected a number from 1 to 100"));
        }
        for (name, value) in [
            ("http_timeout", self.http_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
            ("supervisor_period", self.supervisor_period),
            ("supervisor_exit_grace", self.supervisor_exit_grace),
            ("telegram_global_rate", self.telegram_global_rate),
            ("telegram_private_rate", self.telegram_private_rate),
            ("telegram_group_per_minute", self.telegram_group_per_minute),
            ("anti_flood_window", self.anti_flood_window),
            ("user_state_timeout", self.user_state_timeout),
            ("ai_breaker_cooldown", self.ai_breaker_cooldown),
            ("ai_cache_ttl", self.ai_cache_ttl),
            ("ai_first_token_timeout", self.ai_first_token_timeout),
            ("ai_stream_idle_timeout", self.ai_stream_idle_timeout),
            ("telegram_send_patience", self.telegram_send_patience),
            ("draft_interval", self.draft_interval),
            ("edit_interval", self.edit_interval),
            ("typing_interval", self.typing_interval),
            ("stats_cache_ttl", self.stats_cache_ttl),
            ("cleanup_interval", self.cleanup_interval),
            ("inbox_retention", self.inbox_retention),
            ("temp_file_max_age", self.temp_file_max_age),
            ("image_cache_ttl", self.image_cache_ttl),
            ("health_interval", self.health_interval),
            ("dependency_check_interval", self.dependency_check_interval),
            ("alert_quiet_period", self.alert_quiet_period),
        ] {
            // Bounded both ways: every value becomes a `Duration` (a rate,
            // the wait for one token), which cannot hold 1e300 seconds.
            if !(value.is_finite() && (MIN_SETTING..=MAX_SETTING).contains(&value)) {
                return Err(invalid(
                    name,
                    "expected a positive number from 0.001 to 1000000000",
                ));
            }
        }
        let summary = self.summary_interval;
        if summary != 0.0
            && !(summary.is_finite() && (MIN_SETTING..=MAX_SETTING).contains(&summary))
        {
            return Err(invalid(
                "summary_interval",
                "expected 0 (off) or a number of seconds from 0.001 to 1000000000",
            ));
        }
        for (name, value) in [
            ("telegram_max_connections", self.telegram_max_connections),
            (
                "supervisor_max_restarts",
                self.supervisor_max_restarts as usize,
            ),
            ("session_max_restarts", self.session_max_restarts as usize),
            ("outbox_capacity", self.outbox_capacity),
            ("max_concurrent_requests", self.max_concurrent_requests),
            (
                "telegram_send_attempts",
                self.telegram_send_attempts as usize,
            ),
            ("db_pool_max_size", self.db_pool_max_size as usize),
            ("rate_limit_per_user", self.rate_limit_per_user as usize),
            ("anti_flood_messages", self.anti_flood_messages as usize),
            ("max_user_states", self.max_user_states),
            ("ai_semaphore_limit", self.ai_semaphore_limit),
            ("ai_per_user_inflight", self.ai_per_user_inflight),
            ("ai_max_attempts", self.ai_max_attempts as usize),
            ("ai_breaker_failures", self.ai_breaker_failures as usize),
            ("ai_cache_size", self.ai_cache_size),
            ("user_mailbox_capacity", self.user_mailbox_capacity),
            ("pdf_semaphore_limit", self.pdf_semaphore_limit),
            ("pdf_queue_size", self.pdf_queue_size),
            ("image_queue_size", self.image_queue_size),
            ("job_max_attempts", self.job_max_attempts as usize),
            ("max_report_pages", self.max_report_pages),
            ("max_photos_per_pdf", self.max_photos_per_pdf),
            ("max_download_bytes", self.max_download_bytes),
            ("max_image_pixels", self.max_image_pixels as usize),
            ("image_cache_size", self.image_cache_size),
            ("memory_per_update_kb", self.memory_per_update_kb as usize),
        ] {
            if value == 0 {
                return Err(invalid(name, "expected a positive integer"));
            }
        }
        if crate::telegram::tls::HttpVersions::parse(&self.telegram_http_version).is_none() {
            return Err(invalid("telegram_http_version", "expected 1.1 or 2"));
        }
        if !["normal", "full", "extra"].contains(&self.sqlite_synchronous.as_str()) {
            return Err(invalid(
                "sqlite_synchronous",
                "expected normal, full or extra",
            ));
        }
        if !(self.job_lease >= 2.0 && self.job_lease <= 3600.0) {
            return Err(invalid("job_lease", "expected seconds from 2 to 3600"));
        }
        if !(self.job_claim_interval >= 0.01 && self.job_claim_interval <= 60.0) {
            return Err(invalid(
                "job_claim_interval",
                "expected seconds from 0.01 to 60",
            ));
        }
        if self.cluster {
            if !self.database_is_postgres() {
                return Err(invalid(
                    "cluster",
                    "needs DATABASE_URL=postgres://…: the instances share the inbox and the leader lease in PostgreSQL",
                ));
            }
            if !(self.cluster_lease_ttl >= 1.0 && self.cluster_lease_ttl <= 300.0) {
                return Err(invalid(
                    "cluster_lease_ttl",
                    "expected seconds from 1 to 300",
                ));
            }
        }
        if self.db_pool_min_size > self.db_pool_max_size {
            return Err(invalid(
                "db_pool_min_size",
                "expected a value no larger than DB_POOL_MAX_SIZE",
            ));
        }
        if !self.webhook_url.is_empty() && self.webhook_secret.is_empty() {
            return Err(ConfigError::Missing {
                var: "WEBHOOK_SECRET",
                expected: "a secret of 1-256 characters A-Z, a-z, 0-9, _ and - when WEBHOOK_URL is set",
            });
        }
        let secret_ok = self
            .webhook_secret
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && self.webhook_secret.expose().len() <= 256;
        if !secret_ok {
            return Err(invalid(
                "webhook_secret",
                "expected 1-256 characters A-Z, a-z, 0-9, _ and -",
            ));
        }
        Ok(())
    }

    /// Checks what only the daemon needs: a usable bot token.
    pub fn require_token(&self) -> Result<(), ConfigError> {
        const EXPECTED: &str = "the bot token from @BotFather, like 123456789:AAE...";
        let token = self.bot_token.expose();
        if token.is_empty() {
            return Err(ConfigError::Missing {
                var: "BOT_TOKEN",
                expected: EXPECTED,
            });
        }
        let well_formed = token.split_once(':').is_some_and(|(id, rest)| {
            !id.is_empty()
                && id.chars().all(|c| c.is_ascii_digit())
                && !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !well_formed {
            return Err(ConfigError::Invalid {
                name: "BOT_TOKEN".into(),
                message: format!("expected {EXPECTED}"),
            });
        }
        Ok(())
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_timeout)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout)
    }

    pub fn secs(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }

    pub fn user_state_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.user_state_timeout)
    }

    pub fn stats_cache_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.stats_cache_ttl)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs_f64(self.cleanup_interval)
    }

    pub fn inbox_retention(&self) -> Duration {
        Duration::from_secs_f64(self.inbox_retention)
    }

    pub fn temp_file_max_age(&self) -> Duration {
        Duration::from_secs_f64(self.temp_file_max_age)
    }

    /// Where temporary files live; the cleanup sweeps it.
    pub fn temp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }

    /// Event-loop threads for the user actors.
    pub fn user_arbiters(&self) -> usize {
        if self.user_arbiters > 0 {
            self.user_arbiters
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// This instance's name in a cluster: `INSTANCE_ID`, or host name and
    /// process id.
    pub fn instance_name(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "actorbot".into());
        format!("{host}-{}", std::process::id())
    }

    /// Whether `DATABASE_URL` names PostgreSQL (else SQLite is used).
    pub fn database_is_postgres(&self) -> bool {
        let url = self.database_url.expose();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    pub fn webhook_enabled(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    /// Worker threads for CPU-bound work.
    pub fn worker_threads(&self) -> usize {
        if self.thread_pool_size > 0 {
            self.thread_pool_size
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// The configuration as TOML with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }
}

fn read_files(dir: &Path, profile: &str) -> Result<(String, String), ConfigError> {
    let embedded = EMBEDDED_PROFILES
        .iter()
        .find(|(name, _)| *name == profile)
        .map(|(_, text)| *text)
        .ok_or_else(|| ConfigError::UnknownProfile(profile.to_string()))?;
    if !dir.is_dir() {
        return Ok((EMBEDDED_DEFAULT.to_string(), embedded.to_string()));
    }
    let read = |name: String| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path, source })
    };
    Ok((
        read("default.toml".into())?,
        read(format!("{profile}.toml"))?,
    ))
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::Syntax {
            origin: origin.to_string(),
            message: err.message().to_string(),
        })
}

/// Types a value set at run time (JSON, turned TOML) as the default it
/// overrides: an integer where a number is expected is taken, a string
/// where a number is expected is parsed as the environment's would be.
fn runtime_value(
    key: &str,
    value: &toml::Value,
    default: &toml::Value,
) -> Result<toml::Value, ConfigError> {
    let var = key.to_uppercase();
    match (default, value) {
        (toml::Value::Float(_), toml::Value::Integer(n)) => Ok(toml::Value::Float(*n as f64)),
        (_, toml::Value::String(raw)) if !matches!(default, toml::Value::String(_)) => {
            env_value(&var, raw, default)
        }
        (d, v) if std::mem::discriminant(d) == std::mem::discriminant(v) => Ok(v.clone()),
        (_, v) => env_value(&var, &v.to_string(), default),
    }
}

/// Parses an environment variable by the type of the default it overrides.
fn env_value(var: &str, raw: &str, default: &toml::Value) -> Result<toml::Value, ConfigError> {
    let fail = |expected| ConfigError::Env {
        var: var.to_string(),
        value: raw.to_string(),
        expected,
    };
    let trimmed = raw.trim();
    Ok(match default {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => {
            toml::Value::Integer(trimmed.parse().map_err(|_| fail("an integer"))?)
        }
        toml::Value::Float(_) => toml::Value::Float(
            trimmed
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| fail("a number"))?,
        ),
        toml::Value::Boolean(_) => match trimmed.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(fail("true or false")),
        },
        toml::Value::Array(_) => toml::Value::Array(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    item.parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|_| fail("a comma-separated list of integers"))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(fail("a value of the default's type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The embedded files, not whatever the test's working directory holds.
        map.entry("CONFIG_DIR".into())
            .or_insert_with(|| "/nonexistent".into());
        map
    }

    #[test]
    fn seconds_and_rates_out_of_bounds_are_refused() {
        for (var, value) in [
            ("HTTP_TIMEOUT", "1e300"),
            ("TELEGRAM_GLOBAL_RATE", "1e-300"),
            ("DRAFT_INTERVAL", "0"),
        ] {
            let env: HashMap<String, String> = [(var.to_string(), value.to_string())].into();
            let err = Config::load(&env).expect_err(var).to_string();
            assert!(
                err.contains(var) && err.contains("0.001 to"),
                "{var}: {err}"
            );
        }
        let env: HashMap<String, String> = [("HTTP_TIMEOUT".to_string(), "1e9".to_string())].into();
        assert!(Config::load(&env).is_ok());
    }

    #[test]
    fn defaults_load_with_production_profile() {
        let config = Config::load(&env(&[])).expect("defaults are valid");
        assert_eq!(config.profile, "production");
        assert_eq!(config.telegram_api_url, "https://api.telegram.org");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
        assert!(config.database_url.is_empty());
        assert!(config.require_token().is_err());
    }

    #[test]
    fn files_on_disk_match_the_embedded_copies() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let config = Config::load(&env(&[
            ("CONFIG_DIR", dir.to_str().unwrap()),
            ("APP_PROFILE", "high-load"),
        ]))
        .unwrap();
        assert_eq!(config.telegram_max_connections, 256);
    }

    #[test]
    fn every_profile_is_valid() {
        for (name, _) in EMBEDDED_PROFILES {
            let config = Config::load(&env(&[("APP_PROFILE", name)]))
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(config.profile, *name);
        }
    }

    #[test]
    fn environment_overrides_profile_and_parses_lists() {
        let config = Config::load(&env(&[
            ("APP_PROFILE", "testing"),
            ("POLLING_TIMEOUT", "7"),
            ("ADMIN_IDS", "1, 2,3"),
            ("HTTP_TIMEOUT", "2"),
            ("BOT_TOKEN", "123:abc-DEF_1"),
        ]))
        .unwrap();
        assert_eq!(config.polling_timeout, 7);
        assert_eq!(config.admin_ids, vec![1, 2, 3]);
        assert_eq!(config.http_timeout(), Duration::from_secs(2));
        config.require_token().unwrap();
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let err = Config::load(&env(&[("MAX_CONCURRENT_REQUESTS", "lots")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MAX_CONCURRENT_REQUESTS: expected an integer, got \"lots\""
        );
        let err = Config::load(&env(&[("HTTP_ADDR", "localhost")])).unwrap_err();
        assert!(err.to_string().starts_with("HTTP_ADDR: "), "{err}");
        let err = Config::load(&env(&[("DB_POOL_MAX_SIZE", "-1")])).unwrap_err();
        assert!(err.to_string().starts_with("DB_POOL_MAX_SIZE: "), "{err}");
        let err = Config::load(&env(&[("APP_PROFILE", "staging")])).unwrap_err();
        assert!(err.to_string().starts_with("APP_PROFILE: "), "{err}");
        let err = Config::load(&env(&[("WEBHOOK_URL", "https://example.org/hook")])).unwrap_err();
        assert!(
            err.to_string().starts_with("WEBHOOK_SECRET is not set"),
            "{err}"
        );
    }

    #[test]
    fn malformed_token_is_refused() {
        for bad in ["nocolon", ":abc", "12a:abc", "123:", "123:has space"] {
            let config = Config::load(&env(&[("BOT_TOKEN", bad)])).unwrap();
            let err = config.require_token().unwrap_err();
            assert!(err.to_string().starts_with("BOT_TOKEN"), "{err}");
            assert!(!err.to_string().contains(bad), "the token leaked: {err}");
        }
    }

    #[test]
    fn redacted_output_has_no_secret() {
        let config = Config::load(&env(&[
            ("BOT_TOKEN", "123456:SECRET-token"),
            ("WEBHOOK_URL", "https://bot.example.org/hook"),
            ("WEBHOOK_SECRET", "hook-SECRET"),
            ("DATABASE_URL", "postgres://bot:PASSWORD@db/actorbot"),
            ("REDIS_URL", "redis://:REDISPASS@cache:6379/0"),
        ]))
        .unwrap();
        let text = config.to_redacted_toml();
        for secret in ["SECRET-token", "hook-SECRET", "PASSWORD", "REDISPASS"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("postgres://bot:<redacted>@db/actorbot"),
            "{text}"
        );
        assert!(text.contains("bot_token = \"<redacted>\""), "{text}");
    }
}
