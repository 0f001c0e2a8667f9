//! Storage: diesel over an r2d2 pool, SQLite embedded or PostgreSQL.
//!
//! One schema serves both backends (`migrations/`, applied at every start
//! and by `actorbot migrate`). Queries are written once with diesel's DSL and
//! compiled for each backend by [`with_conn!`], so the two cannot drift.
//!
//! Every database call blocks, so every public operation here is `async` and
//! runs on the storage's own threads, at most one per pooled connection: an actor
//! awaiting one never stalls its event loop. On SQLite, writes go to one
//! writer thread instead, which commits them in groups ([`writer`]).
//! Errors never carry the database password.

mod models;
mod schema;
mod sqlite;
mod threads;
mod writer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use thiserror::Error;

use models::NewInbox;
pub use models::{InboxRow, JobRow, NewJob, Turn, UserRecord, job_status};
use schema::{ai_turns, inbox, jobs, users};

use crate::config::Config;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How long a caller waits for a free pooled connection.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Inbox rows written by one statement on PostgreSQL: four parameters
/// each, well within the 65,535 it takes.
const INSERT_CHUNK: usize = 1000;

/// Milliseconds since the Unix epoch: how times are stored.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot connect to the {backend} database at {target}: {message}")]
    Connect {
        backend: &'static str,
        target: String,
        message: String,
    },
    #[error("no database connection available: {0}")]
    Pool(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database task failed: {0}")]
    Task(String),
    /// One failure answered to every write of a group.
    #[error(transparent)]
    Shared(Arc<StorageError>),
    /// A cluster's write by an instance that does not hold the leader lease
    /// (any more): refused, so that a deposed leader changes nothing.
    #[error(
        "this instance does not hold the leader lease (fencing token {token}): the write was refused"
    )]
    Fenced { token: i64 },
    #[error("the cluster's lease is kept in PostgreSQL: set DATABASE_URL=postgres://…")]
    ClusterNeedsPostgres,
}

impl From<diesel::r2d2::PoolError> for StorageError {
    fn from(err: diesel::r2d2::PoolError) -> Self {
        StorageError::Pool(err.to_string())
    }
}

type SqlitePool = Pool<sqlite::SqliteManager>;
type PgPool = Pool<ConnectionManager<PgConnection>>;

enum Pools {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever
/// backend is configured; the body is compiled once per backend.
macro_rules! with_conn {
    ($pools:expr, |$conn:ident| $body:expr) => {
        match $pools {
            Pools::Sqlite(pool) => {
                let $conn: &mut SqliteConnection = &mut **pool.get()?;
                $body
            }
            Pools::Postgres(pool) => {
                let $conn: &mut PgConnection = &mut *pool.get()?;
                $body
            }
        }
    };
}

/// A connection of either backend, for work written once for both.
enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// Runs `$body` with `$c` bound to the connection inside a [`Conn`]; the
/// body is compiled once per backend.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
        }
    };
}

/// Marks inbox rows done, on either backend's connection.
macro_rules! mark_done {
    ($conn:expr, $update_ids:expr, $now:expr) => {
        for chunk in $update_ids.chunks(500) {
            diesel::update(inbox::table.filter(inbox::update_id.eq_any(chunk)))
                .set(inbox::done_at.eq($now))
                .execute($conn)?;
        }
    };
}

/// Inserts or replaces one user's record, on either backend's connection.
macro_rules! upsert_user {
    ($conn:expr, $record:expr) => {
        diesel::insert_into(users::table)
            .values($record)
            .on_conflict(users::user_id)
            .do_update()
            .set($record)
            .execute($conn)
    };
}

// Each table's queries in a file of their own, using the macros above.
mod claims;
mod cluster;
mod dead_letters;
mod relay;
mod tables;
pub use claims::ClaimCount;
pub use cluster::{Fence, InstanceRow, LeaseRow};
pub use dead_letters::DeadLetter;
pub use relay::RELAY_CHANNEL;
pub use tables::SAME_UPDATE_WITHIN;

/// The figures of the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolState {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

/// The database, shared by every actor. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    pools: Arc<Pools>,
    threads: Arc<threads::DbThreads>,
    /// SQLite's writes go through one thread, in groups.
    writer: Option<Arc<writer::GroupWriter>>,
    description: Arc<str>,
    writes: Arc<WriteState>,
    /// In a cluster, the leader's token, checked by every write but the
    /// cleanup's purges.
    fence: Option<Arc<Fence>>,
    /// SQLite: opens the connections again after a write found the file
    /// read-only.
    reopen: sqlite::Reopen,
}

/// How the latest write went. A database that answers reads but refuses
/// writes (full, locked by another process, read-only) cannot take
/// updates, and a ping alone would not show it.
#[derive(Default)]
struct WriteState(std::sync::Mutex<Option<WriteFailure>>);

/// Writes have failed since `since`; `error` is the latest failure.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    pub since: Instant,
    pub error: String,
}

impl WriteState {
    fn note<T>(&self, outcome: &Result<T, StorageError>) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(_) => *state = None,
            Err(err) => {
                let since = state.as_ref().map_or_else(Instant::now, |f| f.since);
                *state = Some(WriteFailure {
                    since,
                    error: err.to_string(),
                });
            }
        }
    }
}

/// Where the database is: a SQLite file or a PostgreSQL URL.
enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

fn target(config: &Config) -> Target {
    let url = config.database_url.expose();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Target::Postgres(url.to_string())
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Target::Sqlite(PathBuf::from(path))
    } else if url.is_empty() {
        Target::Sqlite(config.data_dir.join("actorbot.sqlite3"))
    } else {
        Target::Sqlite(PathBuf::from(url))
    }
}

impl Storage {
    /// Connects, applies pending migrations and returns the storage.
    pub async fn open(config: &Config) -> Result<Storage, StorageError> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Storage::open_blocking(&config))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// [`Storage::open`] for callers outside a runtime.
    pub fn open_blocking(config: &Config) -> Result<Storage, StorageError> {
        let storage = Storage::connect(config)?;
        let applied = storage.migrate_blocking()?;
        if !applied.is_empty() {
            log::info!("applied migrations: {}", applied.join(", "));
        }
        Ok(storage)
    }

    /// Opens a database whose schema is up to date, without changing it:
    /// a process that does not own the schema (`actorbot worker`) leaves
    /// the migrations to the daemon and `actorbot migrate`.
    pub async fn open_existing(config: &Config) -> Result<Storage, StorageError> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let storage = Storage::connect(&config)?;
            let pending = with_conn!(&*storage.pools, |conn| conn
                .has_pending_migration(MIGRATIONS)
                .map_err(|e| StorageError::Migration(e.to_string()))?);
            if pending {
                return Err(StorageError::Migration(
                    "the database's schema is older than this program: start the daemon, or run actorbot migrate, first".into(),
                ));
            }
            Ok(storage)
        })
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
    }

    /// Builds the pool without touching the schema.
    fn connect(config: &Config) -> Result<Storage, StorageError> {
        let min = config.db_pool_min_size;
        let max = config.db_pool_max_size.max(1);
        let reopen = sqlite::Reopen::default();
        let (pools, description) = match target(config) {
            Target::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| StorageError::Connect {
                        backend: "sqlite",
                        target: dir.display().to_string(),
                        message: e.to_string(),
                    })?;
                }
                let connect_error = |e: String| StorageError::Connect {
                    backend: "sqlite",
                    target: path.display().to_string(),
                    message: e,
                };
                // WAL is a property of the file: set it once, before several
                // connections open at the same time.
                let mut first = SqliteConnection::establish(&path.to_string_lossy())
                    .map_err(|e| connect_error(e.to_string()))?;
                first
                    .batch_execute("PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;")
                    .map_err(|e| connect_error(e.to_string()))?;
                drop(first);
                let manager = sqlite::SqliteManager::new(&path.to_string_lossy(), reopen.clone());
                let pool = Pool::builder()
                    .min_idle(Some(min.min(max)))
                    .max_size(max)
                    .connection_timeout(CHECKOUT_TIMEOUT)
                    .connection_customizer(Box::new(sqlite::SqliteSetup::new(config)))
                    .build(manager)
                    .map_err(|e| StorageError::Connect {
                        backend: "sqlite",
                        target: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                (Pools::Sqlite(pool), format!("sqlite at {}", path.display()))
            }
            Target::Postgres(url) => {
                let redacted = config.database_url.redacted();
                let manager = ConnectionManager::<PgConnection>::new(url);
                let pool = Pool::builder()
                    .min_idle(Some(min.min(max)))
                    .max_size(max)
                    .connection_timeout(CHECKOUT_TIMEOUT)
                    .build(manager)
                    .map_err(|e| StorageError::Connect {
                        backend: "postgres",
                        target: redacted.clone(),
                        message: e.to_string(),
                    })?;
                (Pools::Postgres(pool), format!("postgres at {redacted}"))
            }
        };
        let writer = match &pools {
            Pools::Sqlite(pool) => Some(Arc::new(
                writer::GroupWriter::start(pool.clone()).map_err(|e| StorageError::Connect {
                    backend: "sqlite",
                    target: description.clone(),
                    message: format!("cannot start the writer thread: {e}"),
                })?,
            )),
            Pools::Postgres(_) => None,
        };
        // PostgreSQL: a thread per connection, since a call mostly waits on
        // the network and more threads would only wait for a connection.
        // SQLite: its reads are this process's own CPU work, so threads
        // beyond twice the cores only queue for them (and each new one
        // opens a connection of its own first).
        let threads = match &pools {
            Pools::Postgres(_) => max as usize,
            Pools::Sqlite(_) => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                (max as usize).min(2 * cores)
            }
        };
        Ok(Storage {
            pools: Arc::new(pools),
            writer,
            threads: Arc::new(threads::DbThreads::new(threads)),
            description: format!("{description}, pool {min}..{max}").into(),
            writes: Arc::default(),
            fence: None,
            reopen,
        })
    }

    /// Applies pending migrations; returns the names of those applied.
    pub fn migrate_blocking(&self) -> Result<Vec<String>, StorageError> {
        let applied = with_conn!(&*self.pools, |conn| conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>());
        Ok(applied)
    }

    /// Which backend, and where (password hidden).
    pub fn describe(&self) -> &str {
        &self.description
    }

    pub fn backend(&self) -> &'static str {
        match &*self.pools {
            Pools::Sqlite(_) => "sqlite",
            Pools::Postgres(_) => "postgres",
        }
    }

    pub fn pool_state(&self) -> PoolState {
        let (state, max) = match &*self.pools {
            Pools::Sqlite(pool) => (pool.state(), pool.max_size()),
            Pools::Postgres(pool) => (pool.state(), pool.max_size()),
        };
        PoolState {
            connections: state.connections,
            idle: state.idle_connections,
            max,
        }
    }

    /// Runs blocking database work off the event loop.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Pools) -> Result<T, StorageError> + Send + 'static,
    {
        let pools = Arc::clone(&self.pools);
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.threads
            .run(Box::new(move || {
                let _ = answer.send(work(&pools));
            }))
            .map_err(|e| StorageError::Task(e.to_string()))?;
        answered
            .await
            .map_err(|_| StorageError::Task("the database call panicked".into()))?
    }

    /// This storage with every write (the purges excepted) fenced by the
    /// cluster's leader token: the daemon sets it before handing the
    /// storage to anyone.
    pub fn fenced(mut self, fence: Arc<Fence>) -> Storage {
        self.fence = Some(fence);
        self
    }

    /// Runs work that writes, in a transaction. On SQLite it joins the
    /// next group commit ([`writer`]); on PostgreSQL it runs on its own,
    /// after the fencing check in a cluster.
    async fn write<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Conn<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let outcome = self.write_once(self.fence.clone(), work).await;
        self.noted(outcome)
    }

    /// A write that any instance of a cluster may make: removing what is
    /// past its retention.
    async fn write_unfenced<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Conn<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let outcome = self.write_once(None, work).await;
        self.noted(outcome)
    }

    /// Records how a write went; one that found the file read-only has
    /// the connections opened again, so that fixing the file's permissions
    /// is enough to write again.
    fn noted<T>(&self, outcome: Result<T, StorageError>) -> Result<T, StorageError> {
        self.writes.note(&outcome);
        if let Err(err) = &outcome {
            self.reopen.after(err);
        }
        outcome
    }

    async fn write_once<T, F>(&self, fence: Option<Arc<Fence>>, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Conn<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let Some(writer) = &self.writer else {
            return self
                .blocking(move |pools| match pools {
                    Pools::Postgres(pool) => pool.get()?.transaction(|c| {
                        if let Some(fence) = &fence {
                            fence.check(c)?;
                        }
                        work(Conn::Postgres(c))
                    }),
                    Pools::Sqlite(pool) => {
                        pool.get()?.immediate_transaction(|c| work(Conn::Sqlite(c)))
                    }
                })
                .await;
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        writer.submit(Box::new(writer::Pending {
            work: move |c: &mut SqliteConnection| work(Conn::Sqlite(c)),
            answer,
        }))?;
        answered
            .await
            .map_err(|_| StorageError::Task("the database write panicked".into()))?
    }

    /// Since when writes fail and why, while they do.
    pub fn failing_writes(&self) -> Option<WriteFailure> {
        self.writes
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<Duration, StorageError> {
        self.blocking(|pools| {
            let started = Instant::now();
            with_conn!(pools, |conn| conn.batch_execute("SELECT 1")?);
            Ok(started.elapsed())
        })
        .await
    }

    // Single rows are read with `get_result`, not `first`: `first` adds
    // `LIMIT ?`, and SQLite re-prepares a statement each time a bound
    // limit is bound again, which made a cached lookup cost a full parse.
}

/// `actorbot migrate`: applies pending migrations; answers where the
/// database is and the names of the migrations applied.
pub fn migrate(config: &Config) -> Result<(String, Vec<String>), StorageError> {
    let storage = Storage::connect(config)?;
    let applied = storage.migrate_blocking()?;
    Ok((storage.describe().to_string(), applied))
}
