//! `actorbot dashboard`: the dashboard's figures in a terminal, for servers
//! without a browser. It reads the same endpoints the web page does, so
//! what it shows is what `/dashboard` shows.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

pub struct Options {
    /// The daemon's HTTP endpoint, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Sent as a bearer token when not empty.
    pub token: String,
    /// Print once and exit.
    pub once: bool,
    /// Write status, history and actors as one JSON document here.
    pub export: Option<std::path::PathBuf>,
    pub refresh: Duration,
}

/// Everything one screen shows.
struct Snapshot {
    status: Value,
    history: Value,
    actors: Value,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    loop {
        let snapshot = fetch(&client, &options).await?;
        if let Some(path) = &options.export {
            let document = serde_json::json!({
                "exported_from": options.url,
                "status": snapshot.status,
                "history": snapshot.history,
                "actors": snapshot.actors,
            });
            let text = serde_json::to_string_pretty(&document)?;
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("exported to {}", path.display());
        }
        let screen = render(&snapshot);
        if options.once || options.export.is_some() {
            print!("{screen}");
            return Ok(());
        }
        // Clear the terminal and draw from the top.
        print!("\x1b[2J\x1b[H{screen}");
        tokio::time::sleep(options.refresh).await;
    }
}

async fn fetch(client: &awc::Client, options: &Options) -> anyhow::Result<Snapshot> {
    let get = |path: &'static str| {
        let url = format!("{}{path}", options.url.trim_end_matches('/'));
        let mut request = client.get(url.clone());
        if !options.token.is_empty() {
            request = request.bearer_auth(&options.token);
        }
        async move {
            let mut response = request
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
            let status = response.status();
            let body = response
                .body()
                .limit(16 * 1024 * 1024)
                .await
                .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            if status.as_u16() == 401 {
                bail!("{url}: 401; set ADMIN_HTTP_TOKEN to the daemon's token");
            }
            if !status.is_success() {
                bail!("{url}: HTTP {status}");
            }
            serde_json::from_slice::<Value>(&body).with_context(|| format!("{url}: not JSON"))
        }
    };
    let (status, history, actors) = tokio::join!(
        get("/performance/status"),
        get("/performance/history"),
        get("/actors")
    );
    Ok(Snapshot {
        status: status?,
        history: history?,
        actors: actors?,
    })
}

fn render(snapshot: &Snapshot) -> String {
    let status = &snapshot.status;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "actorbot: {}   up {} s",
        status["status"].as_str().unwrap_or("?"),
        status["uptime_s"]
    );
    let current = &status["current"];
    if current.is_object() {
        let f = |key: &str| current[key].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "updates {:.1}/s   replies {:.1}/s   latency p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms",
            f("updates_per_s"),
            f("replies_per_s"),
            f("latency_p50_ms"),
            f("latency_p95_ms"),
            f("latency_p99_ms")
        );
        let _ = writeln!(
            out,
            "queues {}   user actors {}   restarts {}   errors {}   RSS {:.0} MB   CPU {:.0}%",
            current["queue_depth"],
            current["user_actors"],
            current["restarts"],
            current["errors"],
            f("rss_bytes") / 1_048_576.0,
            f("cpu_percent")
        );
    }
    let samples = snapshot.history["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rates: Vec<f64> = samples
        .iter()
        .map(|s| s["updates_per_s"].as_f64().unwrap_or(0.0))
        .collect();
    let _ = writeln!(
        out,
        "updates/s over {} samples: {}",
        rates.len(),
        sparkline(&rates, 60)
    );
    out.push_str("\ndependencies:\n");
    if let Some(deps) = status["dependencies"].as_object() {
        for (name, dep) in deps {
            let _ = writeln!(
                out,
                "  {name:<12} {:<10} {}",
                dep["health"]["state"].as_str().unwrap_or("?"),
                dep["latency_ms"]
                    .as_f64()
                    .map(|ms| format!("{ms:.1} ms"))
                    .unwrap_or_default()
            );
        }
    }
    out.push_str("\nactors:\n");
    tree(&snapshot.actors, 1, &mut out);
    let alerts = status["alerts"].as_array().cloned().unwrap_or_default();
    if !alerts.is_empty() {
        out.push_str("\nalerts:\n");
        for alert in alerts {
            let _ = writeln!(
                out,
                "  [{}] {}",
                alert["state"].as_str().unwrap_or("?"),
                alert["message"].as_str().unwrap_or("")
            );
        }
    }
    out
}

fn tree(node: &Value, depth: usize, out: &mut String) {
    for child in node["children"].as_array().into_iter().flatten() {
        let state = child["health"]["state"].as_str().unwrap_or("?");
        let marker = if state == "healthy" { " " } else { "!" };
        let mailbox = match child["mailbox"].as_object() {
            Some(m) => format!("{}/{}", m["depth"], m["capacity"]),
            None => "-".into(),
        };
        let reason = child["health"]["reason"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "{marker}{:indent$}{:<20} {:<10} mailbox {:<12} handled {:<8} restarts {} {reason}",
            "",
            child["name"].as_str().unwrap_or("?"),
            state,
            mailbox,
            child["handled"],
            child["restarts"],
            indent = depth * 2
        );
        tree(child, depth + 1, out);
    }
}

/// The last `width` values as a bar per sample.
fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let max = tail.iter().copied().fold(0.0, f64::max);
    tail.iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_figures_tree_and_alerts() {
        let snapshot = Snapshot {
            status: json!({"status": "degraded", "uptime_s": 42,
                "current": {"updates_per_s": 12.5, "replies_per_s": 12.0, "latency_p95_ms": 8.0,
                            "queue_depth": 3, "user_actors": 7, "restarts": 1, "errors": 0,
                            "rss_bytes": 52428800, "cpu_percent": 4.0},
                "dependencies": {"redis": {"health": {"state": "degraded"}, "latency_ms": null}},
                "alerts": [{"state": "firing", "message": "redis is down"}]}),
            history: json!({"samples": [{"updates_per_s": 1.0}, {"updates_per_s": 4.0}]}),
            actors: json!({"name": "actorbot", "children": [
                {"name": "router", "health": {"state": "healthy"}, "handled": 5, "restarts": 0,
                 "mailbox": {"depth": 0, "capacity": 64},
                 "children": [{"name": "sessions", "health": {"state": "degraded", "reason": "full"},
                               "handled": 1, "restarts": 0}]}]}),
        };
        let screen = render(&snapshot);
        assert!(screen.contains("actorbot: degraded"), "{screen}");
        assert!(screen.contains("updates 12.5/s"), "{screen}");
        assert!(screen.contains("RSS 50 MB"), "{screen}");
        assert!(screen.contains("router"), "{screen}");
        assert!(screen.contains("!    sessions"), "{screen}");
        assert!(screen.contains("[firing] redis is down"), "{screen}");
        assert!(screen.contains("▃█"), "{screen}");
    }
}
