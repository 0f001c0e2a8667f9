//! The daemon: builds the actor system, runs it, and shuts it down in order.
//!
//! Start: open the database (migrating it), authorize with getMe (retrying
//! while Telegram is unreachable, giving up at once on a refused token),
//! register the command list, start the outbox, journal, sessions and
//! router, the cleanup scheduler and the HTTP server, then resume the PDF
//! jobs and replay what the inbox holds unfinished, and last intake.
//!
//! In a cluster ([`crate::cluster`]) every instance starts the same way up
//! to the HTTP server, then waits for the leader lease: only the leader
//! resumes PDF jobs, replays the inbox and starts intake. A leader that
//! loses the lease exits at once, writing nothing more.
//!
//! Stop (SIGTERM or SIGINT), all within `shutdown_timeout`: intake first, so
//! nothing new comes in and the last offset is confirmed; the sessions
//! handle what they hold, save their state and stop; the outbox delivers
//! what is queued; the journal writes the last done marks; a cluster's
//! leader gives the lease up, for a standby to take it at once; then the
//! HTTP server stops.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actorbot_actors::fault::{self, Faults};
use actorbot_actors::probe::Probe;
use actorbot_actors::registry::{KeyedRegistry, RegistryConfig};
use actorbot_actors::scheduler::{Schedule, Scheduler};
use actorbot_actors::supervisor::{GiveUp, Intensity, NodeId, Strategy, Tree};
use anyhow::{Context as _, bail};
use tokio::sync::watch;

use crate::ai::{AiPool, Assistant};
use crate::bot::commands;
use crate::cache::Cache;
use crate::cleanup;
use crate::cluster::elector::{Elector, Release};
use crate::cluster::relay::Relay;
use crate::cluster::{LeaseLost, Role};
use crate::config::Config;
use crate::config::live::{Live, Origin};
use crate::health::HealthChecker;
use crate::health::checker::Remotes;
use crate::health::memory::{MemoryGauge, MemoryGuard};
use crate::health::summary::Summary;
use crate::http;
use crate::images::ImagePool;
use crate::intake::polling::{Poller, StopPolling};
use crate::journal::{DoneMarks, Flush, InFlight, Journal};
use crate::pdf::claims::Claimer;
use crate::pdf::jobs::{PdfJobs, ResumeJobs, StopJobs};
use crate::retune;
use crate::router::{Replay, Router, Sessions, StopIntake};
use crate::session::{AdminDeps, Documents, Session, SessionDeps};
use crate::storage::{Fence, Storage};
use crate::telegram::outbox::{GlobalLimit, Limits, Outbox};
use crate::telegram::params::{DeleteWebhookParams, SetMyCommandsParams, SetWebhookParams};
use crate::telegram::update::RawUpdate;
use crate::telegram::{BotApi, Endpoint, Telegram, TelegramError};

/// Fault injection for tests (`FAULT_PANIC`, `FAULT_HOLD`): off unless set.
pub(crate) fn install_faults(config: &Config) -> anyhow::Result<()> {
    let faults = Faults::parse(&config.fault_panic, &config.fault_hold)
        .context("FAULT_PANIC / FAULT_HOLD")?;
    if fault::install(faults) {
        log::warn!(
            "fault injection is on: FAULT_PANIC={:?} FAULT_HOLD={:?}",
            config.fault_panic,
            config.fault_hold
        );
    }
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    run_with(config, None).await
}

/// [`run`], with more routes on the HTTP endpoint (the sandbox's).
pub async fn run_with(config: Config, extra: Option<http::Extra>) -> anyhow::Result<()> {
    let started = Instant::now();
    let live = Live::for_loaded(config.clone());
    install_faults(&config)?;
    let endpoint = Endpoint::new(&config)?;
    if let Some(proxy) = endpoint.proxy() {
        log::info!(
            "the Bot API is reached through the proxy at {}",
            proxy.authority()
        );
    }
    let api = endpoint.client();
    // The database (its migrations) and the Bot API (getMe) at once: the
    // start waits for the slower of the two, not for both in turn.
    // The first to fail ends the start.
    let (storage, me) = tokio::try_join!(
        async {
            Storage::open(&config)
                .await
                .context("cannot open the database")
        },
        authorize(&api)
    )?;
    log::info!("storage: {}", storage.describe());
    // In a cluster every write carries the leader's token: set before the
    // storage is handed to anyone.
    let fence = config
        .cluster
        .then(|| Arc::new(Fence::new(config.instance_name())));
    let storage = match &fence {
        Some(fence) => storage.fenced(fence.clone()),
        None => storage,
    };
    let temp_dir = config.temp_dir();
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create {}", temp_dir.display()))?;

    let username = me.username.clone().unwrap_or_default();
    log::info!(
        "authorized as @{username} (id {}) at {}",
        me.id,
        endpoint.display_url()
    );

    // The command menu is a convenience: registered beside the start, not
    // before it.
    let commands = SetMyCommandsParams::builder()
        .commands(commands::bot_commands())
        .build();
    let menu_api = api.clone();
    actix_rt::spawn(async move {
        if let Err(err) = menu_api.set_my_commands(&commands).await {
            log::warn!("could not register the command list: {err}");
        }
    });

    let (tree, gave_up) = supervision_tree(&config);
    let root = tree.root();
    let cluster = fence.map(|fence| {
        log::info!(
            "cluster: {} stands by for the leader lease (CLUSTER_LEASE_TTL={} s)",
            fence.holder(),
            config.cluster_lease_ttl
        );
        let (elector, roles) = Elector::new(
            storage.clone(),
            fence,
            Config::secs(config.cluster_lease_ttl),
        );
        let elector = tree.start(root, "cluster", &Arbiter::current(), move |_| elector);
        (elector, roles)
    });
    // Sessions run on these arbiters, each with an outbox shard beside
    // them: a session's replies reach the outbox without crossing threads.
    let arbiters: Vec<Arbiter> = (0..config.user_arbiters())
        .map(|_| Arbiter::new())
        .collect();
    // The journal has a thread of its own: done marks are written as soon as
    // replies are delivered, not after the outbox's next turn.
    let journal_arbiter = Arbiter::new();
    let journal_storage = storage.clone();
    let journal = tree.start(root, "journal", &journal_arbiter.handle(), move |_| {
        Journal::new(journal_storage)
    });
    let limits = Limits::from_config(&config);
    let global = GlobalLimit::new(&limits);
    let shard_limits = limits.per_shard(arbiters.len());
    // The shards share nothing a crash could leave in doubt but the global
    // limit, which is a lock's worth of figures: one for one.
    let outbox = tree.supervisor(root, "outbox", Strategy::OneForOne, tree_intensity(&config));
    let shards: Vec<Addr<Outbox>> = arbiters
        .iter()
        .enumerate()
        .map(|(i, arbiter)| {
            let (endpoint, limits, global) =
                (endpoint.clone(), shard_limits.clone(), global.clone());
            tree.start(
                outbox,
                format!("outbox shard {i}"),
                &arbiter.handle(),
                move |_| Outbox::shard(endpoint, limits, global),
            )
        })
        .collect();
    let telegram = Telegram::sharded(shards.clone(), shard_limits.capacity);
    let in_flight = InFlight::default();
    let done_marks = DoneMarks::new(journal.clone(), in_flight.clone());
    let cache = Arc::new(
        open_cache(
            &config,
            "ai",
            Config::secs(config.ai_cache_ttl),
            config.ai_cache_size,
        )
        .await,
    );
    let image_cache = Arc::new(
        open_cache(
            &config,
            "images",
            Config::secs(config.image_cache_ttl),
            config.image_cache_size,
        )
        .await,
    );
    // Images and PDFs share an event loop; their CPU work runs on the
    // pools' own threads.
    let memory = MemoryGauge::new(in_flight.clone());
    let documents_arbiter = Arbiter::new();
    let images = {
        let build = ImagePool::builder(&config, image_cache.clone(), memory.clone())
            .context("cannot start the image workers")?;
        tree.start(root, "images", &documents_arbiter.handle(), move |_| {
            build()
        })
    };
    let pdf = {
        let jobs = PdfJobs::new(
            &config,
            storage.clone(),
            telegram.clone(),
            images.clone(),
            memory.clone(),
            // In a cluster the jobs are claimed from the shared table.
            config
                .cluster
                .then(|| Claimer::from_config(&config, config.instance_name(), config.job_local)),
        )
        .context("cannot start the PDF workers")?;
        tree.start(root, "pdf", &documents_arbiter.handle(), move |_| jobs)
    };
    let ai_arbiter = Arbiter::new();
    let (backend, limits) = retune::ai_settings(&config);
    let ai_pool = {
        let workers: Vec<_> = arbiters.iter().map(Arbiter::handle).collect();
        tree.start(root, "ai", &ai_arbiter.handle(), move |_| {
            AiPool::new(backend, limits, workers)
        })
    };
    let assistant = Assistant::new(ai_pool.clone(), cache.clone(), live.subscribe());
    // Filled in once the health checker runs; admin commands before that
    // are told to wait.
    let admin: Arc<OnceLock<AdminDeps>> = Arc::default();
    let (policy, policy_rx) = watch::channel(Arc::new(retune::policy_of(&config, &username)));
    let deps = Arc::new(SessionDeps {
        storage: storage.clone(),
        telegram: telegram.clone(),
        done: done_marks.clone(),
        policy: policy_rx,
        assistant,
        documents: Documents {
            pdf: pdf.clone(),
            images: images.clone(),
        },
        admins: config.admin_ids.clone(),
        admin: admin.clone(),
    });
    let registry_config = RegistryConfig {
        mailbox_capacity: config.user_mailbox_capacity,
        ..RegistryConfig::new(config.user_state_timeout(), config.max_user_states)
    };
    // A session that panics is restarted in place by its group in the
    // supervision tree: its address and queued updates stay, its record is
    // restored again. Many sessions crashing at once is systemic, and goes
    // past the group's intensity.
    let session_group = tree.group(
        root,
        "sessions",
        Intensity::new(
            config.session_max_restarts,
            Config::secs(config.supervisor_period),
        ),
    );
    let sessions: Sessions = KeyedRegistry::supervised(
        registry_config,
        arbiters.iter().map(Arbiter::handle).collect(),
        &tree,
        session_group,
        move |chat_id: &i64| Session::new(*chat_id, deps.clone()),
    );
    let router_parts = (sessions.clone(), journal.clone(), in_flight);
    let router = tree.start(root, "router", &Arbiter::current(), move |_| {
        Router::new(router_parts.0, router_parts.1, router_parts.2)
    });

    let scheduler = tree.start(root, "scheduler", &Arbiter::current(), |_| Scheduler::new());
    let guard = {
        let guard = MemoryGuard::new(
            live.subscribe(),
            memory.clone(),
            sessions.clone(),
            vec![cache.clone(), image_cache.clone()],
            arbiters
                .iter()
                .chain([&journal_arbiter, &ai_arbiter, &documents_arbiter])
                .map(Arbiter::handle)
                .collect(),
        );
        tree.start(root, "memory", &Arbiter::current(), move |_| guard)
    };
    let cleanup = cleanup::Cleanup {
        config: live.subscribe(),
        storage: storage.clone(),
        caches: vec![cache.clone(), image_cache.clone()],
        sessions: sessions.clone(),
    };
    let schedule = cleanup::schedule(cleanup.clone(), config.cleanup_interval());
    if config.summary_interval > 0.0 {
        let summary = Arc::new(std::sync::Mutex::new(Summary::new()));
        let job = Schedule::every(
            "summary",
            Config::secs(config.summary_interval),
            move || {
                let line = summary.lock().unwrap_or_else(|e| e.into_inner()).take();
                log::info!("{line}");
                std::future::ready(Ok::<_, String>(()))
            },
        );
        if let Err(err) = scheduler.send(job).await {
            log::warn!("could not schedule the performance summary: {err}");
        }
    }
    if let Err(err) = scheduler.send(schedule).await {
        log::warn!("could not schedule the cleanup: {err}");
    }

    let observed = http::Observed {
        telegram: telegram.clone(),
        actors: vec![
            ("router", router.clone().recipient()),
            ("journal", journal.clone().recipient()),
            ("ai", ai_pool.clone().recipient()),
            ("pdf", pdf.clone().recipient()),
            ("images", images.clone().recipient()),
            ("scheduler", scheduler.clone().recipient()),
            ("memory", guard.clone().recipient()),
        ]
        .into_iter()
        .chain(
            cluster
                .as_ref()
                .map(|(elector, _)| ("cluster", elector.clone().recipient())),
        )
        .collect(),
        intake: Default::default(),
        sessions: sessions.clone(),
        storage: storage.clone(),
        cache: cache.clone(),
        started,
        webhook: config
            .webhook_enabled()
            .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false))),
        tree: tree.clone(),
        memory: memory.clone(),
        cluster: cluster.clone(),
    };
    let health = {
        let checker = HealthChecker::new(
            &config,
            observed.clone(),
            telegram.clone(),
            Remotes {
                telegram: endpoint.clone(),
                ai_url: config.ai_api_url.clone(),
                ai_key: config.ai_api_key.expose().to_string(),
            },
        );
        tree.start(root, "health", &Arbiter::current(), move |_| checker)
    };
    let _ = admin.set(AdminDeps {
        health: health.clone(),
        ai_cache: cache.clone(),
        started,
        cleanup: cleanup.clone(),
    });
    // The checker probes the others; the endpoints show it too.
    let mut observed = observed;
    observed.actors.push(("health", health.clone().recipient()));
    actix_rt::spawn(retune::follow(
        live.subscribe(),
        retune::Targets {
            bot_username: username,
            policy,
            shards: shards.clone(),
            global: global.clone(),
            ai: ai_pool.clone(),
            ai_cache: cache.clone(),
            images: images.clone(),
            pdf: pdf.clone(),
            sessions: sessions.clone(),
            health: health.clone(),
            scheduler: scheduler.clone(),
        },
    ));
    actix_rt::spawn(reload_on_hangup(live.clone()));
    let ops = http::ops::Ops {
        health: health.clone(),
        live: live.clone(),
        cleanup,
        undo: Arc::default(),
        stallable: config.debug_endpoints.then(|| journal.clone()),
    };
    let intake_probe = observed.intake.clone();
    let webhook_set = observed.webhook.clone();
    let retry = http::dead_letters::Retry(router.clone().recipient());
    let (server, listening) = http::server(
        &config,
        router.clone().recipient(),
        retry,
        observed,
        ops,
        extra,
    )
    .with_context(|| format!("cannot listen on HTTP_ADDR {}", config.http_addr))?;
    let server_handle = server.handle();
    let server_task = actix_rt::spawn(server);
    log::info!("HTTP endpoint on http://{listening}");
    if !config.http_addr_file.is_empty() {
        write_whole(&config.http_addr_file, &listening.to_string())
            .with_context(|| format!("cannot write HTTP_ADDR_FILE {}", config.http_addr_file))?;
    }
    if !config.http_addr.ip().is_loopback() && config.admin_http_token.is_empty() {
        log::warn!(
            "HTTP_ADDR {} is reachable beyond this host and ADMIN_HTTP_TOKEN is not set: \
             anyone who reaches it can read the figures and the configuration",
            config.http_addr
        );
    }

    // A standby waits here for the lease; SIGTERM ends it as it stands.
    if let Some((_, roles)) = &cluster {
        tokio::select! {
            () = role_reached(roles.clone(), |role| matches!(role, Role::Leader { .. })) => {
                global.start_cautiously();
            }
            signal = wait_for_signal() => {
                log::info!("{signal} received while standing by, shutting down");
                server_handle.stop(true).await;
                return Ok(());
            }
        }
    }
    match pdf.send(ResumeJobs).await {
        Ok(0) => {}
        Ok(resumed) => log::info!("resumed {resumed} PDF jobs of the previous run"),
        Err(err) => log::warn!("could not resume PDF jobs: {err}"),
    }
    replay(&storage, &router).await?;
    if cluster.is_some() && config.webhook_enabled() {
        // Every instance takes deliveries into the inbox; the leader routes.
        let parts = (
            storage.clone(),
            router.clone(),
            config.database_url.expose().to_string(),
        );
        tree.start(root, "relay", &Arbiter::current(), move |_| {
            Relay::new(parts.0, parts.1, parts.2)
        });
    }

    let poller = start_intake(
        &config,
        &api,
        Intake {
            endpoint: endpoint.clone(),
            router: router.clone(),
            memory: memory.clone(),
            webhook_set,
            probe: intake_probe,
        },
        &tree,
        root,
    )
    .await?;

    let deposed = async {
        match &cluster {
            Some((_, roles)) => role_reached(roles.clone(), |role| role == Role::Deposed).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        signal = wait_for_signal() => {
            log::info!("{signal} received, shutting down");
            None
        }
        () = deposed => {
            // Nothing more may be written: stop now, as a crash would, and
            // let the service manager start this instance as a standby.
            return Err(LeaseLost(format!(
                "another instance leads now; exiting with status {}",
                LeaseLost::EXIT_STATUS
            ))
            .into());
        }
        () = gave_up.notified() => {
            let reason = tree.given_up();
            let grace = Config::secs(config.supervisor_exit_grace);
            log::error!(
                "supervision gave up; /health answers 503; shutting down in {}s",
                grace.as_secs_f64()
            );
            tokio::time::sleep(grace).await;
            reason
        }
    };
    // From here actors that stop are stopping on purpose.
    tree.stop();
    Shutdown {
        poller,
        router,
        sessions,
        pdf,
        telegram,
        done_marks,
        journal,
        elector: cluster.map(|(elector, _)| elector),
        server: server_handle,
        server_task,
        arbiters: arbiters
            .into_iter()
            .chain([journal_arbiter, ai_arbiter, documents_arbiter])
            .collect(),
    }
    .run(Instant::now() + config.shutdown_timeout())
    .await;
    log::info!("shutdown complete");
    match ended {
        Some(gave_up) => Err(SupervisionGaveUp(gave_up).into()),
        None => Ok(()),
    }
}

/// What the ordered stop stops, in its order; every stage within one
/// deadline, which a container's stop timeout is set from.
struct Shutdown {
    poller: Option<Addr<Poller>>,
    router: Addr<Router>,
    sessions: Sessions,
    pdf: Addr<PdfJobs>,
    telegram: Telegram,
    done_marks: DoneMarks,
    journal: Addr<Journal>,
    elector: Option<Addr<Elector>>,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    arbiters: Vec<Arbiter>,
}

impl Shutdown {
    async fn run(self, deadline: Instant) {
        // Intake first: nothing new comes in, and the last offset is
        // confirmed.
        if let Some(poller) = &self.poller {
            stage(deadline, poller.send(StopPolling), || {
                "intake was stopping".into()
            })
            .await;
        }
        let _ = self.router.send(StopIntake).await;
        // Every session handles what is in its mailbox, then saves and stops.
        stage(deadline, self.sessions.shutdown(), || {
            "user states were being saved".into()
        })
        .await;
        // PDF jobs send nothing new; the documents under way get their done
        // marks. The rest stay recorded and are resumed at the next start.
        stage(deadline, self.pdf.send(StopJobs { deadline }), || {
            "PDF deliveries were finishing".into()
        })
        .await;
        if !stage(deadline, self.telegram.drained(), || {
            "the outbox was draining".into()
        })
        .await
        {
            let stats = self.telegram.stats().await;
            log::warn!(
                "{} sends were still queued and {} in flight",
                stats.queued,
                stats.in_flight
            );
        }
        let marks = &self.done_marks;
        stage(deadline, marks.all_ended(), || {
            format!("{} replies were undelivered", marks.replies_in_flight())
        })
        .await;
        stage(deadline, self.journal.send(Flush), || {
            "the journal was being written".into()
        })
        .await;
        // After the last write: a standby takes the lease at once.
        if let Some(elector) = &self.elector {
            stage(deadline, elector.send(Release), || {
                "the lease was being released".into()
            })
            .await;
        }
        let server = self.server;
        let task = self.server_task;
        let stopped = async move {
            server.stop(true).await;
            let _ = task.await;
        };
        stage(deadline, stopped, || "the HTTP server was stopping".into()).await;
        for arbiter in self.arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
    }
}

/// Awaits one stage of the stop until `deadline`; past it, logs what was
/// under way and answers false.
async fn stage<F: Future>(deadline: Instant, work: F, under_way: impl FnOnce() -> String) -> bool {
    let done = tokio::time::timeout_at(deadline.into(), work).await.is_ok();
    if !done {
        log::warn!("shutdown deadline reached while {}", under_way());
    }
    done
}

/// The daemon ended because its supervision tree gave up: the process
/// exits with [`SupervisionGaveUp::EXIT_STATUS`], for its service manager
/// to start it afresh.
#[derive(Debug, thiserror::Error)]
#[error("supervision gave up on {} ({})", .0.actor, .0.reason)]
pub struct SupervisionGaveUp(pub GiveUp);

impl SupervisionGaveUp {
    /// EX_SOFTWARE: an internal error, not a configuration one.
    pub const EXIT_STATUS: u8 = 70;
}

fn tree_intensity(config: &Config) -> Intensity {
    Intensity::new(
        config.supervisor_max_restarts,
        Config::secs(config.supervisor_period),
    )
}

/// The supervision tree, one for one at the root, and what tells the
/// daemon that it gave up.
pub(crate) fn supervision_tree(config: &Config) -> (Tree, Arc<tokio::sync::Notify>) {
    let gave_up = Arc::new(tokio::sync::Notify::new());
    let notify = gave_up.clone();
    let tree = Tree::new(
        "actorbot",
        Strategy::OneForOne,
        tree_intensity(config),
        move |gave_up| {
            log::error!(
                "supervision: giving up on {} ({})",
                gave_up.actor,
                gave_up.reason
            );
            notify.notify_one();
        },
    );
    (tree, gave_up)
}

/// The answer cache: Redis when `REDIS_URL` is set and reachable, else in
/// the process.
pub(crate) async fn open_cache(
    config: &Config,
    space: &'static str,
    ttl: Duration,
    capacity: usize,
) -> Cache {
    if config.redis_url.is_empty() {
        log::info!("{space} cache: in-process (REDIS_URL not set)");
        return Cache::local(space, ttl, capacity);
    }
    match Cache::with_redis(space, ttl, capacity, &config.redis_url).await {
        Ok(cache) => {
            log::info!("{space} cache: Redis at {}", config.redis_url.redacted());
            cache
        }
        Err(err) => {
            log::warn!(
                "{space} cache: Redis at {} is unreachable ({err}); using the in-process cache",
                config.redis_url.redacted()
            );
            Cache::local(space, ttl, capacity)
        }
    }
}

/// Writes `text` to `path` whole: to a file beside it, then renamed over
/// it, so that a reader never sees half of it.
pub(crate) fn write_whole(path: &str, text: &str) -> std::io::Result<()> {
    let partial = format!("{path}.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// Routes what the inbox holds but was never finished: updates taken
/// before a crash. They go first, before intake starts.
async fn replay(storage: &Storage, router: &Addr<Router>) -> anyhow::Result<()> {
    let pending = storage
        .inbox_pending()
        .await
        .context("cannot read the inbox")?;
    if pending.is_empty() {
        return Ok(());
    }
    // In a cluster's webhook mode some may wait in the relay too: they are
    // routed here, once, and not by the relay after.
    storage
        .inbox_unrelay(pending.iter().map(|row| row.update_id).collect())
        .await
        .context("cannot clear the relay")?;
    let updates: Vec<RawUpdate> = pending
        .into_iter()
        .filter_map(|row| RawUpdate::from_json(&row.body))
        .collect();
    log::info!(
        "replaying {} updates taken before the last stop and not finished",
        updates.len()
    );
    router
        .send(Replay(updates))
        .await
        .context("the router is unavailable")?
        .context("replay failed")?;
    Ok(())
}

/// What intake is started with.
struct Intake {
    endpoint: Endpoint,
    router: Addr<Router>,
    memory: MemoryGauge,
    /// Set once setWebhook has succeeded, for `/ready`.
    webhook_set: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Where the endpoints find the poller to probe.
    probe: Arc<std::sync::Mutex<Option<Recipient<Probe>>>>,
}

/// Starts intake last: sets the webhook (the HTTP server takes the
/// updates), or deletes any webhook and starts the poller; answers the
/// poller, which the stop stops first.
async fn start_intake(
    config: &Config,
    api: &BotApi,
    intake: Intake,
    tree: &Tree,
    root: NodeId,
) -> anyhow::Result<Option<Addr<Poller>>> {
    if config.webhook_enabled() {
        let params = SetWebhookParams::builder()
            .url(config.webhook_url.clone())
            .secret_token(config.webhook_secret.expose().to_string())
            .max_connections(config.webhook_max_connections)
            .allowed_updates(crate::intake::allowed_updates())
            .build();
        api.set_webhook(&params)
            .await
            .context("setWebhook failed")?;
        if let Some(set) = &intake.webhook_set {
            set.store(true, std::sync::atomic::Ordering::Release);
        }
        log::info!(
            "webhook set: {} (path {})",
            config.webhook_url,
            config.webhook_path
        );
        return Ok(None);
    }
    let params = DeleteWebhookParams::builder()
        .drop_pending_updates(false)
        .build();
    if let Err(err) = api.delete_webhook(&params).await {
        log::warn!("deleteWebhook failed, polling may conflict with a webhook: {err}");
    }
    let Intake {
        endpoint,
        router,
        memory,
        probe,
        ..
    } = intake;
    let sink = router.recipient();
    let (timeout, limit) = (config.polling_timeout, config.polling_limit);
    let poller = tree.start(root, "intake", &Arbiter::current(), move |_| {
        Poller::new(endpoint, sink, timeout, limit, memory)
    });
    if let Ok(mut intake) = probe.lock() {
        *intake = Some(poller.clone().recipient());
    }
    Ok(Some(poller))
}

/// Returns once the cluster role satisfies `reached`.
async fn role_reached(mut roles: watch::Receiver<Role>, reached: impl Fn(Role) -> bool) {
    if roles.wait_for(|role| reached(*role)).await.is_err() {
        // The elector is gone for good: its role cannot change any more.
        std::future::pending::<()>().await;
    }
}

/// getMe until it answers. A refused token ends the start; anything else
/// (no network, Telegram down) is waited out.
pub(crate) async fn authorize(api: &BotApi) -> anyhow::Result<crate::telegram::client::Me> {
    let mut delay = Duration::from_millis(500);
    loop {
        match api.get_me().await {
            Ok(me) => return Ok(me),
            Err(TelegramError::Api {
                error_code: code @ (401 | 404),
                description,
                ..
            }) => bail!("BOT_TOKEN: the Bot API refused the token ({code} {description})"),
            Err(err) => {
                log::warn!("getMe failed, retrying in {}ms: {err}", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// `SIGHUP` re-reads the configuration files, as nginx and PostgreSQL do.
async fn reload_on_hangup(live: Arc<Live>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        log::warn!(
            "cannot listen for SIGHUP: the configuration is re-read only through PUT /config"
        );
        return;
    };
    while hangups.recv().await.is_some() {
        log::info!("SIGHUP received, re-reading the configuration");
        if let Err(err) = live.reload(Origin::Signal) {
            log::error!("configuration not changed (SIGHUP): {err}");
        }
    }
}

pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupt"
        }
    }
}
