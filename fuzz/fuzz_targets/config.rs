//! The configuration loaded from an environment built from the input: one
//! `NAME=value` per line, where a NAME that is a number picks a key of
//! `config/default.toml` by index. The embedded files are always used.
//!
//! A configuration `Config::load` accepts must also be one the daemon can
//! start with: every duration it turns into a `Duration` must fit one, and
//! so must the longest wait a rate limit of the configured rate computes.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use actorbot::config::Config;
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    include_str!("../../config/default.toml")
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, _)| key.trim().to_uppercase())
        .filter(|key| !key.starts_with('#'))
        .chain(["APP_PROFILE".to_string()])
        .collect()
});

fn fits(what: &str, secs: f64) {
    assert!(
        Duration::try_from_secs_f64(secs).is_ok(),
        "{what}: {secs} seconds is no Duration"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut env = HashMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = match name.parse::<usize>() {
            Ok(index) => KEYS[index % KEYS.len()].clone(),
            Err(_) => name.to_string(),
        };
        env.insert(name, value.to_string());
    }
    env.insert("CONFIG_DIR".into(), "/nonexistent".into());
    let Ok(config) = Config::load(&env) else {
        return;
    };
    let _ = config.require_token();
    let _ = config.to_redacted_toml();
    let _ = (
        config.user_arbiters(),
        config.worker_threads(),
        config.temp_dir(),
    );
    for (name, secs) in [
        ("http_timeout", config.http_timeout),
        ("shutdown_timeout", config.shutdown_timeout),
        ("supervisor_period", config.supervisor_period),
        ("supervisor_exit_grace", config.supervisor_exit_grace),
        ("anti_flood_window", config.anti_flood_window),
        ("user_state_timeout", config.user_state_timeout),
        ("ai_breaker_cooldown", config.ai_breaker_cooldown),
        ("ai_cache_ttl", config.ai_cache_ttl),
        ("ai_first_token_timeout", config.ai_first_token_timeout),
        ("ai_stream_idle_timeout", config.ai_stream_idle_timeout),
        ("telegram_send_patience", config.telegram_send_patience),
        ("draft_interval", config.draft_interval),
        ("edit_interval", config.edit_interval),
        ("typing_interval", config.typing_interval),
        ("stats_cache_ttl", config.stats_cache_ttl),
        ("cleanup_interval", config.cleanup_interval),
        ("inbox_retention", config.inbox_retention),
        ("temp_file_max_age", config.temp_file_max_age),
        ("image_cache_ttl", config.image_cache_ttl),
        ("health_interval", config.health_interval),
        (
            "dependency_check_interval",
            config.dependency_check_interval,
        ),
        ("alert_quiet_period", config.alert_quiet_period),
        // A token bucket waits up to one token's time: 1 / rate.
        (
            "1 / telegram_global_rate",
            1.0 / config.telegram_global_rate,
        ),
        (
            "1 / telegram_private_rate",
            1.0 / config.telegram_private_rate,
        ),
        (
            "60 / telegram_group_per_minute",
            60.0 / config.telegram_group_per_minute,
        ),
    ] {
        fits(name, secs);
    }
    let _ = (
        config.http_timeout(),
        config.shutdown_timeout(),
        config.user_state_timeout(),
        config.stats_cache_ttl(),
        config.cleanup_interval(),
        config.inbox_retention(),
        config.temp_file_max_age(),
    );
});
