//! Group commit: every message write (enqueue, fan-out, acknowledgement) goes through one
//! writer thread that takes what is queued right now, applies it in one transaction and
//! one sync, and only then answers each waiter.
//!
//! Why: with `synchronous=FULL` a commit costs a sync, and a transaction per message made
//! the sync, not the disk's bandwidth, the relay's ceiling. Concurrent senders on all
//! connections now share it. A lone message is never delayed: the writer waits for no
//! timer, it takes the first job and whatever else is already queued (up to
//! [`MAX_BATCH`] jobs or [`MAX_BATCH_BYTES`] of bodies), so under light load a batch is
//! one job.
//!
//! A send may ask to be told its delivery id as soon as it is written into the open
//! transaction ([`Job::Many`]'s `staged`): the writer tells it right before the commit,
//! so the relay can push the message to a connected recipient while the sync runs. Such
//! an id reached a device before it was durable, so it must never name another message:
//! the id sequence jumps by [`ID_GAP`] on every start and after a failed commit.
//!
//! Each job runs inside its own savepoint: a refusal (quota, block, unknown recipient)
//! or any error of one job rolls back that job alone and fails only its waiter; the
//! others commit. Only a failed commit fails the whole batch, and then nobody was told
//! anything was stored.
//!
//! The mailbox counters move once per batch: each job counts what it stores and deletes
//! in a tally of its own, taken into the batch's when its savepoint is released (and
//! dropped with it when it is rolled back); the batch's tally is written right before the
//! commit, in the same transaction (`counters.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Savepoint, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::counters::{self, Tally};
use super::rows::{Stored, enqueue_in, i};
use crate::storage::{Enqueued, Envelope, Quota, StorageError};

/// Most jobs in one transaction.
pub(super) const MAX_BATCH: usize = 256;
/// Most body bytes in one transaction (a batch stops growing once past it).
pub(super) const MAX_BATCH_BYTES: usize = 1 << 20;
/// How far the delivery ids jump on start and after a failed commit: more than the ids
/// one batch can have handed out before its commit.
const ID_GAP: i64 = 16 * MAX_BATCH as i64;
/// Jobs waiting for the writer before a sender waits to queue its own.
const QUEUE: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;
/// Who waits for a message's rows, (device, delivery id) each, before its commit.
type Staged = oneshot::Sender<Vec<(u32, u64)>>;

/// One write, with the waiter to answer after the commit.
pub(super) enum Job {
    /// Several messages for one recipient, all or none ([`Storage::enqueue_many`]).
    ///
    /// [`Storage::enqueue_many`]: crate::storage::Storage::enqueue_many
    /// With `staged`, the rows (device, delivery id) of a stored (not duplicate) single
    /// message are sent there before the commit.
    Many {
        envelopes: Vec<Envelope>,
        quota: Quota,
        staged: Option<Staged>,
        reply: Reply<Vec<Enqueued>>,
    },
    /// One message for several recipients, each on its own.
    Fanout {
        envelopes: Vec<Envelope>,
        quota: Quota,
        reply: Reply<Vec<Result<Enqueued, StorageError>>>,
    },
    /// Acknowledged deliveries of one recipient device, deleted.
    Ack { recipient: String, device: u32, ids: Vec<u64>, reply: Reply<u64> },
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Self::Many { envelopes, .. } | Self::Fanout { envelopes, .. } => {
                envelopes.iter().map(|e| e.copies.body_len()).sum()
            }
            Self::Ack { ids, .. } => ids.len() * 8,
        }
    }
}

/// A job applied (inside the open transaction), waiting for the commit to be answered.
enum Applied {
    Many(Reply<Vec<Enqueued>>, Result<Vec<Enqueued>, StorageError>),
    Fanout(
        Reply<Vec<Result<Enqueued, StorageError>>>,
        Result<Vec<Result<Enqueued, StorageError>>, StorageError>,
    ),
    Ack(Reply<u64>, Result<u64, StorageError>),
}

impl Applied {
    /// Answers the waiter: its own outcome if the batch committed, else the commit's error.
    fn answer(self, committed: &Result<(), String>) {
        fn send<T>(reply: Reply<T>, out: Result<T, StorageError>, committed: &Result<(), String>) {
            let out = match committed {
                Ok(()) => out,
                Err(e) => Err(StorageError::Backend(e.clone())),
            };
            // A waiter that went away (its connection closed) needs no answer.
            let _ = reply.send(out);
        }
        match self {
            Self::Many(r, out) => send(r, out, committed),
            Self::Fanout(r, out) => send(r, out, committed),
            Self::Ack(r, out) => send(r, out, committed),
        }
    }
}

/// The handle the storage keeps: queues jobs, counts the writer's transactions.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread on `conn`; it ends when the last handle is dropped.
    pub(super) fn start(
        conn: Arc<Mutex<Connection>>,
        commit_delay: Duration,
    ) -> Result<Self, StorageError> {
        {
            let c = conn.lock().map_err(|_| StorageError::Backend("lock poisoned".into()))?;
            skip_ids(&c)?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("relay-db-writer".into())
            .spawn(move || run(&conn, rx, &counter, commit_delay))
            .map_err(|e| StorageError::Backend(format!("writer thread: {e}")))?;
        Ok(Self { tx, commits })
    }

    /// Queues `job` (made with a fresh reply channel) and waits for its answer.
    pub(super) async fn submit<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(job(reply))
            .await
            .map_err(|_| StorageError::Backend("storage writer stopped".into()))?;
        answer.await.map_err(|_| StorageError::Backend("storage writer stopped".into()))?
    }

    /// Transactions the writer has committed (or tried to): for tests and metrics.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// The writer thread: a batch per turn until every handle is gone.
fn run(
    conn: &Mutex<Connection>,
    mut rx: mpsc::Receiver<Job>,
    commits: &AtomicU64,
    delay: Duration,
) {
    let mut failed = false;
    while let Some(first) = rx.blocking_recv() {
        // The lock first, then the rest of the queue: whatever queued while the previous
        // batch (or a reader) held the connection joins this batch.
        let Ok(mut c) = conn.lock() else {
            answer_all(vec![refuse(first)], &Err("lock poisoned".into()));
            continue;
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(job) = rx.try_recv() else { break };
            bytes += job.bytes();
            batch.push(job);
        }
        let (applied, committed) = write_batch(&mut c, batch, failed, delay);
        failed = committed.is_err();
        commits.fetch_add(1, Ordering::Relaxed);
        drop(c);
        answer_all(applied, &committed);
    }
}

fn answer_all(applied: Vec<Applied>, committed: &Result<(), String>) {
    for a in applied {
        a.answer(committed);
    }
}

/// A job that never ran (its outcome is replaced by the batch's error when answered).
fn refuse(job: Job) -> Applied {
    fn gone<T>() -> Result<T, StorageError> {
        Err(StorageError::Backend("not applied".into()))
    }
    match job {
        Job::Many { reply, .. } => Applied::Many(reply, gone()),
        Job::Fanout { reply, .. } => Applied::Fanout(reply, gone()),
        Job::Ack { reply, .. } => Applied::Ack(reply, gone()),
    }
}

/// One transaction for the whole batch, one savepoint per job.
/// After a failed commit (`skip`), the ids it may have handed out are skipped first;
/// `delay` is held before the commit (zero but in tests).
fn write_batch(
    c: &mut Connection,
    batch: Vec<Job>,
    skip: bool,
    delay: Duration,
) -> (Vec<Applied>, Result<(), String>) {
    let mut tx = match c.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return (batch.into_iter().map(refuse).collect(), Err(e.to_string())),
    };
    if skip && let Err(e) = skip_ids(&tx) {
        return (batch.into_iter().map(refuse).collect(), Err(e.to_string()));
    }
    // Only ids within one gap of the sequence's start may be told before the commit: a
    // batch of fan-outs can take more ids than the gap, and an id past it could be
    // given again after a crash.
    let first_free = match sequence(&tx) {
        Ok(seq) => seq,
        Err(e) => return (batch.into_iter().map(refuse).collect(), Err(e.to_string())),
    };
    let mut applied = Vec::with_capacity(batch.len());
    let mut staged = Vec::new();
    let mut counts = Tally::default();
    for job in batch {
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                let committed = Err(e.to_string());
                applied.push(refuse(job));
                return (applied, committed);
            }
        };
        applied.push(apply(sp, job, &mut counts, &mut staged));
    }
    // The counters, once per (device mailbox, sender, from a contact) of the batch. If
    // that fails the batch does (nobody was told anything yet).
    if let Err(e) = counts.write(&tx) {
        return (applied, Err(e.to_string()));
    }
    // Written, not yet durable: whoever waits for the id may push the message now. One
    // past the gap is not told (its sender is dropped): it is pushed after the commit.
    for (to, rows) in staged {
        if rows.iter().all(|(_, id)| i(*id) <= first_free.saturating_add(ID_GAP)) {
            let _ = to.send(rows);
        }
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let committed = tx.commit().map_err(|e| e.to_string());
    (applied, committed)
}

/// Applies one job inside its savepoint: kept on success, rolled back on any error; what
/// it changed in the mailbox goes into `counts` if it is kept.
fn apply(
    mut sp: Savepoint<'_>,
    job: Job,
    counts: &mut Tally,
    staged: &mut Vec<(Staged, Vec<(u32, u64)>)>,
) -> Applied {
    /// Dropping a savepoint rolls it back: only a success is released into the batch,
    /// and only then do its counts (`mine`) join the batch's.
    fn keep<T>(
        sp: Savepoint<'_>,
        out: Result<T, StorageError>,
        mine: Tally,
        counts: &mut Tally,
    ) -> Result<T, StorageError> {
        let out = out?;
        sp.commit()?;
        counts.absorb(mine);
        Ok(out)
    }
    match job {
        Job::Many { envelopes, quota, staged: to, reply } => {
            let mut mine = Tally::default();
            let out: Result<Vec<Stored>, _> = envelopes
                .into_iter()
                .map(|e| enqueue_in(&sp, e, quota, &[&*counts], &mut mine))
                .collect();
            let out = keep(sp, out, mine, counts);
            // Only a lone message is pushed ahead of its commit, each of its copies.
            if let (Some(to), Ok([one])) = (to, out.as_deref())
                && !one.rows.is_empty()
            {
                staged.push((to, one.rows.clone()));
            }
            Applied::Many(reply, out.map(|v| v.into_iter().map(|s| s.enqueued).collect()))
        }
        Job::Fanout { envelopes, quota, reply } => {
            let mut mine = Tally::default();
            let out = fanout(&mut sp, envelopes, quota, counts, &mut mine);
            Applied::Fanout(reply, keep(sp, out, mine, counts))
        }
        Job::Ack { recipient, device, ids, reply } => {
            let mut mine = Tally::default();
            let out = counters::delete_delivered(&sp, &recipient, device, &ids, &mut mine);
            Applied::Ack(reply, keep(sp, out, mine, counts))
        }
    }
}

/// Each recipient in a savepoint of its own: a refusal skips that recipient only; a
/// back-end error fails the whole fan-out. Each stored recipient's copies are counted in
/// `mine` (`batch`: the batch's changes before this job).
fn fanout(
    sp: &mut Savepoint<'_>,
    envelopes: Vec<Envelope>,
    quota: Quota,
    batch: &Tally,
    mine: &mut Tally,
) -> Result<Vec<Result<Enqueued, StorageError>>, StorageError> {
    let mut out = Vec::with_capacity(envelopes.len());
    for e in envelopes {
        let one = sp.savepoint()?;
        let mut its = Tally::default();
        match enqueue_in(&one, e, quota, &[batch, &*mine], &mut its) {
            Ok(done) => {
                one.commit()?;
                mine.absorb(its);
                out.push(Ok(done.enqueued));
            }
            Err(StorageError::Backend(e)) => return Err(StorageError::Backend(e)),
            Err(refused) => out.push(Err(refused)),
        }
    }
    Ok(out)
}

/// The mailbox's id sequence: the last id handed out (0 before the first).
fn sequence(c: &Connection) -> Result<i64, StorageError> {
    let seq = c
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'", [], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0))
}

/// Moves the mailbox's id sequence past any id handed out before a crash or a failed
/// commit (AUTOINCREMENT would otherwise give such an id again).
fn skip_ids(c: &Connection) -> Result<(), StorageError> {
    c.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'mailbox', 0
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'mailbox')",
        [],
    )?;
    c.execute("UPDATE sqlite_sequence SET seq = seq + ?1 WHERE name = 'mailbox'", [ID_GAP])?;
    Ok(())
}
