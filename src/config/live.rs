//! The running configuration, changed while the daemon runs.
//!
//! A long-lived daemon should not need a restart, and its users'
//! conversations interrupted, to change a rate limit. Three ways in:
//! `SIGHUP` re-reads the files in `CONFIG_DIR` (the environment of a running
//! process cannot change), `PUT /config` sets values given as JSON, and
//! `POST /config/profile/{name}` swaps the profile layer. Each builds a
//! whole new configuration from the layers (default, profile, environment,
//! values set at run time, in that order), validates it as a whole, and
//! compares it with the running one. Only the settings in [`TUNABLE`] may
//! differ: a request that names another is refused as a whole, naming the
//! setting; a re-read or a profile that changes one keeps the running value
//! and says that a restart is needed for it.
//!
//! The new configuration is published on a watch channel. Each actor that
//! holds a setting subscribes and receives it as a message in its mailbox,
//! so it applies from its next decision on and nothing in flight is
//! dropped; a supervised actor that restarts starts from the latest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;

use super::{Config, ConfigError, Sources};

/// The settings that can change while the daemon runs.
pub const TUNABLE: &[&str] = &[
    "log_level",
    // Users' rate limits and anti-flood.
    "rate_limit_per_user",
    "anti_flood_messages",
    "anti_flood_window",
    "stats_cache_ttl",
    "queue_notice_ahead",
    "max_photos_per_pdf",
    // Telegram's flood limits.
    "telegram_global_rate",
    "telegram_global_burst",
    "telegram_private_rate",
    "telegram_private_burst",
    "telegram_group_per_minute",
    "telegram_group_burst",
    "telegram_send_attempts",
    "telegram_send_patience",
    // The AI.
    "ai_model",
    "ai_system_prompt",
    "ai_history_turns",
    "ai_max_tokens",
    "ai_stream",
    "ai_first_token_timeout",
    "ai_stream_idle_timeout",
    "ai_semaphore_limit",
    "ai_queue_size",
    "ai_per_user_inflight",
    "ai_user_queue",
    "ai_max_attempts",
    "ai_breaker_failures",
    "ai_breaker_cooldown",
    "ai_cache_ttl",
    "draft_interval",
    "edit_interval",
    "typing_interval",
    // The document pools: workers and queues.
    "thread_pool_size",
    "image_queue_size",
    "pdf_semaphore_limit",
    "pdf_queue_size",
    // Sessions.
    "user_state_timeout",
    "max_user_states",
    // Health and alerts.
    "alert_errors_per_minute",
    "alert_p95_latency_ms",
    "alert_queue_depth",
    "alert_rss_mb",
    "alert_quiet_period",
    "memory_limit_mb",
    "memory_per_update_kb",
    // Cleanup.
    "cleanup_interval",
    "inbox_retention",
    "temp_file_max_age",
];

/// Who asked for a change, for the log line that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `SIGHUP`.
    Signal,
    /// An HTTP endpoint, by path.
    Endpoint(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Signal => f.write_str("SIGHUP"),
            Origin::Endpoint(path) => write!(f, "{path}"),
        }
    }
}

/// One setting that changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub key: String,
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

/// Why a change was not applied; nothing of it was.
#[derive(Debug, Error)]
pub enum Refused {
    #[error("{} cannot change while the daemon runs: set it and restart", .0.to_uppercase())]
    Fixed(String),
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("expected a JSON object of settings, such as {{\"rate_limit_per_user\": 10}}")]
    NotAnObject,
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub changes: Vec<Change>,
    /// Settings that differ in the files or the profile but can only change
    /// with a restart; they keep their running values.
    pub needs_restart: Vec<String>,
}

/// The running configuration and the layers it was built from.
pub struct Live {
    env: HashMap<String, String>,
    sender: watch::Sender<Arc<Config>>,
    state: Mutex<State>,
}

struct State {
    profile: String,
    /// Values set at run time, by key, as TOML.
    runtime: toml::Table,
    sources: Sources,
}

impl Live {
    /// The configuration loaded at start, from `env`.
    pub fn new(env: HashMap<String, String>, config: Config, sources: Sources) -> Arc<Live> {
        let profile = config.profile.clone();
        let (sender, _) = watch::channel(Arc::new(config));
        Arc::new(Live {
            env,
            sender,
            state: Mutex::new(State {
                profile,
                runtime: toml::Table::new(),
                sources,
            }),
        })
    }

    /// Loads the configuration from the process's environment.
    pub fn from_env() -> Result<Arc<Live>, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let (config, sources) = Config::load_layers(&env, None, &toml::Table::new())?;
        Ok(Live::new(env, config, sources))
    }

    /// Live for a configuration loaded (and perhaps adjusted, as the
    /// sandbox adjusts a few fixed settings) from the process's environment:
    /// the sources are those of the same layers read again.
    pub fn for_loaded(config: Config) -> Arc<Live> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let sources = Config::load_layers(&env, Some(&config.profile), &toml::Table::new())
            .map(|(_, sources)| sources)
            .unwrap_or_default();
        Live::new(env, config, sources)
    }

    /// The keys the profile `name` sets, as a re-read would find them.
    pub fn profile_table(&self, name: &str) -> Result<toml::Table, ConfigError> {
        Config::profile_table(&self.env, name)
    }

    pub fn current(&self) -> Arc<Config> {
        self.sender.borrow().clone()
    }

    /// A receiver that sees each new configuration.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.sender.subscribe()
    }

    /// Each setting's source.
    pub fn sources(&self) -> Sources {
        self.lock().sources.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the given values (JSON, by key in lower or upper case); a fixed
    /// setting among them refuses the whole request.
    pub fn set(&self, values: &serde_json::Value, origin: Origin) -> Result<Applied, Refused> {
        let object = values.as_object().ok_or(Refused::NotAnObject)?;
        let mut state = self.lock();
        let mut runtime = state.runtime.clone();
        for (key, value) in object {
            let key = key.to_ascii_lowercase();
            if !TUNABLE.contains(&key.as_str()) {
                let known = self.current().to_table().contains_key(&key);
                return Err(if known {
                    Refused::Fixed(key)
                } else {
                    Refused::Invalid(ConfigError::UnknownKey {
                        origin: "the request".into(),
                        key,
                    })
                });
            }
            runtime.insert(key, json_to_toml(value));
        }
        let profile = state.profile.clone();
        self.rebuild(&mut state, &profile, runtime, origin)
    }

    /// Swaps the profile layer for `name`; environment and run-time values
    /// still win over it.
    pub fn use_profile(&self, name: &str, origin: Origin) -> Result<Applied, Refused> {
        let mut state = self.lock();
        let runtime = state.runtime.clone();
        self.rebuild(&mut state, name, runtime, origin)
    }

    /// Re-reads the files (`SIGHUP`).
    pub fn reload(&self, origin: Origin) -> Result<Applied, Refused> {
        let mut state = self.lock();
        let (profile, runtime) = (state.profile.clone(), state.runtime.clone());
        self.rebuild(&mut state, &profile, runtime, origin)
    }

    /// The values set at run time, to restore later.
    pub fn runtime_values(&self) -> toml::Table {
        self.lock().runtime.clone()
    }

    /// Puts back run-time values saved with [`Live::runtime_values`].
    pub fn restore_runtime(
        &self,
        runtime: toml::Table,
        origin: Origin,
    ) -> Result<Applied, Refused> {
        let mut state = self.lock();
        let profile = state.profile.clone();
        self.rebuild(&mut state, &profile, runtime, origin)
    }

    fn rebuild(
        &self,
        state: &mut State,
        profile: &str,
        runtime: toml::Table,
        origin: Origin,
    ) -> Result<Applied, Refused> {
        let (candidate, sources) = Config::load_layers(&self.env, Some(profile), &runtime)?;
        let running = self.current();
        let (config, applied) = plan(&running, candidate);
        state.profile = profile.to_string();
        state.runtime = runtime;
        state.sources = sources;
        if config.profile != running.profile {
            log::info!(
                "configuration: profile {} instead of {} ({origin})",
                config.profile,
                running.profile
            );
        }
        if applied.changes.is_empty() {
            log::info!("configuration ({origin}): no setting changed");
            if config.profile != running.profile {
                self.sender.send_replace(Arc::new(config));
            }
        } else {
            let list: Vec<String> = applied
                .changes
                .iter()
                .map(|c| format!("{} {} -> {}", c.key.to_uppercase(), c.from, c.to))
                .collect();
            log::info!("configuration changed by {origin}: {}", list.join(", "));
            self.sender.send_replace(Arc::new(config));
        }
        if !applied.needs_restart.is_empty() {
            log::warn!(
                "configuration ({origin}): {} changed but take effect only after a restart",
                applied
                    .needs_restart
                    .iter()
                    .map(|k| k.to_uppercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(applied)
    }
}

/// Compares a candidate configuration with the running one: the tunable
/// settings take the candidate's values, the others keep the running ones
/// and are listed as needing a restart where they differ.
pub fn plan(running: &Config, candidate: Config) -> (Config, Applied) {
    let (before, after) = (running.to_table(), candidate.to_table());
    let mut changes = Vec::new();
    let mut needs_restart = Vec::new();
    for (key, to) in &after {
        let from = before.get(key);
        if from == Some(to) {
            continue;
        }
        if TUNABLE.contains(&key.as_str()) {
            changes.push(Change {
                key: key.clone(),
                from: from.map_or(serde_json::Value::Null, toml_to_json),
                to: toml_to_json(to),
            });
        } else if key != "profile" {
            needs_restart.push(key.clone());
        }
    }
    let mut config = running.clone();
    config.profile = candidate.profile.clone();
    if !changes.is_empty() {
        config = with_tunables(running, &candidate);
    }
    (
        config,
        Applied {
            changes,
            needs_restart,
        },
    )
}

/// `running`, with every tunable setting taken from `candidate`.
fn with_tunables(running: &Config, candidate: &Config) -> Config {
    let mut table = running.to_table();
    let theirs = candidate.to_table();
    for key in TUNABLE {
        if let Some(value) = theirs.get(*key) {
            table.insert((*key).to_string(), value.clone());
        }
    }
    // The profile is not a setting of the file; secrets render redacted in
    // a table, and none is tunable: they are carried over as they are.
    table.remove("profile");
    let mut config: Config = match table.try_into() {
        Ok(config) => config,
        Err(err) => {
            log::error!("configuration: cannot apply the change: {err}");
            return running.clone();
        }
    };
    config.bot_token = running.bot_token.clone();
    config.webhook_secret = running.webhook_secret.clone();
    config.database_url = running.database_url.clone();
    config.redis_url = running.redis_url.clone();
    config.ai_api_key = running.ai_api_key.clone();
    config.admin_http_token = running.admin_http_token.clone();
    config.profile = candidate.profile.clone();
    config
}

fn json_to_toml(value: &serde_json::Value) -> toml::Value {
    match value {
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(items) => {
            toml::Value::Array(items.iter().map(json_to_toml).collect())
        }
        // null and objects have no setting to be: a string the typing
        // refuses with the setting's name.
        other => toml::Value::String(other.to_string()),
    }
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn live(pairs: &[(&str, &str)]) -> Arc<Live> {
        let mut env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert(
            "CONFIG_DIR".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/config").into(),
        );
        let (config, sources) = Config::load_layers(&env, None, &toml::Table::new()).unwrap();
        Live::new(env, config, sources)
    }

    #[test]
    fn a_tunable_value_is_applied_and_published_with_its_source() {
        let live = live(&[]);
        let mut seen = live.subscribe();
        let applied = live
            .set(
                &serde_json::json!({"RATE_LIMIT_PER_USER": 3, "ai_model": "other"}),
                Origin::Endpoint("/config"),
            )
            .unwrap();
        let keys: Vec<&str> = applied.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["ai_model", "rate_limit_per_user"]);
        assert!(seen.has_changed().unwrap());
        let current = seen.borrow_and_update().clone();
        assert_eq!(current.rate_limit_per_user, 3);
        assert_eq!(current.ai_model, "other");
        assert_eq!(live.sources()["rate_limit_per_user"], Source::Runtime);
        assert_eq!(live.sources()["http_addr"], Source::Default);
    }

    #[test]
    fn a_bad_value_changes_nothing() {
        let live = live(&[]);
        let before = live.current();
        let err = live
            .set(
                &serde_json::json!({"rate_limit_per_user": 3, "anti_flood_window": "soon"}),
                Origin::Endpoint("/config"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("ANTI_FLOOD_WINDOW"), "{err}");
        assert_eq!(
            live.current().rate_limit_per_user,
            before.rate_limit_per_user
        );
        assert!(live.runtime_values().is_empty());
    }

    #[test]
    fn a_fixed_setting_is_refused_by_name() {
        let live = live(&[]);
        let err = live
            .set(
                &serde_json::json!({"http_addr": "0.0.0.0:1"}),
                Origin::Endpoint("/config"),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTP_ADDR cannot change while the daemon runs: set it and restart"
        );
        let unknown = live
            .set(
                &serde_json::json!({"no_such": 1}),
                Origin::Endpoint("/config"),
            )
            .unwrap_err();
        assert!(unknown.to_string().contains("no_such"), "{unknown}");
    }

    #[test]
    fn the_environment_wins_over_a_profile_and_fixed_differences_wait_for_a_restart() {
        let live = live(&[("LOG_LEVEL", "warn")]);
        let applied = live
            .use_profile(
                "development",
                Origin::Endpoint("/config/profile/development"),
            )
            .unwrap();
        // development.toml sets log_level and db_pool_max_size; the first
        // comes from the environment, the second is fixed.
        assert!(applied.changes.iter().all(|c| c.key != "log_level"));
        assert!(
            applied
                .needs_restart
                .contains(&"db_pool_max_size".to_string())
        );
        assert_eq!(live.current().log_level, "warn");
        assert_eq!(live.current().profile, "development");
        assert_ne!(
            live.current().db_pool_max_size,
            4,
            "a fixed setting kept its running value"
        );
    }

    #[test]
    fn secrets_are_carried_over_unchanged() {
        let live = live(&[
            ("BOT_TOKEN", "123:secret"),
            ("ADMIN_HTTP_TOKEN", "admin-secret"),
        ]);
        live.set(&serde_json::json!({"ai_max_tokens": 10}), Origin::Signal)
            .unwrap();
        let current = live.current();
        assert_eq!(current.bot_token.expose(), "123:secret");
        assert_eq!(current.admin_http_token.expose(), "admin-secret");
        assert_eq!(current.ai_max_tokens, 10);
    }
}
