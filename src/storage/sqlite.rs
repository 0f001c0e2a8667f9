//! SQLite's connections: the settings each one gets when it opens, and a
//! pool manager that opens them again after the file was found read-only.
//!
//! SQLite opens a file it may not write read-only, without an error, and
//! such a connection stays read-only after the file's permissions are
//! fixed. So when a write fails with "attempt to write a readonly
//! database" the storage calls [`Reopen::reopen`]: every connection opened
//! before is dropped as it comes back to the pool or is next checked out,
//! and the next ones are opened afresh, writable once the file is.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, ManageConnection};
use diesel::sqlite::SqliteConnection;

use super::StorageError;
use crate::config::Config;

/// A pooled SQLite connection, with the generation it was opened in.
pub(super) struct SqliteConn {
    conn: SqliteConnection,
    generation: u64,
}

impl Deref for SqliteConn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl DerefMut for SqliteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// Opens SQLite connections, and drops those of an earlier generation.
pub(super) struct SqliteManager {
    inner: ConnectionManager<SqliteConnection>,
    reopen: Reopen,
}

impl SqliteManager {
    pub(super) fn new(path: &str, reopen: Reopen) -> SqliteManager {
        SqliteManager {
            inner: ConnectionManager::new(path),
            reopen,
        }
    }

    fn stale(&self, conn: &SqliteConn) -> bool {
        conn.generation != self.reopen.generation()
    }
}

impl ManageConnection for SqliteManager {
    type Connection = SqliteConn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<SqliteConn, Self::Error> {
        let generation = self.reopen.generation();
        Ok(SqliteConn {
            conn: self.inner.connect()?,
            generation,
        })
    }

    fn is_valid(&self, conn: &mut SqliteConn) -> Result<(), Self::Error> {
        if self.stale(conn) {
            return Err(diesel::r2d2::Error::QueryError(
                diesel::result::Error::BrokenTransactionManager,
            ));
        }
        self.inner.is_valid(&mut conn.conn)
    }

    fn has_broken(&self, conn: &mut SqliteConn) -> bool {
        self.stale(conn) || self.inner.has_broken(&mut conn.conn)
    }
}

/// The generation of SQLite connections, shared by the pool's manager and
/// the storage.
#[derive(Clone, Default)]
pub(super) struct Reopen(Arc<AtomicU64>);

impl Reopen {
    fn generation(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Connections opened so far are opened again.
    pub(super) fn reopen(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Opens connections again if `err` says the file could not be written.
    pub(super) fn after(&self, err: &StorageError) {
        if err.to_string().contains("readonly database") {
            self.reopen();
        }
    }
}

/// SQLite settings for a daemon with many writers: WAL lets readers run
/// during a write, and a busy timeout waits out a writer instead of failing.
/// `synchronous` is the fsync policy (`SQLITE_SYNCHRONOUS`): with WAL,
/// `FULL` syncs the log at every commit, which is what makes a commit that
/// precedes an offset confirmation survive the machine, not only the
/// process. The group commit pays that once per group.
///
/// `max_pages` is `SQLITE_MAX_SIZE_MB` in pages of the default size: a
/// write that would grow the file past it fails as on a full disk, and
/// pages freed by pruning are used again.
#[derive(Debug, Clone, Copy)]
pub(super) struct SqliteSetup {
    synchronous: &'static str,
    max_pages: Option<u64>,
}

/// SQLite's default page size, which actorbot's files keep.
const SQLITE_PAGE_SIZE: u64 = 4096;

impl SqliteSetup {
    pub(super) fn new(config: &Config) -> SqliteSetup {
        let synchronous = match config.sqlite_synchronous.as_str() {
            "normal" => "NORMAL",
            "extra" => "EXTRA",
            _ => "FULL",
        };
        let max_pages = (config.sqlite_max_size_mb > 0)
            .then(|| config.sqlite_max_size_mb.saturating_mul(1 << 20) / SQLITE_PAGE_SIZE);
        SqliteSetup {
            synchronous,
            max_pages,
        }
    }
}

impl CustomizeConnection<SqliteConn, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConn) -> Result<(), diesel::r2d2::Error> {
        // The busy timeout goes first, so that what follows waits for a
        // writer instead of failing. WAL is set once, when the pool is built.
        let mut setup = format!(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
            self.synchronous
        );
        if let Some(pages) = self.max_pages {
            setup.push_str(&format!(" PRAGMA max_page_count = {pages};"));
        }
        conn.batch_execute(&setup)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}
