//! `actorbot worker`: the PDF and image pools alone, for another machine.
//!
//! Rendering reports and photo albums is the daemon's CPU-heavy work. In
//! a cluster the jobs are rows of the shared PostgreSQL `jobs` table, and
//! a worker takes them as it has room ([`crate::pdf::claims`]): it renders
//! with the same pools the daemon has, uploads the document with the bot's
//! token and records the job done under its claim. It neither polls
//! Telegram nor routes updates, so any number of workers may run beside
//! the instances of a cluster; one that dies gives its jobs back when
//! their leases end, and one stopped with SIGTERM gives them back at once.
//!
//! Its HTTP endpoint answers `/health` (the pools' figures), `/ready` and
//! `/metrics`, for a container's health check and a scraper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{App, HttpResponse, HttpServer, web};
use actorbot_actors::probe::Probe;
use anyhow::{Context as _, bail};

use crate::config::Config;
use crate::daemon;
use crate::health::memory::MemoryGauge;
use crate::images::ImagePool;
use crate::journal::InFlight;
use crate::metrics;
use crate::pdf::claims::Claimer;
use crate::pdf::jobs::{PdfJobs, ResumeJobs, StopJobs};
use crate::storage::{Storage, now_millis};
use crate::telegram::outbox::{GlobalLimit, Limits, Outbox};
use crate::telegram::{Endpoint, Telegram};

/// How often a worker tells the cluster it is alive (`/health` of the
/// instances lists it).
const HEARTBEAT: Duration = Duration::from_secs(2);

/// What the worker's endpoint reads.
#[derive(Clone)]
struct Shown {
    worker: String,
    pdf: Addr<PdfJobs>,
    images: Addr<ImagePool>,
    started: Instant,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    daemon::install_faults(&config)?;
    if !config.database_is_postgres() {
        bail!(
            "actorbot worker takes its jobs from a cluster's PostgreSQL: set DATABASE_URL=postgres://…"
        );
    }
    let storage = Storage::open_existing(&config)
        .await
        .context("cannot open the database")?;
    log::info!("storage: {}", storage.describe());
    let temp_dir = config.temp_dir();
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create {}", temp_dir.display()))?;
    let endpoint = Endpoint::new(&config)?;
    let me = daemon::authorize(&endpoint.client()).await?;
    let worker = config.instance_name();

    let (tree, gave_up) = daemon::supervision_tree(&config);
    let root = tree.root();
    let limits = Limits::from_config(&config);
    let capacity = limits.capacity;
    let global = GlobalLimit::new(&limits);
    let outbox = tree.start(root, "outbox", &Arbiter::current(), move |_| {
        Outbox::shard(endpoint, limits, global)
    });
    let telegram = Telegram::sharded(vec![outbox], capacity);
    // A worker takes no updates: nothing is in flight but its jobs.
    let memory = MemoryGauge::new(InFlight::default());
    let image_cache = Arc::new(
        daemon::open_cache(
            &config,
            "images",
            Config::secs(config.image_cache_ttl),
            config.image_cache_size,
        )
        .await,
    );
    let documents = Arbiter::new();
    let images = {
        let build = ImagePool::builder(&config, image_cache, memory.clone())
            .context("cannot start the image workers")?;
        tree.start(root, "images", &documents.handle(), move |_| build())
    };
    let pdf = {
        let jobs = PdfJobs::new(
            &config,
            storage.clone(),
            telegram.clone(),
            images.clone(),
            memory,
            Some(Claimer::from_config(&config, worker.clone(), true)),
        )
        .context("cannot start the PDF workers")?;
        tree.start(root, "pdf", &documents.handle(), move |_| jobs)
    };
    actix_rt::spawn(heartbeat(storage.clone(), worker.clone()));

    let shown = Shown {
        worker: worker.clone(),
        pdf: pdf.clone(),
        images: images.clone(),
        started,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(shown.clone()))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route("/metrics", web::get().to(metrics_text))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(config.http_addr)
    .with_context(|| format!("cannot listen on HTTP_ADDR {}", config.http_addr))?;
    let listening = server.addrs().first().copied().unwrap_or(config.http_addr);
    let server = server.run();
    let server_handle = server.handle();
    actix_rt::spawn(server);
    log::info!("HTTP endpoint on http://{listening}");
    if !config.http_addr_file.is_empty() {
        daemon::write_whole(&config.http_addr_file, &listening.to_string())
            .with_context(|| format!("cannot write HTTP_ADDR_FILE {}", config.http_addr_file))?;
    }

    pdf.send(ResumeJobs).await.context("the PDF jobs actor")?;
    log::info!(
        "worker {worker} takes PDF and photo jobs for @{} ({} PDF workers, a claim lasts {} s)",
        me.username.unwrap_or_default(),
        config.pdf_semaphore_limit,
        config.job_lease
    );

    tokio::select! {
        signal = daemon::wait_for_signal() => log::info!("{signal} received, shutting down"),
        () = gave_up.notified() => log::error!("supervision gave up; shutting down"),
    }
    tree.stop();
    let deadline = Instant::now() + config.shutdown_timeout();
    // Nothing new is sent; what was claimed and not delivered is given back.
    let _ = tokio::time::timeout_at(deadline.into(), pdf.send(StopJobs { deadline })).await;
    let _ = tokio::time::timeout_at(deadline.into(), telegram.drained()).await;
    server_handle.stop(true).await;
    documents.stop();
    log::info!("shutdown complete");
    Ok(())
}

/// Records the worker in the cluster's instances every [`HEARTBEAT`].
async fn heartbeat(storage: Storage, worker: String) {
    let since = now_millis();
    let mut failing = false;
    loop {
        match storage.instance_heartbeat(&worker, "worker", since).await {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                log::warn!("could not record the worker's heartbeat: {err}");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

async fn health(shown: web::Data<Shown>) -> HttpResponse {
    let (pdf, images) = (shown.pdf.send(Probe).await, shown.images.send(Probe).await);
    let status = if pdf.is_ok() && images.is_ok() {
        "ok"
    } else {
        "unhealthy"
    };
    let body = serde_json::json!({
        "status": status,
        "role": "worker",
        "instance": shown.worker,
        "uptime_seconds": shown.started.elapsed().as_secs(),
        "pdf": pdf.ok(),
        "images": images.ok(),
    });
    if status == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn ready(shown: web::Data<Shown>) -> HttpResponse {
    match shown.pdf.send(Probe).await {
        Ok(_) => HttpResponse::Ok().body("ready\n"),
        Err(_) => HttpResponse::ServiceUnavailable().body("the PDF jobs actor does not answer\n"),
    }
}

async fn metrics_text() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics::render())
}
