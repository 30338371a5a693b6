//! The SQLite `Store`: one file in the data directory, nothing to install.
//!
//! Writes go to one writer thread that owns the only write connection and commits in groups:
//! it takes every job queued while the previous commit ran (and, when writes come fast, may wait
//! a moment for one more: [`CommitWindow`]), applies each inside its own
//! savepoint (a failing job rolls back alone; a send checks everything before it writes, so it
//! needs none: [`Isolation`]), and commits them with one fsync
//! (`synchronous=FULL`, WAL). Each caller hears back only after that commit. This is how
//! acknowledged means durable without one fsync per message.
//!
//! Reads run on eight reader threads, each with its own connection, fed by one queue
//! ([`Readers`]); WAL lets them proceed while the writer commits, each seeing a consistent
//! snapshot.

use super::commit_window::CommitWindow;
use super::schema::MIGRATIONS;
use super::{
    EventColumns, Listener, NewMessage, dm_key, event_select, kind_str, message_select, parse_kind,
    parse_role, presence_rooms, role_str, sql_limit,
};
use async_trait::async_trait;
use natter_core::ports::store::{
    Appended, Change, CommitListener, EventRecord, HistoryPage, Membership, Positions, Store,
    StoreError, TokenId, UserRecord,
};
use natter_protocol::frame::MemberInfo;
use natter_protocol::{
    ClientMsgId, Message, MessageId, Role, RoomId, RoomInfo, RoomKind, RoomSeq, UserId, UserInfo,
};
use rusqlite::{Connection, OptionalExtension, PrepFlags, Row, Statement, params};
use std::cell::RefCell;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Jobs committed together at most; bounds the latency one commit adds to the first job.
const MAX_GROUP: usize = 512;
/// How long the writer may hold a group open for one more write, when writes come that fast.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);
/// Reader threads, each with its own connection; reads beyond them wait in the queue.
const READERS: usize = 8;

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A write. Given the writer's connection, it runs (see [`Isolation`]) and returns its
/// completion (to call with the group's commit result) and whether the transaction is still
/// sound. Given `None`, it answers its caller with an error without running.
type Job = Box<dyn FnOnce(Option<&Writer<'_>>) -> Option<(Completion, bool)> + Send>;

/// The writer's connection, with the statements of the group commit and of a send prepared
/// once. Everything else goes through the statement cache like any connection (`Deref`).
///
/// rusqlite's cache keeps books on every use (it hashes the SQL when a statement is taken and
/// again when it goes back, moves it in its LRU, clears its bindings): that was nearly 8% of the
/// instructions of an acknowledged send, which runs four statements and shares a `BEGIN` and a
/// `COMMIT` with its group (docs/benchmarks.md, "An eleventh machine").
struct Writer<'c> {
    conn: &'c Connection,
    begin: RefCell<Statement<'c>>,
    commit: RefCell<Statement<'c>>,
    send_checks: RefCell<Statement<'c>>,
    advance_seq: RefCell<Statement<'c>>,
    insert_message: RefCell<Statement<'c>>,
    insert_event: RefCell<Statement<'c>>,
}

impl<'c> Writer<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Writer<'c>> {
        // Persistent, as rusqlite's cache prepares too: SQLite then keeps these long-lived
        // statements out of the connection's small lookaside memory.
        let prepare = |sql| {
            conn.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT)
                .map(RefCell::new)
        };
        Ok(Writer {
            conn,
            begin: prepare("BEGIN IMMEDIATE")?,
            commit: prepare("COMMIT")?,
            send_checks: prepare(SEND_CHECKS)?,
            advance_seq: prepare(ADVANCE_SEQ)?,
            insert_message: prepare(
                "INSERT INTO messages (room_id, seq, author_id, client_msg_id, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
            insert_event: prepare(INSERT_EVENT)?,
        })
    }
}

impl Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// How a job's failure is kept from the rest of its group.
#[derive(Clone, Copy)]
enum Isolation {
    /// The job runs inside a savepoint, and a failure rolls back to it.
    Savepoint,
    /// The job makes every check before its first write, so a refusal has changed nothing and
    /// needs no savepoint. A failure after a write (only an I/O error can cause one) poisons the
    /// whole group, whose callers then hear a retryable error. Sends are such jobs: a savepoint
    /// made SQLite copy every page a send touched into a statement journal, and cost two more
    /// statements per send (docs/benchmarks.md).
    ChecksFirst,
}

pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    reader_threads: Mutex<Vec<JoinHandle<()>>>,
    listener: Listener,
}

/// Every statement that runs per request goes through the connection's statement cache, but
/// those the writer prepared once (`Writer`). `Connection::query_row` and `execute` parse their SQL on every call, and under a reconnect
/// storm parsing the token check cost more than running it (docs/benchmarks.md).
trait CachedStatements {
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;

    fn query_all_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>>;

    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl CachedStatements for Connection {
    fn query_row_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn query_all_cached<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        self.prepare_cached(sql)?.query_map(params, f)?.collect()
    }

    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement the stores run (the default 16 would evict and re-parse).
    conn.set_prepared_statement_cache_capacity(64);
    // Keep query plans fixed: otherwise SQLite re-prepares a cached statement each time a new
    // value is bound to a parameter its plan looked at, and every joined select (all history
    // reads, the send path) paid a full parse per run.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // FULL: a commit is on disk before it returns, so an acknowledged message survives a power
    // cut, not only a crash.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if applied >= MIGRATIONS.len() {
        return Ok(());
    }
    // A table rebuild drops the old table, which foreign keys would refuse while rows point at
    // it; they are off for the migrations (it takes effect only outside a transaction) and
    // checked before the commit instead.
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = run_migrations(conn, applied);
    conn.pragma_update(None, "foreign_keys", true)?;
    migrated
}

fn run_migrations(conn: &mut Connection, applied: usize) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    for migration in &MIGRATIONS[applied..] {
        tx.execute_batch(migration)?;
    }
    let broken: Option<String> = tx
        .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
        .optional()?;
    if let Some(table) = broken {
        // Dropping `tx` rolls everything back: the database stays as it was.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            Some(format!("a migration left rows in {table} pointing nowhere")),
        ));
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with_commit_delay(path, DEFAULT_COMMIT_DELAY)
    }

    /// `open`, with the writer waiting up to `commit_delay` for more sends before a commit
    /// ([`CommitWindow`]; zero: never).
    pub fn open_with_commit_delay(
        path: &Path,
        commit_delay: Duration,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = open_connection(path).map_err(unavailable)?;
        migrate(&mut conn).map_err(unavailable)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (prepared, ready) = mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || match Writer::prepare(&conn) {
                Ok(writer) => {
                    let _ = prepared.send(Ok(()));
                    run_writer(&writer, queue, commit_delay);
                }
                Err(error) => {
                    let _ = prepared.send(Err(unavailable(format!(
                        "preparing the SQLite writer's statements: {error}"
                    ))));
                }
            })
            .map_err(unavailable)?;
        let started = ready
            .recv()
            .unwrap_or_else(|_| Err(unavailable("the SQLite writer thread stopped")));
        if let Err(error) = started {
            let _ = handle.join();
            return Err(error);
        }
        let store = SqliteStore {
            jobs: Mutex::new(Some(jobs)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(Readers::default()),
            reader_threads: Mutex::new(Vec::with_capacity(READERS)),
            listener: Listener::default(),
        };
        // Should one reader fail to start, dropping `store` stops the writer and those started.
        for n in 0..READERS {
            let conn = open_connection(path).map_err(unavailable)?;
            let queue = store.readers.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sqlite-reader-{n}"))
                .spawn(move || {
                    if let Err(error) = run_without_wakeup_preemption()
                        && n == 0
                    {
                        tracing::warn!(%error, "SQLite readers keep their scheduling policy");
                    }
                    queue.serve(conn)
                })
                .map_err(unavailable)?;
            store
                .reader_threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(thread);
        }
        Ok(store)
    }

    /// Lets the writer finish every queued job, then stops it and the readers (after the reads
    /// already queued). Later reads and writes fail.
    pub fn shut(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the SQLite writer thread panicked");
        }
        self.readers.close();
        let threads = std::mem::take(
            &mut *self
                .reader_threads
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a SQLite reader thread panicked");
            }
        }
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_then(Isolation::Savepoint, move |writer| f(writer), |_| {})
            .await
    }

    /// Like `write`, and once the group is committed, `committed` sees the job's result on the
    /// writer thread, before the caller does (and before the next group begins).
    async fn write_then<T: Send + 'static>(
        &self,
        isolation: Isolation,
        f: impl FnOnce(&Writer<'_>) -> Result<T, StoreError> + Send + 'static,
        committed: impl FnOnce(&T) + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        let job: Job = Box::new(move |writer| {
            let Some(writer) = writer else {
                let _ = reply.send(Err(StoreError::Unavailable(
                    "the write transaction could not run".into(),
                )));
                return None;
            };
            let run = |sql: &str| writer.execute_cached(sql, []);
            let (outcome, sound) = match isolation {
                Isolation::Savepoint => {
                    let outcome = run("SAVEPOINT job")
                        .map_err(unavailable)
                        .and_then(|_| f(writer));
                    let sound = if outcome.is_err() {
                        run("ROLLBACK TO job").is_ok() && run("RELEASE job").is_ok()
                    } else {
                        run("RELEASE job").is_ok()
                    };
                    (outcome, sound)
                }
                Isolation::ChecksFirst => {
                    let before = writer.total_changes();
                    let outcome = f(writer);
                    let sound = outcome.is_ok() || writer.total_changes() == before;
                    (outcome, sound)
                }
            };
            let completion: Completion = Box::new(move |commit: Result<(), StoreError>| {
                let result = commit.and(outcome);
                if let Ok(value) = &result {
                    committed(value);
                }
                let _ = reply.send(result);
            });
            Some((completion, sound))
        });
        let sent = match self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        result
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, result) = oneshot::channel();
        self.readers.submit(Box::new(move |conn| {
            if reply.is_closed() {
                return; // its caller has gone (a client that hung up mid-handshake)
            }
            let _ = reply.send(match conn {
                Some(conn) => f(conn),
                None => Err(StoreError::Unavailable("the store is closed".into())),
            });
        }));
        result
            .await
            .map_err(|_| StoreError::Unavailable("a reader stopped".into()))?
    }
}

/// A read, given a connection to run on, or `None` when the store is closing.
type ReadJob = Box<dyn FnOnce(Option<&Connection>) + Send>;

/// The read side: [`READERS`] threads, each owning a connection, taking reads from one queue.
///
/// Not a blocking-pool task per read: on a busy core each `spawn_blocking` woke a pool thread
/// while holding the pool's lock, and the two threads took turns on that lock, several context
/// switches per read. A reconnect storm makes four reads per session start (docs/benchmarks.md).
///
/// A burst of reads should cost few context switches, so the queue wakes as few readers as it
/// can: one reader at a time is on its way to the queue, and a reader that takes a job while
/// others wait behind it wakes the next (so a burst spreads over as many readers as it has
/// reads, and over the cores there are). And a woken reader does not preempt the thread that
/// queued the work ([`run_without_wakeup_preemption`]).
#[derive(Default)]
struct Readers {
    queue: Mutex<ReadQueue>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct ReadQueue {
    jobs: std::collections::VecDeque<ReadJob>,
    /// Readers waiting for a job.
    idle: usize,
    /// A reader was woken and has not yet looked at the queue: until one has, a new job wakes
    /// no other. Any reader back from waiting clears it (a spurious wake-up too: it looks at the
    /// queue all the same).
    wake_pending: bool,
    closed: bool,
}

impl ReadQueue {
    /// Whether to wake a reader for the jobs queued (counted as woken if so).
    fn wake_one(&mut self) -> bool {
        let wake = !self.wake_pending && self.idle > 0;
        self.wake_pending |= wake;
        wake
    }
}

impl Readers {
    fn submit(&self, job: ReadJob) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.closed {
            drop(queue);
            return job(None);
        }
        queue.jobs.push_back(job);
        let wake = queue.wake_one();
        // Woken after the lock is released, so that the reader does not wake only to wait for it.
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Runs queued reads on `conn` until the store closes and the queue is empty.
    fn serve(&self, conn: Connection) {
        loop {
            let (job, wake) = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.jobs.pop_front() {
                        let wake = !queue.jobs.is_empty() && queue.wake_one();
                        break (job, wake);
                    }
                    if queue.closed {
                        return;
                    }
                    queue.idle += 1;
                    queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
                    queue.idle -= 1;
                    queue.wake_pending = false;
                }
            };
            if wake {
                self.ready.notify_one();
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&conn))));
            if ran.is_err() {
                // Its caller hears "a reader stopped"; the reader and its connection go on.
                tracing::error!("a read panicked");
            }
            if !conn.is_autocommit() {
                // A read that panicked or failed inside its transaction must not leave it open:
                // the connection would answer from that old snapshot ever after, and hold back
                // checkpoints.
                if let Err(error) = conn.execute_batch("ROLLBACK") {
                    tracing::error!(%error, "a reader could not end a read transaction");
                }
            }
        }
    }

    fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Makes the calling thread `SCHED_BATCH`: woken, it waits for the running thread's slice to end
/// (or for it to block) instead of preempting it. A read queued by the runtime's thread used to
/// preempt it at once, answer that one read, and hand the core back: two context switches a read.
/// Now the runtime goes on serving sockets and queuing reads, and a reader answers them in a run.
/// When the runtime is idle, a reader runs at once as before. A 15,000-client storm on one core:
/// 287,000 context switches before, 90,000 with this alone, 21,000 with the queue's single
/// pending wake-up as well (docs/benchmarks.md).
///
/// A thread the operator started under another policy (`chrt`) keeps it. Without the call
/// (another libc, a sandbox that refuses it) reads are answered all the same, only dearer.
fn run_without_wakeup_preemption() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: reads and changes only the calling thread's policy; `param` outlives the call.
    unsafe {
        if libc::sched_getscheduler(0) == libc::SCHED_OTHER {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn run_writer(writer: &Writer<'_>, queue: mpsc::Receiver<Job>, commit_delay: Duration) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_GROUP);
    let mut window = CommitWindow::new(commit_delay);
    let take_ready = |group: &mut Vec<Job>| {
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = queue.recv() {
        group.push(first);
        take_ready(&mut group);
        if let Some(deadline) = window.open(Instant::now(), group.len()) {
            let next = queue.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            window.waited(next.is_ok());
            if let Ok(job) = next {
                group.push(job);
                take_ready(&mut group);
            }
        }
        window.closed(group.len());
        let begun = writer.begin.borrow_mut().execute([]);
        if let Err(error) = begun {
            tracing::error!(%error, "cannot begin a write transaction");
            for job in group.drain(..) {
                job(None);
            }
            continue;
        }
        // A job whose savepoint could not be undone, or an error after which SQLite rolled the
        // whole transaction back (disk full, I/O error), poisons the group: nothing of it may be
        // committed, and the jobs not yet run are answered without running.
        let mut poisoned = false;
        for job in group.drain(..) {
            if poisoned {
                job(None);
                continue;
            }
            if let Some((completion, sound)) = job(Some(writer)) {
                completions.push(completion);
                poisoned = !sound || writer.is_autocommit();
            }
        }
        let commit = if poisoned {
            if !writer.is_autocommit() {
                let _ = writer.execute_batch("ROLLBACK");
            }
            Err(StoreError::Unavailable(
                "the write transaction was aborted".into(),
            ))
        } else {
            writer
                .commit
                .borrow_mut()
                .execute([])
                .map(|_| ())
                .map_err(unavailable)
        };
        if let Err(error) = &commit {
            if !writer.is_autocommit() {
                let _ = writer.execute_batch("ROLLBACK");
            }
            tracing::error!(%error, "group commit failed; nothing of it was stored");
        }
        for completion in completions.drain(..) {
            completion(commit.clone());
        }
    }
}

// --- row mapping ---

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

macro_rules! user_columns {
    () => {
        "id, username, display_name, is_admin"
    };
}

fn user_record(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        info: UserInfo {
            id: UserId(row.get(0)?),
            username: row.get(1)?,
            display_name: row.get(2)?,
        },
        is_admin: row.get(3)?,
    })
}

fn message_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    let deleted: bool = row.get(10)?;
    Ok(Message {
        id: MessageId(row.get(0)?),
        room_id: RoomId(row.get(1)?),
        seq: RoomSeq(row.get(2)?),
        author: UserInfo {
            id: UserId(row.get(3)?),
            username: row.get(4)?,
            display_name: row.get(5)?,
        },
        client_msg_id: ClientMsgId(row.get(6)?),
        body: if deleted { String::new() } else { row.get(7)? },
        created_at: row.get(8)?,
        edited_at: row.get(9)?,
        deleted,
    })
}

/// Rebuilds one event from its row; message events read the message as it is now.
fn event_row(conn: &Connection, room_id: RoomId, row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    let kind: String = row.get(3)?;
    let message_id: Option<i64> = row.get(4)?;
    let message = match message_id.filter(|_| EventColumns::needs_message(&kind)) {
        Some(id) => Some(conn.query_row_cached(
            concat!(message_select!(), " WHERE m.id = ?1"),
            [id],
            message_row,
        )?),
        None => None,
    };
    let columns = EventColumns {
        seq: RoomSeq(row.get(0)?),
        at: row.get(1)?,
        actor: UserId(row.get(2)?),
        kind,
        message_id,
        message,
        subject: row.get::<_, Option<i64>>(5)?.map(UserId),
        role: row.get::<_, Option<String>>(6)?.map(|r| parse_role(&r)),
        subject_username: row.get(7)?,
        subject_display_name: row.get(8)?,
        room_name: row.get(9)?,
        room_topic: row.get(10)?,
    };
    Ok(columns.into_record(room_id))
}

/// Through the connection's statement cache: parsing the SQL would otherwise cost as much as
/// running it.
fn load_event(conn: &Connection, room_id: RoomId, seq: RoomSeq) -> rusqlite::Result<EventRecord> {
    conn.query_row_cached(
        concat!(event_select!(), " WHERE e.room_id = ?1 AND e.seq = ?2"),
        params![room_id.0, seq.0],
        |row| event_row(conn, room_id, row),
    )
}

fn room_row(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<RoomInfo> {
    let id = RoomId(row.get(0)?);
    let kind = parse_kind(&row.get::<_, String>(1)?);
    let members = match kind {
        RoomKind::Dm | RoomKind::Group => conn.query_all_cached(
            "SELECT u.id, u.username, u.display_name FROM members m
                 JOIN users u ON u.id = m.user_id WHERE m.room_id = ?1 ORDER BY u.id",
            [id.0],
            |row| {
                Ok(UserInfo {
                    id: UserId(row.get(0)?),
                    username: row.get(1)?,
                    display_name: row.get(2)?,
                })
            },
        )?,
        RoomKind::Public | RoomKind::Private => Vec::new(),
    };
    Ok(RoomInfo {
        id,
        kind,
        name: row.get(2)?,
        topic: row.get(3)?,
        last_seq: RoomSeq(row.get(4)?),
        role: row.get::<_, Option<String>>(5)?.map(|r| parse_role(&r)),
        member_count: row.get(6)?,
        members,
        read_seq: RoomSeq(row.get(7)?),
        unread: row.get(8)?,
        mentions: row.get(9)?,
    })
}

/// `?1` is the viewer: `role`, the read position, the unread counts and (column 10) the
/// sequence their membership began at are theirs. A room's messages are found through its
/// events (`room_events` is keyed by room and sequence; `messages` only by id).
macro_rules! room_select {
    () => {
        "SELECT r.id, r.kind, r.name, r.topic, r.last_seq,
        v.role,
        (SELECT COUNT(*) FROM members WHERE room_id = r.id),
        COALESCE(v.read_seq, 0),
        (SELECT COUNT(*) FROM room_events e JOIN messages m ON m.id = e.message_id
            WHERE e.room_id = r.id AND e.seq > v.read_seq AND e.kind = 'message_created'
                AND m.author_id != ?1 AND m.deleted = 0),
        (SELECT COUNT(*) FROM mentions mn JOIN messages m ON m.id = mn.message_id
            WHERE mn.user_id = ?1 AND m.room_id = r.id AND m.seq > v.read_seq AND m.deleted = 0),
        COALESCE(v.joined_seq, 0)
    FROM rooms r
    LEFT JOIN members v ON v.room_id = r.id AND v.user_id = ?1"
    };
}

fn role_of(conn: &Connection, room_id: RoomId, user_id: UserId) -> rusqlite::Result<Option<Role>> {
    conn.query_row_cached(
        "SELECT role FROM members WHERE room_id = ?1 AND user_id = ?2",
        params![room_id.0, user_id.0],
        |row| row.get::<_, String>(0),
    )
    .optional()
    .map(|role| role.map(|r| parse_role(&r)))
}

// --- writes (run on the writer thread, each job as its `Isolation` says) ---

fn db<T>(result: rusqlite::Result<T>) -> Result<T, StoreError> {
    result.map_err(unavailable)
}

/// Advances the room's sequence: the heart of "gapless, per room, assigned in the transaction
/// that stores the change". For every change but a send (whose checks read `last_seq` already
/// and which runs `ADVANCE_SEQ` through the `Writer`'s statement): a job that fails after this rolls back to its savepoint,
/// taking the number back.
fn next_seq(conn: &Connection, room_id: RoomId) -> Result<RoomSeq, StoreError> {
    let read: Option<u64> = db(conn
        .query_row_cached(
            "SELECT last_seq FROM rooms WHERE id = ?1",
            [room_id.0],
            |row| row.get(0),
        )
        .optional())?;
    let read = read.ok_or(StoreError::NotFound("room"))?;
    advance_seq(conn, room_id, RoomSeq(read))
}

/// The one statement that moves a room's sequence, from a `last_seq` read earlier in the same
/// job. Not `UPDATE … RETURNING`: SQLite runs a `RETURNING` through a temporary table, which
/// made it the dearest statement of a send (docs/benchmarks.md, "An eighth machine").
///
/// Nothing can move the sequence between the reading and this on the one writer connection (an
/// earlier job of the group, committed or rolled back to its savepoint, is what the reading
/// saw), so the `last_seq = ?3` condition is a guard: were it ever false, the job would fail
/// before writing (a send: `Isolation::ChecksFirst`) rather than take a number twice. A send
/// that fails after this poisons its whole group, which takes the number back. A send runs the
/// same statement, prepared once, through `advance_seq_with`.
fn advance_seq(conn: &Connection, room_id: RoomId, read: RoomSeq) -> Result<RoomSeq, StoreError> {
    let mut advance = db(conn.prepare_cached(ADVANCE_SEQ))?;
    advance_seq_with(&mut advance, room_id, read)
}

const ADVANCE_SEQ: &str = "UPDATE rooms SET last_seq = ?2 WHERE id = ?1 AND last_seq = ?3";

/// `advance_seq` on a prepared `ADVANCE_SEQ` (a send's, from the `Writer`).
fn advance_seq_with(
    advance: &mut Statement<'_>,
    room_id: RoomId,
    read: RoomSeq,
) -> Result<RoomSeq, StoreError> {
    let next = RoomSeq(read.0 + 1);
    let advanced = db(advance.execute(params![room_id.0, next.0, read.0]))?;
    if advanced == 0 {
        return Err(StoreError::Unavailable(
            "the room's sequence moved during a change".into(),
        ));
    }
    Ok(next)
}

/// What one event row points at.
struct EventRow<'a> {
    kind: &'a str,
    message_id: Option<MessageId>,
    subject: Option<UserId>,
    role: Option<Role>,
}

/// Records the event at `seq` and reads it back as the client will see it.
fn insert_event(
    conn: &Connection,
    room_id: RoomId,
    seq: RoomSeq,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<EventRecord, StoreError> {
    let mut insert = db(conn.prepare_cached(INSERT_EVENT))?;
    insert_event_row(&mut insert, room_id, seq, actor, now, row)?;
    db(load_event(conn, room_id, seq))
}

const INSERT_EVENT: &str = "INSERT INTO room_events
     (room_id, seq, at, actor_id, kind, message_id, subject_id, role)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Records the event at `seq`, with `INSERT_EVENT` (a send's is prepared in the `Writer`).
fn insert_event_row(
    insert: &mut Statement<'_>,
    room_id: RoomId,
    seq: RoomSeq,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<(), StoreError> {
    db(insert.execute(params![
        room_id.0,
        seq.0,
        now,
        actor.0,
        row.kind,
        row.message_id.map(|m| m.0),
        row.subject.map(|s| s.0),
        row.role.map(role_str),
    ]))?;
    Ok(())
}

fn record_event(
    conn: &Connection,
    room_id: RoomId,
    actor: UserId,
    now: i64,
    row: EventRow<'_>,
) -> Result<EventRecord, StoreError> {
    let seq = next_seq(conn, room_id)?;
    insert_event(conn, room_id, seq, actor, now, row)
}

fn live_message(
    conn: &Connection,
    room_id: RoomId,
    message_id: MessageId,
) -> Result<(), StoreError> {
    let found: Option<i64> = db(conn
        .query_row_cached(
            "SELECT id FROM messages WHERE id = ?1 AND room_id = ?2 AND deleted = 0",
            params![message_id.0, room_id.0],
            |row| row.get(0),
        )
        .optional())?;
    found.map(|_| ()).ok_or(StoreError::NotFound("message"))
}

fn require_room(conn: &Connection, room_id: RoomId) -> Result<(), StoreError> {
    let found: Option<i64> = db(conn
        .query_row_cached("SELECT id FROM rooms WHERE id = ?1", [room_id.0], |row| {
            row.get(0)
        })
        .optional())?;
    found.map(|_| ()).ok_or(StoreError::NotFound("room"))
}

fn add_member(
    conn: &Connection,
    room_id: RoomId,
    actor: UserId,
    user_id: UserId,
    role: Role,
    now: i64,
) -> Result<EventRecord, StoreError> {
    require_room(conn, room_id)?;
    if db(role_of(conn, room_id, user_id))?.is_some() {
        return Err(StoreError::Conflict("already a member"));
    }
    let user: Option<i64> = db(conn
        .query_row_cached("SELECT id FROM users WHERE id = ?1", [user_id.0], |row| {
            row.get(0)
        })
        .optional())?;
    if user.is_none() {
        return Err(StoreError::NotFound("user"));
    }
    let record = record_event(
        conn,
        room_id,
        actor,
        now,
        EventRow {
            kind: "member_joined",
            message_id: None,
            subject: Some(user_id),
            role: Some(role),
        },
    )?;
    db(conn.execute_cached(
        "INSERT INTO members (room_id, user_id, role, joined_seq, read_seq, delivered_seq)
         VALUES (?1, ?2, ?3, ?4, ?4, ?4)",
        params![room_id.0, user_id.0, role_str(role), record.seq.0],
    ))?;
    Ok(record)
}

/// Everything a send checks, in one query (the hot path of every send): the room, an earlier
/// send with this id (a retry), the author's membership and how the author is shown. It also
/// reads the room's sequence, which the send then advances.
const SEND_CHECKS: &str =
    "SELECT prior.room_id, prior.seq, m.role, u.username, u.display_name, r.last_seq
     FROM users u
     LEFT JOIN messages prior ON prior.client_msg_id = ?3 AND prior.author_id = u.id
     LEFT JOIN rooms r ON r.id = ?1
     LEFT JOIN members m ON m.room_id = r.id AND m.user_id = u.id
     WHERE u.id = ?2 AND r.id IS NOT NULL";

fn apply_change(
    conn: &Writer<'_>,
    room_id: RoomId,
    actor: UserId,
    change: Change,
    now: i64,
) -> Result<Appended, StoreError> {
    let fresh = |record| {
        Ok(Appended {
            record,
            duplicate: false,
        })
    };
    match change {
        Change::Send {
            client_msg_id,
            body,
            mentions,
        } => {
            // `SEND_CHECKS`, checked in that order, as PostgreSQL does, and all before the first
            // write (`ChecksFirst`).
            type Checks = (
                Option<i64>,
                Option<i64>,
                Option<String>,
                String,
                String,
                u64,
            );
            let found: Option<Checks> = db(conn
                .send_checks
                .borrow_mut()
                .query_row(params![room_id.0, actor.0, client_msg_id.0], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })
                .optional())?;
            let Some((first_room, first_seq, role, username, display_name, last_seq)) = found
            else {
                return Err(StoreError::NotFound("room"));
            };
            if let (Some(first_room), Some(first_seq)) = (first_room, first_seq) {
                if first_room != room_id.0 {
                    return Err(StoreError::Conflict(
                        "this client_msg_id was used for a message to another room",
                    ));
                }
                let record = db(load_event(
                    conn,
                    RoomId(first_room),
                    RoomSeq(first_seq as u64),
                ))?;
                return Ok(Appended {
                    record,
                    duplicate: true,
                });
            }
            if role.is_none() {
                return Err(StoreError::Forbidden("you are not a member of this room"));
            }
            let seq = advance_seq_with(
                &mut conn.advance_seq.borrow_mut(),
                room_id,
                RoomSeq(last_seq),
            )?;
            db(conn.insert_message.borrow_mut().execute(params![
                room_id.0,
                seq.0,
                actor.0,
                client_msg_id.0,
                body,
                now
            ]))?;
            let message_id = MessageId(conn.last_insert_rowid());
            if !mentions.is_empty() {
                let mut mention = db(conn.prepare_cached(
                    "INSERT OR IGNORE INTO mentions (user_id, message_id)
                     SELECT u.id, ?1 FROM users u JOIN members m ON m.user_id = u.id
                     WHERE m.room_id = ?2 AND u.username = ?3 AND u.id != ?4",
                ))?;
                for username in &mentions {
                    db(mention.execute(params![message_id.0, room_id.0, username, actor.0]))?;
                }
            }
            let row = EventRow {
                kind: "message_created",
                message_id: Some(message_id),
                subject: None,
                role: None,
            };
            insert_event_row(
                &mut conn.insert_event.borrow_mut(),
                room_id,
                seq,
                actor,
                now,
                row,
            )?;
            fresh(
                NewMessage {
                    id: message_id,
                    room_id,
                    seq,
                    author: UserInfo {
                        id: actor,
                        username,
                        display_name,
                    },
                    client_msg_id,
                    body,
                    at: now,
                }
                .into_event(),
            )
        }
        Change::Edit { message_id, body } => {
            live_message(conn, room_id, message_id)?;
            db(conn.execute_cached(
                "UPDATE messages SET body = ?1, edited_at = ?2 WHERE id = ?3",
                params![body, now, message_id.0],
            ))?;
            fresh(record_event(
                conn,
                room_id,
                actor,
                now,
                EventRow {
                    kind: "message_edited",
                    message_id: Some(message_id),
                    subject: None,
                    role: None,
                },
            )?)
        }
        Change::Delete { message_id } => {
            live_message(conn, room_id, message_id)?;
            db(conn.execute_cached(
                "UPDATE messages SET body = '', deleted = 1 WHERE id = ?1",
                [message_id.0],
            ))?;
            fresh(record_event(
                conn,
                room_id,
                actor,
                now,
                EventRow {
                    kind: "message_deleted",
                    message_id: Some(message_id),
                    subject: None,
                    role: None,
                },
            )?)
        }
        Change::AddMember { user_id, role, .. } => {
            fresh(add_member(conn, room_id, actor, user_id, role, now)?)
        }
        Change::RemoveMember { user_id, .. } => {
            if db(role_of(conn, room_id, user_id))?.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            db(conn.execute_cached(
                "DELETE FROM members WHERE room_id = ?1 AND user_id = ?2",
                params![room_id.0, user_id.0],
            ))?;
            fresh(record_event(
                conn,
                room_id,
                actor,
                now,
                EventRow {
                    kind: "member_left",
                    message_id: None,
                    subject: Some(user_id),
                    role: None,
                },
            )?)
        }
        Change::UpdateRoom { name, topic } => {
            require_room(conn, room_id)?;
            match conn.execute_cached(
                "UPDATE rooms SET name = ?1, topic = ?2 WHERE id = ?3",
                params![name, topic, room_id.0],
            ) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("a channel with that name exists"));
                }
                other => db(other)?,
            };
            fresh(record_event(
                conn,
                room_id,
                actor,
                now,
                EventRow {
                    kind: "room_updated",
                    message_id: None,
                    subject: None,
                    role: None,
                },
            )?)
        }
        Change::SetRole { user_id, role } => {
            if db(role_of(conn, room_id, user_id))?.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            db(conn.execute_cached(
                "UPDATE members SET role = ?1 WHERE room_id = ?2 AND user_id = ?3",
                params![role_str(role), room_id.0, user_id.0],
            ))?;
            fresh(record_event(
                conn,
                room_id,
                actor,
                now,
                EventRow {
                    kind: "role_changed",
                    message_id: None,
                    subject: Some(user_id),
                    role: Some(role),
                },
            )?)
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<(), StoreError> {
        self.read(|conn| db(conn.query_row_cached("SELECT 1", [], |_| Ok(()))))
            .await
    }

    fn close(&self) {
        self.shut();
    }

    async fn create_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
        only_if_first: bool,
    ) -> Result<UserRecord, StoreError> {
        let (username, display_name, password_hash) = (
            username.to_owned(),
            display_name.to_owned(),
            password_hash.to_owned(),
        );
        self.write(move |conn| {
            let existing: i64 =
                db(conn.query_row_cached("SELECT COUNT(*) FROM users", [], |r| r.get(0)))?;
            if only_if_first && existing > 0 {
                return Err(StoreError::RegistrationClosed);
            }
            let is_admin = existing == 0;
            match conn.execute_cached(
                "INSERT INTO users (username, display_name, password_hash, is_admin, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    username,
                    display_name,
                    password_hash,
                    is_admin,
                    natter_core::now_ms()
                ],
            ) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("that username is taken"));
                }
                other => db(other)?,
            };
            Ok(UserRecord {
                info: UserInfo {
                    id: UserId(conn.last_insert_rowid()),
                    username,
                    display_name,
                },
                is_admin,
            })
        })
        .await
    }

    async fn credentials(
        &self,
        username: &str,
    ) -> Result<Option<(UserRecord, String)>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            db(conn
                .query_row_cached(
                    concat!(
                        "SELECT ",
                        user_columns!(),
                        ", password_hash FROM users WHERE username = ?1"
                    ),
                    [username],
                    |row| Ok((user_record(row)?, row.get(4)?)),
                )
                .optional())
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            db(conn
                .query_row_cached(
                    concat!(
                        "SELECT ",
                        user_columns!(),
                        " FROM users WHERE username = ?1"
                    ),
                    [username],
                    user_record,
                )
                .optional())
        })
        .await
    }

    async fn insert_token(
        &self,
        token: TokenId,
        user_id: UserId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            db(conn.execute_cached(
                "INSERT INTO tokens (hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&token.0[..], user_id.0, natter_core::now_ms(), expires_at],
            ))
            .map(|_| ())
        })
        .await
    }

    async fn user_by_token(
        &self,
        token: TokenId,
        now: i64,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |conn| {
            db(conn
                .query_row_cached(
                    "SELECT u.id, u.username, u.display_name, u.is_admin
                     FROM tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.hash = ?1 AND t.expires_at > ?2",
                    params![&token.0[..], now],
                    user_record,
                )
                .optional())
        })
        .await
    }

    async fn revoke_token(&self, token: TokenId) -> Result<bool, StoreError> {
        self.write(move |conn| {
            db(conn.execute_cached("DELETE FROM tokens WHERE hash = ?1", [&token.0[..]]))
                .map(|n| n > 0)
        })
        .await
    }

    async fn create_channel(
        &self,
        owner: UserId,
        kind: RoomKind,
        name: &str,
        topic: &str,
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError> {
        let (name, topic) = (name.to_owned(), topic.to_owned());
        self.write(move |conn| {
            match conn.execute_cached(
                "INSERT INTO rooms (kind, name, topic, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![kind_str(kind), name, topic, now],
            ) {
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("a channel with that name exists"));
                }
                other => db(other)?,
            };
            let room_id = RoomId(conn.last_insert_rowid());
            let record = add_member(conn, room_id, owner, owner, Role::Owner, now)?;
            Ok((room_id, vec![record]))
        })
        .await
    }

    async fn open_dm(
        &self,
        creator: UserId,
        members: &[UserId],
        now: i64,
    ) -> Result<(RoomId, Vec<EventRecord>), StoreError> {
        let members = members.to_vec();
        self.write(move |conn| {
            let (key, kind) = dm_key(&members);
            let existing: Option<i64> = db(conn
                .query_row_cached("SELECT id FROM rooms WHERE dm_key = ?1", [&key], |r| r.get(0))
                .optional())?;
            if let Some(id) = existing {
                return Ok((RoomId(id), Vec::new()));
            }
            db(conn.execute_cached(
                "INSERT INTO rooms (kind, name, topic, dm_key, created_at) VALUES (?1, '', '', ?2, ?3)",
                params![kind_str(kind), key, now],
            ))?;
            let room_id = RoomId(conn.last_insert_rowid());
            let mut events = Vec::with_capacity(members.len());
            // The creator first, so the room's first event is theirs.
            let ordered = std::iter::once(creator).chain(members.iter().copied().filter(|m| *m != creator));
            for member in ordered {
                events.push(add_member(conn, room_id, creator, member, Role::Member, now)?);
            }
            Ok((room_id, events))
        })
        .await
    }

    fn keeps_submission_order(&self) -> bool {
        // `write` queues the job before its first await, and one thread runs the queue in order.
        true
    }

    fn listen(&self, listener: CommitListener) {
        self.listener.set(listener);
    }

    async fn append(
        &self,
        room_id: RoomId,
        actor: UserId,
        change: Change,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let listener = self.listener.clone();
        let heard = move |appended: &Appended| listener.hear(appended);
        let isolation = match change {
            Change::Send { .. } => Isolation::ChecksFirst,
            _ => Isolation::Savepoint,
        };
        self.write_then(
            isolation,
            move |conn| apply_change(conn, room_id, actor, change, now),
            heard,
        )
        .await
    }

    async fn room(&self, room_id: RoomId, viewer: UserId) -> Result<Option<RoomInfo>, StoreError> {
        self.read(move |conn| {
            db(conn
                .query_row_cached(
                    concat!(room_select!(), " WHERE r.id = ?2"),
                    params![viewer.0, room_id.0],
                    |row| room_row(conn, row),
                )
                .optional())
        })
        .await
    }

    async fn role_of(&self, room_id: RoomId, user_id: UserId) -> Result<Option<Role>, StoreError> {
        self.read(move |conn| db(role_of(conn, room_id, user_id)))
            .await
    }

    async fn rooms_of(&self, user_id: UserId) -> Result<Vec<Membership>, StoreError> {
        self.read(move |conn| {
            // One read transaction: every last_seq comes from the same snapshot. Should the
            // query fail, the reader ends the transaction (`Readers::serve`).
            db(conn.execute_cached("BEGIN", []))?;
            let memberships = db(conn.query_all_cached(
                concat!(room_select!(), " WHERE v.user_id = ?1 ORDER BY r.id"),
                [user_id.0],
                |row| {
                    Ok(Membership {
                        room: room_row(conn, row)?,
                        joined_seq: RoomSeq(row.get(10)?),
                    })
                },
            ))?;
            db(conn.execute_cached("COMMIT", []))?;
            Ok(memberships)
        })
        .await
    }

    async fn public_rooms(&self, viewer: UserId) -> Result<Vec<RoomInfo>, StoreError> {
        self.read(move |conn| {
            db(conn.query_all_cached(
                concat!(
                    room_select!(),
                    " WHERE r.kind = 'public' ORDER BY r.name COLLATE NOCASE"
                ),
                [viewer.0],
                |row| room_row(conn, row),
            ))
        })
        .await
    }

    async fn members(&self, room_id: RoomId) -> Result<Vec<MemberInfo>, StoreError> {
        self.read(move |conn| {
            db(conn.query_all_cached(
                "SELECT u.id, u.username, u.display_name, m.role, m.delivered_seq, m.read_seq
                 FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 ORDER BY u.username",
                [room_id.0],
                |row| {
                    Ok(MemberInfo {
                        user: UserInfo {
                            id: UserId(row.get(0)?),
                            username: row.get(1)?,
                            display_name: row.get(2)?,
                        },
                        role: parse_role(&row.get::<_, String>(3)?),
                        delivered_seq: RoomSeq(row.get(4)?),
                        read_seq: RoomSeq(row.get(5)?),
                    })
                },
            ))
        })
        .await
    }

    async fn advance_receipt(
        &self,
        room_id: RoomId,
        user_id: UserId,
        delivered: Option<RoomSeq>,
        read: Option<RoomSeq>,
    ) -> Result<Positions, StoreError> {
        self.write(move |conn| {
            let current: Option<(u64, u64, u64)> = db(conn
                .query_row_cached(
                    "SELECT m.delivered_seq, m.read_seq, r.last_seq FROM members m
                     JOIN rooms r ON r.id = m.room_id WHERE m.room_id = ?1 AND m.user_id = ?2",
                    params![room_id.0, user_id.0],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional())?;
            let (delivered_now, read_now, last) = current.ok_or(StoreError::NotFound("member"))?;
            let read_next = read.map_or(read_now, |r| r.0.min(last)).max(read_now);
            let delivered_next = delivered
                .map_or(delivered_now, |d| d.0.min(last))
                .max(delivered_now)
                .max(read_next);
            let moved = (delivered_next, read_next) != (delivered_now, read_now);
            if !moved {
                return Ok(Positions { delivered: RoomSeq(delivered_now), read: RoomSeq(read_now), moved });
            }
            db(conn.execute_cached(
                "UPDATE members SET delivered_seq = ?1, read_seq = ?2 WHERE room_id = ?3 AND user_id = ?4",
                params![delivered_next, read_next, room_id.0, user_id.0],
            ))?;
            Ok(Positions { delivered: RoomSeq(delivered_next), read: RoomSeq(read_next), moved })
        })
        .await
    }

    async fn contacts(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<(UserId, Option<i64>)>, StoreError> {
        self.read(move |conn| {
            db(conn.query_all_cached(
                concat!(
                    "SELECT DISTINCT u.id, u.last_seen_at FROM members theirs
                     JOIN users u ON u.id = theirs.user_id
                     WHERE theirs.user_id != ?1 AND theirs.room_id IN (",
                    presence_rooms!("?1", "?2"),
                    ")"
                ),
                params![user_id.0, sql_limit(room_limit)],
                |row| Ok((UserId(row.get(0)?), row.get(1)?)),
            ))
        })
        .await
    }

    async fn presence_rooms_of(
        &self,
        user_id: UserId,
        room_limit: usize,
    ) -> Result<Vec<RoomId>, StoreError> {
        self.read(move |conn| {
            db(conn.query_all_cached(
                presence_rooms!("?1", "?2"),
                params![user_id.0, sql_limit(room_limit)],
                |row| Ok(RoomId(row.get(0)?)),
            ))
        })
        .await
    }

    async fn set_last_seen(&self, user_id: UserId, at: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            db(conn.execute_cached(
                "UPDATE users SET last_seen_at = ?1 WHERE id = ?2",
                params![at, user_id.0],
            ))
            .map(|_| ())
        })
        .await
    }

    async fn message(
        &self,
        room_id: RoomId,
        message_id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        self.read(move |conn| {
            db(conn
                .query_row_cached(
                    concat!(message_select!(), " WHERE m.id = ?1 AND m.room_id = ?2"),
                    params![message_id.0, room_id.0],
                    message_row,
                )
                .optional())
        })
        .await
    }

    async fn history(
        &self,
        room_id: RoomId,
        page: HistoryPage,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.read(move |conn| {
            let (filter, order, bound) = match page {
                HistoryPage::Latest => ("", "DESC", 0),
                HistoryPage::Before(seq) => ("AND e.seq < ?3", "DESC", seq.0),
                HistoryPage::After(seq) => ("AND e.seq > ?3", "ASC", seq.0),
            };
            // Through the room's events: `messages` has no index by room and sequence.
            let sql = format!(
                "{} JOIN room_events e ON e.message_id = m.id
                 WHERE e.room_id = ?1 AND e.kind = 'message_created' {filter}
                 ORDER BY e.seq {order} LIMIT ?2",
                message_select!()
            );
            let fetch = limit as i64 + 1;
            let mut messages = db(if filter.is_empty() {
                conn.query_all_cached(&sql, params![room_id.0, fetch], message_row)
            } else {
                conn.query_all_cached(&sql, params![room_id.0, fetch, bound], message_row)
            })?;
            let has_more = messages.len() > limit as usize;
            messages.truncate(limit as usize);
            if order == "DESC" {
                messages.reverse();
            }
            Ok((messages, has_more))
        })
        .await
    }

    async fn events_after(
        &self,
        room_id: RoomId,
        after: RoomSeq,
        until: Option<RoomSeq>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(move |conn| {
            let until = until.map(|u| u.0 as i64).unwrap_or(i64::MAX);
            db(conn.query_all_cached(
                concat!(
                    event_select!(),
                    " WHERE e.room_id = ?1 AND e.seq > ?2 AND e.seq <= ?3
                     ORDER BY e.seq LIMIT ?4"
                ),
                params![room_id.0, after.0, until, limit],
                |row| event_row(conn, room_id, row),
            ))
        })
        .await
    }
}

#[cfg(test)]
mod statement_tests {
    use crate::store::{event_select, message_select};
    use rusqlite::StatementStatus;

    /// The bundled SQLite is built without memory statistics (`.cargo/config.toml`): they take
    /// a global mutex on each of its allocations, about 2% of a closed-loop durable run.
    /// `HAVE_FDATASYNC`, set in the same variable, is not listed in `compile_options`; losing it
    /// would bring back `fsync`, slower and no safer.
    #[test]
    fn the_bundled_sqlite_keeps_no_memory_statistics() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect("compile options");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// Not a timing: a cached statement that SQLite re-prepares on every new parameter value
    /// costs a full parse per run, which is what a profile of the writer showed before QPSG.
    #[test]
    fn joined_selects_are_not_re_prepared_when_their_parameters_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = super::open_connection(&dir.path().join("p.db")).expect("open");
        super::migrate(&mut conn).expect("migrate");
        let event = concat!(event_select!(), " WHERE e.room_id = ?1 AND e.seq = ?2");
        let message = concat!(message_select!(), " WHERE m.id = ?1 AND m.room_id = ?2");
        for sql in [event, message] {
            let mut stmt = conn.prepare(sql).expect("prepare");
            for value in 1..4_i64 {
                let mut rows = stmt.query([value, value + 1]).expect("query");
                while rows.next().expect("step").is_some() {}
            }
            assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    /// A send advances its room from the `last_seq` its checks read. A stale reading must fail
    /// the send and leave the sequence alone, never hand out a number twice.
    #[test]
    fn a_stale_sequence_reading_takes_no_number() {
        use natter_protocol::{RoomId, RoomSeq};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut conn = super::open_connection(&dir.path().join("s.db")).expect("open");
        super::migrate(&mut conn).expect("migrate");
        conn.execute(
            "INSERT INTO rooms (kind, name, topic, last_seq, created_at)
             VALUES ('public', 'general', '', 5, 0)",
            [],
        )
        .expect("room");
        let room = RoomId(conn.last_insert_rowid());
        let last_seq = |conn: &rusqlite::Connection| -> u64 {
            conn.query_row("SELECT last_seq FROM rooms WHERE id = ?1", [room.0], |r| {
                r.get(0)
            })
            .expect("last_seq")
        };
        assert_eq!(
            super::advance_seq(&conn, room, RoomSeq(5)).ok(),
            Some(RoomSeq(6))
        );
        assert_eq!(last_seq(&conn), 6);
        assert!(super::advance_seq(&conn, room, RoomSeq(5)).is_err());
        assert_eq!(last_seq(&conn), 6);
        assert_eq!(super::next_seq(&conn, room).ok(), Some(RoomSeq(7)));
        assert!(super::next_seq(&conn, RoomId(room.0 + 1)).is_err());
    }
}

#[cfg(test)]
mod reader_tests {
    use super::{SqliteStore, db};
    use natter_core::ports::store::{Store, StoreError};

    #[tokio::test]
    async fn reads_queued_when_the_store_shuts_are_answered_and_later_ones_refused() {
        use std::future::Future;
        use std::task::{Context, Poll};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("r.db")).expect("open"));
        // More reads than readers, so that some wait in the queue when it closes. A read is
        // queued when first polled: poll each once by hand before shutting.
        let mut reads: Vec<_> = (0..64_i64)
            .map(|n| {
                Box::pin(store.read(move |conn| {
                    db(conn.query_row("SELECT ?1", [n], |row| row.get::<_, i64>(0)))
                }))
            })
            .collect();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut early = Vec::new();
        for read in &mut reads {
            early.push(match read.as_mut().poll(&mut cx) {
                Poll::Ready(answer) => Some(answer),
                Poll::Pending => None,
            });
        }
        let closing = store.clone();
        tokio::task::spawn_blocking(move || closing.shut())
            .await
            .expect("shut");
        for (n, (read, early)) in reads.into_iter().zip(early).enumerate() {
            let answer = match early {
                Some(answer) => answer,
                None => read.await,
            };
            assert_eq!(answer.expect("answered"), n as i64);
        }
        assert!(matches!(
            store.health().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    /// A submit wakes one reader while another is on its way; the readers must still wake each
    /// other until every one has a read, or a burst would run on one thread.
    #[tokio::test]
    async fn a_burst_of_reads_runs_on_every_reader_at_once() {
        use std::sync::{Arc, Condvar, Mutex};
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("r.db")).expect("open");
        let arrived = Arc::new((Mutex::new(0_usize), Condvar::new()));
        let reads = (0..super::READERS).map(|_| {
            let arrived = arrived.clone();
            store.read(move |_| {
                let (count, all_here) = &*arrived;
                let mut count = count.lock().expect("lock");
                *count += 1;
                all_here.notify_all();
                let (count, timeout) = all_here
                    .wait_timeout_while(count, Duration::from_secs(20), |n| *n < super::READERS)
                    .expect("lock");
                Ok((*count, timeout.timed_out()))
            })
        });
        for answer in futures_util::future::join_all(reads).await {
            let (count, timed_out) = answer.expect("read");
            assert!(
                !timed_out,
                "only {count} of {} readers ran at once",
                super::READERS
            );
        }
    }

    /// A read that leaves its transaction open must not leave its reader on that snapshot.
    #[tokio::test]
    async fn a_read_that_leaves_its_transaction_open_does_not_pin_its_reader_to_a_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("r.db")).expect("open");
        let count_users = |conn: &rusqlite::Connection| {
            db(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get::<_, i64>(0)))
        };
        for _ in 0..16 {
            let left_open = store
                .read(move |conn| {
                    db(conn.execute_batch("BEGIN"))?;
                    count_users(conn)
                })
                .await;
            assert_eq!(left_open.expect("read"), 0);
        }
        store
            .create_user("ana", "Ana", "hash", false)
            .await
            .expect("write");
        for _ in 0..16 {
            assert_eq!(store.read(count_users).await.expect("read"), 1);
        }
    }
}

#[cfg(test)]
mod isolation_tests {
    use super::{Isolation, SqliteStore, db};
    use natter_core::ports::store::{Change, Store, StoreError};
    use natter_protocol::{ClientMsgId, RoomId, RoomKind, RoomSeq};

    async fn usernames(store: &SqliteStore) -> Vec<String> {
        store
            .read(|conn| {
                let mut stmt = db(conn.prepare("SELECT username FROM users ORDER BY username"))?;
                db(stmt
                    .query_map([], |row| row.get(0))
                    .and_then(|rows| rows.collect::<Result<_, _>>()))
            })
            .await
            .expect("rows")
    }

    pub(super) fn insert_user(conn: &rusqlite::Connection, name: &str) -> Result<(), StoreError> {
        db(conn.execute(
            "INSERT INTO users (username, display_name, password_hash, is_admin, created_at)
             VALUES (?1, ?1, 'x', 0, 0)",
            [name],
        ))
        .map(|_| ())
    }

    /// Queues a check-first `job` between two plain writes, all three at once so that they
    /// usually share a group; what the write before, the job and the write after were told.
    async fn between_two_writes(
        store: &SqliteStore,
        job: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> [Result<(), StoreError>; 3] {
        let before = store.write(|conn| insert_user(conn, "before"));
        let job = store.write_then(Isolation::ChecksFirst, move |writer| job(writer), |_| {});
        let after = store.write(|conn| insert_user(conn, "after"));
        let (before, job, after) = tokio::join!(before, job, after);
        [before, job, after]
    }

    #[tokio::test]
    async fn a_check_first_job_that_fails_after_writing_takes_its_group_down_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("natter.db")).expect("open");
        // What an I/O error would do: the job writes, then fails.
        let [before, failing, after] = between_two_writes(&store, |conn| {
            insert_user(conn, "half-done")?;
            Err(StoreError::Unavailable("disk trouble".into()))
        })
        .await;
        assert!(failing.is_err(), "the failing job hears its failure");
        let stored = usernames(&store).await;
        assert!(!stored.contains(&"half-done".to_owned()), "{stored:?}");
        // Whatever else shared its group failed with it; whatever was told "ok" is stored.
        for (name, result) in [("before", before), ("after", after)] {
            assert_eq!(
                result.is_ok(),
                stored.contains(&name.to_owned()),
                "{name}: {stored:?}"
            );
        }
    }

    #[tokio::test]
    async fn after_a_group_is_rolled_back_the_writers_prepared_statements_serve_the_next_send() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("natter.db")).expect("open");
        let ana = store
            .create_user("ana", "Ana", "x", false)
            .await
            .expect("user");
        let ana = ana.info.id;
        let (room, _) = store
            .create_channel(ana, RoomKind::Public, "r", "", 0)
            .await
            .expect("channel");
        let send = |id: &str| Change::Send {
            client_msg_id: ClientMsgId(id.into()),
            body: format!("body of {id}"),
            mentions: vec![],
        };
        let first = store
            .append(room, ana, send("first"), 0)
            .await
            .expect("send");
        // A refusal by the checks, then a group that a job poisons after writing: each leaves
        // the writer's statements as they were, whatever step of theirs failed.
        assert!(matches!(
            store.append(RoomId(999_999), ana, send("nowhere"), 0).await,
            Err(StoreError::NotFound(_))
        ));
        let poisoned = store.write_then(
            Isolation::ChecksFirst,
            |writer| {
                insert_user(writer, "half-done")?;
                Err(StoreError::Unavailable("disk trouble".into()))
            },
            |_: &()| {},
        );
        let (before, poisoned, after) = tokio::join!(
            store.append(room, ana, send("before"), 0),
            poisoned,
            store.append(room, ana, send("after"), 0),
        );
        assert!(poisoned.is_err());
        let stored = [before, after].iter().filter(|sent| sent.is_ok()).count() as u64;
        let next = store
            .append(room, ana, send("next"), 0)
            .await
            .expect("send");
        assert_eq!(next.record.seq, RoomSeq(first.record.seq.0 + stored + 1));
        assert!(!next.duplicate);
        // And a retry is still recognised by the prepared checks.
        let retried = store
            .append(room, ana, send("next"), 0)
            .await
            .expect("retry");
        assert!(retried.duplicate);
        assert_eq!(retried.record.seq, next.record.seq);
    }

    #[tokio::test]
    async fn a_check_first_job_refused_before_writing_leaves_its_group_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("natter.db")).expect("open");
        let [before, refused, after] =
            between_two_writes(&store, |_| Err(StoreError::Forbidden("not a member"))).await;
        assert!(matches!(refused, Err(StoreError::Forbidden(_))));
        assert!(before.is_ok() && after.is_ok());
        assert_eq!(usernames(&store).await, ["after", "before"]);
        store.health().await.expect("the store goes on");
    }
}

#[cfg(test)]
mod commit_window_tests {
    use super::isolation_tests::insert_user;
    use super::{SqliteStore, db};
    use std::sync::Arc;
    use std::time::Duration;

    /// The longest delay the config allows, so that groups are held open as long as possible.
    const HELD: Duration = Duration::from_millis(50);

    fn add_user(
        store: &SqliteStore,
        name: String,
    ) -> impl Future<Output = Result<(), natter_core::ports::store::StoreError>> + '_ {
        store.write(move |conn| insert_user(conn, &name))
    }

    async fn user_count(store: &SqliteStore) -> i64 {
        store
            .read(|conn| db(conn.query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))))
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn with_a_long_commit_delay_writes_sent_together_or_one_by_one_are_all_committed_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            SqliteStore::open_with_commit_delay(&dir.path().join("natter.db"), HELD).expect("open");
        // Together: groups of eight or more, which commit at once.
        let together: Vec<_> = (0..200)
            .map(|n| add_user(&store, format!("t{n}")))
            .collect();
        for result in futures_util::future::join_all(together).await {
            result.expect("stored");
        }
        // One by one, each waiting for its answer: a held group waits for a write that comes
        // only after it, until the wait's deadline.
        for n in 0..20 {
            add_user(&store, format!("s{n}")).await.expect("stored");
        }
        assert_eq!(user_count(&store).await, 220);
    }

    #[tokio::test]
    async fn a_store_shut_while_a_group_is_held_commits_it_and_answers_every_write() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open_with_commit_delay(&dir.path().join("natter.db"), HELD).expect("open"),
        );
        // Writes 10 ms apart, each sent before the last is answered: the writer holds each
        // group open for the next (for up to two gaps, 20 ms), and is holding one at the shut.
        let mut writes = Vec::new();
        for n in 0..12 {
            let store = store.clone();
            writes.push(tokio::spawn(async move {
                add_user(&store, format!("u{n}")).await.is_ok()
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let shutting = store.clone();
        tokio::task::spawn_blocking(move || shutting.shut())
            .await
            .expect("shut");
        let mut acknowledged = 0;
        for write in writes {
            acknowledged += i64::from(write.await.expect("answered"));
        }
        assert_eq!(
            acknowledged, 12,
            "every write queued before the shut is committed"
        );
        drop(store);
        let reopened = SqliteStore::open(&dir.path().join("natter.db")).expect("reopen");
        assert_eq!(user_count(&reopened).await, acknowledged);
    }
}
