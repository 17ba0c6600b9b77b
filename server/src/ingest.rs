//! The ingest path: connections decode payloads and queue batches; one writer thread takes them
//! in groups, checks them against their sources, appends the accepted rows to the write-ahead
//! log, syncs once per group (group commit), pushes them into the engine and answers each batch.
//!
//! The queue is bounded: when it is full an HTTP request waits up to `--ingest-wait` and is then
//! answered 503 with `Retry-After`, and a WebSocket stops reading frames. The writer in turn
//! waits while the engine has too many rows it has not taken, so a slow engine slows ingest
//! instead of queueing without bound. An acknowledgement is sent only after the rows are on disk.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use tocsin_engine::Engine;
use tocsin_history::History;
use tokio::sync::{mpsc, oneshot};

use crate::catalog_log::Generations;
use crate::memory::Budget;
use crate::metrics::{Metrics, Refusal};
use crate::replicate::Replication;
use crate::timeline::Timeline;
use crate::wal::{Stamp, Wal};

/// The engine may hold this many pushed rows not yet taken by a worker before the writer waits.
const MAX_ENGINE_PENDING: usize = 4_000_000;
/// The rules' followers may hold this many changes not yet taken by the alert manager before the
/// writer waits: an alert storm beyond what the manager takes slows ingest down (clients wait for
/// their acknowledgements, then get 503 from a full queue) instead of growing memory.
const MAX_FOLLOWERS_BEHIND: usize = 500_000;
/// A group commit takes at most this many batches ...
const GROUP_BATCHES: usize = 1024;
/// ... or this many rows.
const GROUP_ROWS: usize = 4_000_000;

/// What happened to a queued batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub accepted: usize,
    /// A forwarded batch this replica already held (see [`Provenance::Peer`]): nothing was done.
    pub duplicate: bool,
    /// Refused rows by payload row number, with the reason.
    pub rejected: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest queue is full; retry later")]
    Full,
    /// The source is gone or the batch does not fit it.
    #[error("{0}")]
    Refused(String),
    /// tocsin could not store or push the rows (e.g. the disk failed); nothing was acknowledged.
    #[error("{0}")]
    Failed(String),
    #[error("tocsin is shutting down")]
    Stopped,
    /// Taking the batch would pass the memory budget (`--memory-limit`); nothing was written.
    #[error("{0}")]
    Memory(String),
    /// With `--ack quorum`: the batch is durable on this replica, but a majority of the replicas
    /// did not confirm it in time (it reaches them when they can talk).
    #[error("{0}")]
    Unconfirmed(String),
}

/// Where a batch comes from.
#[derive(Clone, Debug)]
pub enum Provenance {
    /// Accepted by this replica: from a client (`replicated`: shared with the other replicas)
    /// or from a collector every replica runs, or for tocsin's own relations (not shared).
    Local { replicated: bool },
    /// Accepted by the replica `origin` as its record `seq` at `at` (epoch ms), and forwarded
    /// here. A `seq` this replica already holds is not taken again.
    Peer { origin: Arc<str>, seq: u64, at: i64 },
}

struct Job {
    source: String,
    provenance: Provenance,
    batch: RecordBatch,
    /// Payload row number of each row of `batch`.
    rows: Vec<usize>,
    /// The source's generation the producer started with (its catalog-log sequence number):
    /// rows of a task that outlived its source are refused by a re-created one.
    generation: Option<u64>,
    queued: Instant,
    reply: oneshot::Sender<Result<Outcome, IngestError>>,
}

enum Msg {
    Batch(Job),
    /// A peer's mark (see [`Timeline`]), after the records it sent before it.
    Mark {
        origin: Arc<str>,
        at: u64,
    },
    /// Time to roll and prune WAL segments.
    Maintain,
}

/// How a replica's ingest path takes part in replication.
pub struct Replicas {
    /// With `--ack quorum`, how long a client waits for a majority (else `None`).
    pub quorum: Option<Duration>,
    /// The replicas' shared time: the writer's stamps, the peers' marks.
    pub timeline: Arc<Timeline>,
}

/// The producer side of the ingest queue. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Msg>,
    generations: Generations,
    wait: Duration,
    capacity: usize,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    /// Set when this server is one of several replicas.
    replication: Option<Arc<Replication>>,
}

impl Ingest {
    /// Starts the writer thread over an opened WAL.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        engine: Engine,
        wal: Wal,
        history: Arc<History>,
        generations: Generations,
        metrics: Arc<Metrics>,
        queue: usize,
        wait: Duration,
        budget: Arc<Budget>,
        replicas: Option<Replicas>,
    ) -> Ingest {
        let capacity = queue.max(1);
        let replication = replicas.map(|r| {
            Arc::new(Replication::new(
                wal.last_lsn(),
                wal.marks.clone(),
                r.quorum,
                r.timeline,
            ))
        });
        let shared = replication.clone();
        let lookup = generations.clone();
        let (tx, rx) = mpsc::channel(capacity);
        let ticker = tx.clone();
        let counted = metrics.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                match ticker.try_send(Msg::Maintain) {
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                    _ => continue,
                }
            }
        });
        std::thread::Builder::new()
            .name("tocsin-wal".into())
            .spawn(move || {
                Writer {
                    marks: wal.marks.clone(),
                    engine,
                    wal,
                    history,
                    generations,
                    metrics,
                    replication: shared,
                }
                .run(rx)
            })
            .expect("spawn the WAL writer");
        Ingest {
            tx,
            generations: lookup,
            wait,
            capacity,
            budget,
            metrics: counted,
            replication,
        }
    }

    /// What the writer shares with the links to other replicas (when there are any).
    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.replication.as_ref()
    }

    /// The memory budget batches are checked against.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Batches waiting in the queue.
    pub fn depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues a batch and waits for its outcome. With `patient`, waits for room as long as it
    /// takes (WebSocket connections, collectors); otherwise gives up after the configured wait
    /// with [`IngestError::Full`].
    pub async fn push(
        &self,
        source: &str,
        batch: RecordBatch,
        rows: Vec<usize>,
        patient: bool,
    ) -> Result<Outcome, IngestError> {
        let replicated = !source.starts_with(tocsin_sql::SYSTEM_PREFIX);
        self.push_to(
            source,
            None,
            batch,
            rows,
            patient,
            Provenance::Local { replicated },
        )
        .await
    }

    /// Queues a batch another replica accepted (its record `seq`, accepted at `at`), waiting
    /// for room as long as it takes; the returned future answers its outcome (a batch already
    /// held is answered as a duplicate). Batches of one origin must be queued in order: a `seq`
    /// below one already taken counts as held.
    pub async fn enqueue_forwarded(
        &self,
        origin: Arc<str>,
        seq: u64,
        at: i64,
        source: &str,
        batch: RecordBatch,
    ) -> Result<
        impl std::future::Future<Output = Result<Outcome, IngestError>> + Send + 'static,
        IngestError,
    > {
        let rows = (0..batch.num_rows()).collect();
        self.enqueue(
            source,
            None,
            batch,
            rows,
            true,
            Provenance::Peer { origin, seq, at },
        )
        .await
    }

    /// Queues a peer's mark after the records it sent before it (see [`Timeline`]): it counts
    /// once they are in the engine.
    pub async fn enqueue_mark(&self, origin: Arc<str>, at: u64) -> Result<(), IngestError> {
        self.tx
            .send(Msg::Mark { origin, at })
            .await
            .map_err(|_| IngestError::Stopped)
    }

    /// The current generation of a source (`None` if it does not exist).
    pub fn generation(&self, source: &str) -> Option<u64> {
        self.generations
            .read()
            .expect("generations")
            .get(source)
            .copied()
    }

    /// [`Ingest::push`] for a producer tied to one generation of the source (see
    /// [`Ingest::generation`]): refused once the source has been dropped, also if it was
    /// re-created under the same name. The provenance says whether the rows go to the other
    /// replicas too (collectors every replica runs say no).
    pub async fn push_to(
        &self,
        source: &str,
        generation: Option<u64>,
        batch: RecordBatch,
        rows: Vec<usize>,
        patient: bool,
        provenance: Provenance,
    ) -> Result<Outcome, IngestError> {
        self.enqueue(source, generation, batch, rows, patient, provenance)
            .await?
            .await
    }

    /// Queues a batch as [`Ingest::push_to`] does; its outcome is what the returned future
    /// answers. Batches queued one after the other are taken in that order, whenever their
    /// answers are awaited.
    pub async fn enqueue(
        &self,
        source: &str,
        generation: Option<u64>,
        batch: RecordBatch,
        rows: Vec<usize>,
        patient: bool,
        mut provenance: Provenance,
    ) -> Result<
        impl std::future::Future<Output = Result<Outcome, IngestError>> + Send + 'static,
        IngestError,
    > {
        if let Provenance::Local { replicated } = &mut provenance {
            *replicated &= self.replication.is_some();
        }
        let quorum = match provenance {
            Provenance::Local { replicated: true } => {
                self.replication.as_ref().and_then(|r| r.quorum)
            }
            _ => None,
        };
        // tocsin's own relations (alert state and events) are bounded by the live alerts and
        // must keep working when users' data fills the budget.
        let reservation = if source.starts_with(tocsin_sql::SYSTEM_PREFIX) {
            None
        } else {
            match self
                .budget
                .admit(source, tocsin_engine::batch_bytes(&batch))
            {
                Ok(r) => Some(r),
                Err(m) => {
                    self.metrics.refused(Refusal::Memory);
                    return Err(IngestError::Memory(m));
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Batch(Job {
            source: source.to_string(),
            provenance,
            batch,
            rows,
            generation,
            queued: Instant::now(),
            reply,
        });
        if patient {
            self.tx.send(msg).await.map_err(|_| IngestError::Stopped)?;
        } else if self.wait.is_zero() {
            self.tx.try_send(msg).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Full,
                mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
            })?;
        } else {
            self.tx
                .send_timeout(msg, self.wait)
                .await
                .map_err(|e| match e {
                    mpsc::error::SendTimeoutError::Timeout(_) => IngestError::Full,
                    mpsc::error::SendTimeoutError::Closed(_) => IngestError::Stopped,
                })?;
        }
        Ok(async move {
            // The batch keeps its place in the memory budget until it is answered.
            let _reservation = reservation;
            match quorum {
                None => answer.await.map_err(|_| IngestError::Stopped)?,
                Some(wait) => match tokio::time::timeout(wait, answer).await {
                    Ok(a) => a.map_err(|_| IngestError::Stopped)?,
                    Err(_) => Err(IngestError::Unconfirmed(format!(
                        "the rows are durable on this replica, but a majority of the replicas did not confirm them within {wait:?} (--ack quorum); they reach the others when the replicas can talk, and sending them again may store them twice"
                    ))),
                },
            }
        })
    }
}

struct Writer {
    engine: Engine,
    wal: Wal,
    history: Arc<History>,
    generations: Generations,
    metrics: Arc<Metrics>,
    replication: Option<Arc<Replication>>,
    /// The newest `seq` of each other replica taken, durable or about to be (the replication's
    /// marks are those durable).
    marks: std::collections::HashMap<String, u64>,
}

struct Staged {
    job: Job,
    /// The record's stamp and, for a record to send the other replicas, its payload.
    stamp: Stamp,
    forward: Option<Vec<u8>>,
    /// The source's generation and the batch's position in the WAL (when it has rows).
    generation: u64,
    pos: Option<u64>,
    admitted: RecordBatch,
    /// Batch row index of each admitted row.
    kept: Vec<usize>,
    rejected: Vec<(usize, String)>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut rows = 0;
            while group.len() < GROUP_BATCHES && rows < GROUP_ROWS {
                match rx.try_recv() {
                    Ok(m) => {
                        if let Msg::Batch(j) = &m {
                            rows += j.batch.num_rows();
                        }
                        group.push(m);
                    }
                    Err(_) => break,
                }
            }
            let mut maintain = false;
            let mut marks = Vec::new();
            let mut staged = Vec::new();
            let timeline = self.replication.as_ref().map(|r| r.timeline.clone());
            if let Some(t) = &timeline {
                t.begin();
            }
            let marks_before = self.replication.as_ref().map(|_| self.marks.clone());
            for m in group {
                match m {
                    Msg::Maintain => maintain = true,
                    Msg::Mark { origin, at } => marks.push((origin, at)),
                    Msg::Batch(job) => {
                        if let Some(s) = self.stage(job) {
                            staged.push(s);
                        }
                    }
                }
            }
            if let Err(e) = self.wal.sync() {
                tracing::error!("write-ahead log sync failed: {e}");
                if let Some(m) = marks_before {
                    self.marks = m;
                }
                for s in staged {
                    let _ = s
                        .job
                        .reply
                        .send(Err(IngestError::Failed(format!("write-ahead log: {e}"))));
                }
                if let Some(t) = &timeline {
                    t.end();
                }
                continue;
            }
            if let Some(r) = &self.replication {
                let records = staged
                    .iter_mut()
                    .filter_map(|s| {
                        let payload = s.forward.take()?;
                        Some((
                            s.stamp.lsn,
                            s.admitted.num_rows() as u64,
                            s.stamp.at,
                            payload,
                        ))
                    })
                    .collect();
                r.synced_through(self.wal.last_lsn(), &self.marks, records);
            }
            for s in staged {
                self.apply(s);
            }
            if let Some(t) = &timeline {
                t.end();
                for (origin, at) in marks {
                    t.peer_mark(&origin, at);
                }
            }
            self.metrics
                .wal_bytes
                .store(self.wal.bytes, Ordering::Relaxed);
            self.metrics
                .wal_syncs
                .store(self.wal.syncs, Ordering::Relaxed);
            if maintain {
                self.maintain();
            }
        }
    }

    /// Checks a batch against its source and appends the rows it takes to the WAL.
    fn stage(&mut self, job: Job) -> Option<Staged> {
        if let Some(r) = &self.replication {
            self.wal.number_above(r.floor());
        }
        let mut stamp = match &job.provenance {
            Provenance::Local { replicated } => Stamp {
                at: match &self.replication {
                    Some(r) => r.timeline.stamp(),
                    None => self.engine.clock().now(),
                } as i64,
                replicated: *replicated,
                ..Stamp::default()
            },
            Provenance::Peer { origin, seq, at } => {
                let mark = self.marks.entry(origin.to_string()).or_insert(0);
                if *seq <= *mark {
                    let _ = job.reply.send(Ok(Outcome {
                        duplicate: true,
                        ..Outcome::default()
                    }));
                    return None;
                }
                *mark = *seq;
                Stamp {
                    origin: Some(origin.to_string()),
                    seq: *seq,
                    at: *at,
                    replicated: true,
                    ..Stamp::default()
                }
            }
        };
        let generation = self
            .generations
            .read()
            .expect("generations")
            .get(&job.source)
            .copied();
        let Some(generation) = generation else {
            let _ = job.reply.send(Err(IngestError::Refused(format!(
                "source \"{}\" does not exist",
                job.source
            ))));
            return None;
        };
        if job.generation.is_some_and(|g| g != generation) {
            let _ = job.reply.send(Err(IngestError::Refused(format!(
                "source \"{}\" was dropped and created again",
                job.source
            ))));
            return None;
        }
        let at = Some(stamp.at.max(0) as u64);
        let (admitted, rejected) = match self.engine.admit_at(&job.source, job.batch.clone(), at) {
            Ok(a) => a,
            Err(e) => {
                let _ = job.reply.send(Err(IngestError::Refused(e.to_string())));
                return None;
            }
        };
        let mut pos = None;
        let mut forward = None;
        if admitted.num_rows() > 0 {
            let retain = self
                .engine
                .retention(&job.source)
                .map_or(i64::MAX, |d| d.as_millis() as i64);
            match self
                .wal
                .append(&job.source, generation, retain, &admitted, &mut stamp)
            {
                Ok(a) => {
                    pos = Some(a.pos);
                    if stamp.replicated && stamp.origin.is_none() {
                        forward = Some(a.payload);
                    }
                }
                Err(e) => {
                    tracing::error!("write-ahead log append failed: {e}");
                    let _ = job
                        .reply
                        .send(Err(IngestError::Failed(format!("write-ahead log: {e}"))));
                    return None;
                }
            }
        }
        let kept = kept_rows(job.batch.num_rows(), &rejected)
            .enumerate()
            .filter_map(|(i, keep)| keep.then_some(i))
            .collect();
        Some(Staged {
            job,
            stamp,
            forward,
            generation,
            pos,
            admitted,
            kept,
            rejected,
        })
    }

    /// Pushes durable rows into the engine and answers.
    fn apply(&mut self, s: Staged) {
        let Staged {
            job,
            generation,
            stamp,
            forward: _,
            pos,
            admitted,
            kept,
            rejected,
        } = s;
        let mut outcome = Outcome {
            accepted: 0,
            duplicate: false,
            rejected: rejected
                .into_iter()
                .map(|(i, m)| (job.rows[i], m))
                .collect(),
        };
        if admitted.num_rows() > 0 {
            let asked = stamp.at.max(0) as u64;
            let at = Some(asked);
            while self.engine.pending_rows() > MAX_ENGINE_PENDING
                || self.engine.followers_behind() > MAX_FOLLOWERS_BEHIND
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let history =
                pos.and_then(|p| Some((p, self.history.get_generation(&job.source, generation)?)));
            let pushed = match &history {
                // The window and history take the rows in one step for queries (see
                // `tocsin_history::table`).
                Some((p, rel)) => rel.append_pushed(*p, || {
                    let o = self.engine.push_at(&job.source, admitted.clone(), at);
                    let took = o
                        .as_ref()
                        .ok()
                        .map(|o| accepted_rows(&admitted, &o.rejected));
                    (o, took)
                }),
                None => self.engine.push_at(&job.source, admitted, at),
            };
            match pushed {
                Ok(o) => {
                    if stamp.origin.is_some() && o.accepted > 0 && o.time > asked {
                        self.metrics
                            .rows_late
                            .fetch_add(o.accepted as u64, Ordering::Relaxed);
                        self.metrics
                            .rows_late_ms
                            .fetch_add(o.time - asked, Ordering::Relaxed);
                    }
                    outcome.accepted = o.accepted;
                    outcome
                        .rejected
                        .extend(o.rejected.into_iter().map(|(i, m)| (job.rows[kept[i]], m)));
                    outcome.rejected.sort_by_key(|(r, _)| *r);
                }
                Err(e) => {
                    let _ = job.reply.send(Err(IngestError::Failed(e.to_string())));
                    return;
                }
            }
        }
        for (row, why) in outcome.rejected.iter().take(crate::metrics::LAST_ERRORS) {
            self.metrics
                .error(&job.source, &format!("row {row}: {why}"));
        }
        self.metrics.ingested(
            &job.source,
            outcome.accepted,
            outcome.rejected.len(),
            job.queued.elapsed(),
        );
        match &self.replication {
            Some(r)
                if r.quorum.is_some()
                    && stamp.replicated
                    && stamp.origin.is_none()
                    && pos.is_some() =>
            {
                r.answer_at_quorum(stamp.lsn, Box::new((job.reply, outcome)))
            }
            _ => {
                let _ = job.reply.send(Ok(outcome));
            }
        }
    }

    fn maintain(&mut self) {
        let now = self.engine.now() as i64;
        let generations = self.generations.read().expect("generations").clone();
        let engine = &self.engine;
        let history = &self.history;
        // A segment stays while a live source still needs its rows: for the window (within
        // retention) or for history (not yet in its files, and within its horizon).
        let keep = |source: &str, generation: u64, newest: i64, pos: u64| {
            if generations.get(source) != Some(&generation) {
                return false;
            }
            let in_window = engine
                .retention(source)
                .is_some_and(|d| newest.saturating_add(d.as_millis() as i64) > now);
            let for_history = history
                .get_generation(source, generation)
                .is_some_and(|rel| {
                    pos > rel.durable_through() && newest.saturating_add(rel.spec.horizon_ms) > now
                });
            in_window || for_history
        };
        match self.wal.maintain(&keep) {
            Ok(n) if n > 0 => tracing::debug!("deleted {n} expired WAL segment(s)"),
            Ok(_) => {}
            Err(e) => tracing::error!("write-ahead log maintenance failed: {e}"),
        }
        self.metrics
            .wal_segments
            .store(self.wal.segments() as u64, Ordering::Relaxed);
    }
}

/// A client's answer held for a majority (`--ack quorum`).
impl crate::replicate::Held for (oneshot::Sender<Result<Outcome, IngestError>>, Outcome) {
    fn give(self: Box<Self>) {
        let (tx, outcome) = *self;
        let _ = tx.send(Ok(outcome));
    }

    fn abandoned(&self) -> bool {
        self.0.is_closed()
    }
}

/// The rows of `batch` but those `rejected` (by row number, in order).
fn accepted_rows(batch: &RecordBatch, rejected: &[(usize, String)]) -> RecordBatch {
    if rejected.is_empty() {
        return batch.clone();
    }
    let mask: datafusion::arrow::array::BooleanArray =
        kept_rows(batch.num_rows(), rejected).map(Some).collect();
    datafusion::arrow::compute::filter_record_batch(batch, &mask)
        .unwrap_or_else(|_| batch.slice(0, 0))
}

/// For each of `n` rows, whether it is kept: not among `rejected` (by row number, in order).
fn kept_rows(n: usize, rejected: &[(usize, String)]) -> impl Iterator<Item = bool> + '_ {
    let mut refused = rejected.iter().map(|(i, _)| *i).peekable();
    (0..n).map(move |i| {
        let keep = refused.peek() != Some(&i);
        if !keep {
            refused.next();
        }
        keep
    })
}
