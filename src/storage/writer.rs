//! SQLite's writes, committed in groups.
//!
//! SQLite takes one writer at a time, and every commit appends each page
//! it changed to the write-ahead log. A thousand sessions saving an
//! exchange each, one transaction apiece, write the same few pages a
//! thousand times and queue for the lock. Here one thread does all the
//! writing: it takes every write waiting, runs each in a savepoint of its
//! own inside one transaction, and commits once. A write that fails rolls
//! back its savepoint only; its callers hear of their own write only after
//! the commit, so nothing is reported saved that is not.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;

use super::{SqlitePool, StorageError};

/// The most writes one transaction takes.
const MAX_GROUP: usize = 512;

/// A write waiting for its group.
pub(super) trait GroupWrite: Send {
    /// Runs the write in a savepoint of the group's transaction; answers
    /// what to tell its caller once the transaction is over, and the cause
    /// when the failure took the whole transaction with it.
    fn run(self: Box<Self>, conn: &mut SqliteConnection) -> Ran;
    /// The group never started: tells the caller why.
    fn fail(self: Box<Self>, err: StorageError);
}

/// Tells a caller how its write ended, given how the commit went.
pub(super) trait Settle: Send {
    fn settle(self: Box<Self>, commit: Result<(), &StorageError>);
}

/// One write and the channel its caller waits on.
pub(super) struct Pending<T, F> {
    pub work: F,
    pub answer: tokio::sync::oneshot::Sender<Result<T, StorageError>>,
}

struct Answer<T> {
    result: Result<T, StorageError>,
    answer: tokio::sync::oneshot::Sender<Result<T, StorageError>>,
}

/// A write that has run.
pub(super) struct Ran {
    settle: Box<dyn Settle>,
    /// SQLite rolled back the whole transaction, as it may on a full disk:
    /// why, for the writes that will not run.
    lost: Option<Arc<StorageError>>,
}

impl<T, F> GroupWrite for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut SqliteConnection) -> Result<T, StorageError> + Send,
{
    fn run(self: Box<Self>, conn: &mut SqliteConnection) -> Ran {
        let Pending { work, answer } = *self;
        let (result, lost) = match savepoint(conn, work) {
            Ok(value) => (Ok(value), None),
            Err(Failed::Alone(err)) => (Err(err), None),
            Err(Failed::WithTransaction(err)) => {
                let err = Arc::new(err);
                (Err(StorageError::Shared(err.clone())), Some(err))
            }
        };
        Ran {
            settle: Box::new(Answer { result, answer }),
            lost,
        }
    }

    fn fail(self: Box<Self>, err: StorageError) {
        let _ = self.answer.send(Err(err));
    }
}

impl<T: Send> Settle for Answer<T> {
    fn settle(self: Box<Self>, commit: Result<(), &StorageError>) {
        let result = match (self.result, commit) {
            (Ok(value), Ok(())) => Ok(value),
            (Err(err), _) => Err(err),
            (Ok(_), Err(err)) => Err(StorageError::Task(format!(
                "the write was rolled back: {err}"
            ))),
        };
        let _ = self.answer.send(result);
    }
}

/// How a write failed.
enum Failed {
    /// Its savepoint was rolled back; the group goes on.
    Alone(StorageError),
    /// SQLite had already rolled back the whole transaction.
    WithTransaction(StorageError),
}

/// Runs `work` in a savepoint of its own. The savepoint is written here
/// rather than by diesel's nested transaction so that the write's own error
/// is kept when rolling back to the savepoint fails too, which is how a
/// transaction that SQLite rolled back by itself (`SQLITE_FULL`) shows.
fn savepoint<T>(
    conn: &mut SqliteConnection,
    work: impl FnOnce(&mut SqliteConnection) -> Result<T, StorageError>,
) -> Result<T, Failed> {
    conn.batch_execute("SAVEPOINT group_write")
        .map_err(|e| Failed::WithTransaction(e.into()))?;
    match work(conn) {
        Ok(value) => {
            conn.batch_execute("RELEASE group_write")
                .map_err(|e| Failed::WithTransaction(e.into()))?;
            Ok(value)
        }
        Err(err) => match conn.batch_execute("ROLLBACK TO group_write; RELEASE group_write") {
            Ok(()) => Err(Failed::Alone(err)),
            Err(_) => Err(Failed::WithTransaction(err)),
        },
    }
}

/// The handle writes are sent through; the thread stops when it is dropped.
pub(super) struct GroupWriter {
    writes: Sender<Box<dyn GroupWrite>>,
}

impl GroupWriter {
    pub(super) fn start(pool: SqlitePool) -> std::io::Result<GroupWriter> {
        let (writes, queue) = channel();
        std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || write_groups(&pool, &queue))?;
        Ok(GroupWriter { writes })
    }

    pub(super) fn submit(&self, write: Box<dyn GroupWrite>) -> Result<(), StorageError> {
        self.writes
            .send(write)
            .map_err(|_| StorageError::Task("the database writer stopped".into()))
    }
}

fn write_groups(pool: &SqlitePool, queue: &Receiver<Box<dyn GroupWrite>>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        let mut conn = match pool.get() {
            Ok(conn) => conn,
            Err(err) => {
                let message = err.to_string();
                for write in group {
                    write.fail(StorageError::Pool(message.clone()));
                }
                continue;
            }
        };
        // A panicking write loses its own answer (its caller sees a failed
        // task), and the group is rolled back; the thread goes on.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut settles = Vec::with_capacity(group.len());
            let mut waiting = Some(group);
            let commit = conn.immediate_transaction(|conn| {
                let mut writes = waiting.take().into_iter().flatten();
                while let Some(write) = writes.next() {
                    let Ran { settle, lost } = write.run(conn);
                    settles.push(settle);
                    if let Some(cause) = lost {
                        for write in writes {
                            write.fail(StorageError::Shared(cause.clone()));
                        }
                        return Err(StorageError::Shared(cause));
                    }
                }
                Ok::<_, StorageError>(())
            });
            match (waiting, commit) {
                // The transaction could not begin (the file locked by
                // another program, say): no write ran.
                (Some(group), Err(err)) => {
                    let err = Arc::new(err);
                    for write in group {
                        write.fail(StorageError::Shared(err.clone()));
                    }
                }
                (_, commit) => {
                    for settle in settles {
                        settle.settle(commit.as_ref().map(|_| ()));
                    }
                }
            }
        }));
        if outcome.is_err() {
            log::error!("a database write panicked; its group was rolled back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::{Reopen, SqliteManager};
    use super::*;
    use diesel::RunQueryDsl;
    use diesel::connection::Connection;
    use diesel::r2d2::Pool;
    use diesel::sql_types::BigInt;

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }

    /// A fresh WAL database in its own directory, with one table `t`.
    fn table_t(name: &str) -> (std::path::PathBuf, std::path::PathBuf, SqlitePool) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.sqlite3");
        let _ = std::fs::remove_file(&path);
        let pool: SqlitePool = Pool::builder()
            .max_size(2)
            .build(SqliteManager::new(
                &path.to_string_lossy(),
                Reopen::default(),
            ))
            .unwrap();
        pool.get()
            .unwrap()
            .batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (n BIGINT PRIMARY KEY)")
            .unwrap();
        (dir, path, pool)
    }

    #[test]
    fn a_failing_write_rolls_back_alone_and_answers_come_after_the_commit() {
        let (dir, _, pool) = table_t("actorbot-writer");
        let writer = GroupWriter::start(pool.clone()).unwrap();
        // Many writes at once, so that they share groups; one of them
        // breaks the primary key.
        let mut answers = Vec::new();
        for n in 0..200 {
            let (answer, answered) = tokio::sync::oneshot::channel::<Result<i64, StorageError>>();
            let value = if n == 100 { 5 } else { n };
            writer
                .submit(Box::new(Pending {
                    work: move |c: &mut SqliteConnection| {
                        diesel::sql_query(format!("INSERT INTO t VALUES ({value})")).execute(c)?;
                        Ok(value)
                    },
                    answer,
                }))
                .unwrap();
            answers.push(answered);
        }
        let results: Vec<_> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect();
        let failed: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].is_err())
            .collect();
        assert_eq!(failed, [100], "only the duplicate fails");
        // Every answered write is visible to another connection: the
        // answer came after its commit.
        let count: Count = diesel::sql_query("SELECT COUNT(*) AS n FROM t")
            .get_result(&mut **pool.get().unwrap())
            .unwrap();
        assert_eq!(count.n, 199);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_group_that_cannot_begin_answers_every_write_with_the_cause() {
        let (dir, path, pool) = table_t("actorbot-writer-lock");
        // Another program holds the write lock; no busy timeout here, so
        // BEGIN fails at once.
        let mut other = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
        other.batch_execute("BEGIN EXCLUSIVE").unwrap();
        let writer = GroupWriter::start(pool.clone()).unwrap();
        let (answer, answered) = tokio::sync::oneshot::channel::<Result<(), StorageError>>();
        writer
            .submit(Box::new(Pending {
                work: |c: &mut SqliteConnection| {
                    diesel::sql_query("INSERT INTO t VALUES (1)").execute(c)?;
                    Ok(())
                },
                answer,
            }))
            .unwrap();
        let err = answered
            .blocking_recv()
            .expect("the write is answered, not dropped")
            .unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        other.batch_execute("COMMIT").unwrap();
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
