//! Write batching, written once for every database.
//!
//! Callers hand in one write each and wait for its verdict; behind them, a
//! few writer tasks take the queued writes in groups (at most `size`, waiting
//! at most `window` after the first one for company) and commit each group in
//! one transaction. A caller's future resolves only after its group has
//! committed, so nothing is acknowledged that is not stored.
//!
//! ```text
//!  record_run ─┐                  ┌─ writer 1: take group ─ BEGIN … COMMIT ─ reply to each
//!  record_run ─┼─▶ bounded queue ─┤
//!  record_ann ─┘                  └─ writer 2: (takes the next group meanwhile)
//! ```
//!
//! Cancellation: a caller that stops waiting (its future dropped, its task
//! aborted) does not stop the write — the writer task owns it and either
//! commits it whole or not at all; the verdict is just not delivered. A
//! writer task that is itself dropped mid-transaction rolls the transaction
//! back. Either way no half-written row exists.
//!
//! Waiting for company: a group waits (at most `window`) for more writes only
//! while some caller that has been writing recently is not yet represented,
//! i.e. while fewer writes are pending (queued, grouped or being committed)
//! than the recent peak of pending writes. Callers that wait for their
//! verdict before writing again — the engine's jobs do — are then all in the
//! group or in the one being committed, and the group is committed at once
//! instead of waiting out a window no new write can arrive in. Under a load
//! of independent writers the window is used in full.
//!
//! When a group fails for a reason that may pass (database unreachable), every
//! caller in it gets that error and retries. When it fails for any other reason
//! (one bad row), its writes are retried one per transaction so that one bad
//! write cannot take the others down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::StoreError;

/// Commits one group of writes in one transaction and returns one verdict per
/// write, in the group's order.
pub(crate) type GroupWrite<Op, Out> =
    Arc<dyn Fn(Vec<Op>) -> BoxFuture<'static, Result<Vec<Out>, StoreError>> + Send + Sync>;

/// How writes are grouped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    /// Most writes in one group.
    pub(crate) size: usize,
    /// Longest wait for company after the first write of a group.
    pub(crate) window: Duration,
    /// Writes queued before callers wait.
    pub(crate) queue: usize,
    /// Writer tasks.
    pub(crate) writers: usize,
}

struct Request<Op, Out> {
    op: Op,
    reply: oneshot::Sender<Result<Out, StoreError>>,
}

type Queue<Op, Out> = Arc<Mutex<mpsc::Receiver<Request<Op, Out>>>>;

/// Pending writes (queued, grouped or being committed) and their recent peak.
#[derive(Default)]
struct Load {
    pending: AtomicUsize,
    peak: AtomicUsize,
}

impl Load {
    /// Notes the current load when a group starts; the peak decays by a
    /// sixteenth per group, so it follows a load that drops.
    fn observe(&self) -> usize {
        let pending = self.pending.load(Ordering::SeqCst);
        let old = self.peak.load(Ordering::SeqCst);
        let peak = pending.max(old - old / 16);
        self.peak.store(peak, Ordering::SeqCst);
        peak
    }

    /// Answers one write. It stops counting as pending first, so that a
    /// caller who writes again at once is not counted twice.
    fn answer<Out>(
        &self,
        reply: oneshot::Sender<Result<Out, StoreError>>,
        verdict: Result<Out, StoreError>,
    ) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        // A caller that stopped waiting has dropped its receiver.
        let _ = reply.send(verdict);
    }

    /// Whether every recent writer is represented (waiting is pointless).
    fn all_in(&self, peak: usize) -> bool {
        self.pending.load(Ordering::SeqCst) >= peak
    }
}

/// The queue in front of the writer tasks.
pub(crate) struct Batcher<Op, Out> {
    queue: mpsc::Sender<Request<Op, Out>>,
    load: Arc<Load>,
    writers: Vec<JoinHandle<()>>,
}

impl<Op, Out> Batcher<Op, Out>
where
    Op: Clone + Send + 'static,
    Out: Send + 'static,
{
    /// Starts the writer tasks on the current tokio runtime.
    pub(crate) fn spawn(limits: BatchLimits, write: GroupWrite<Op, Out>) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let rx: Queue<Op, Out> = Arc::new(Mutex::new(rx));
        let load = Arc::new(Load::default());
        let writers = (0..limits.writers.max(1))
            .map(|_| tokio::spawn(writer(rx.clone(), write.clone(), load.clone(), limits)))
            .collect();
        Self {
            queue: tx,
            load,
            writers,
        }
    }

    /// Queues `op` and waits until its group has committed.
    pub(crate) async fn submit(&self, op: Op) -> Result<Out, StoreError> {
        let (reply, verdict) = oneshot::channel();
        // Waiting for room in the queue can be cancelled; once there is room,
        // counting and queueing happen without a pause, so the writer that
        // un-counts the write (after answering it) always counted it first.
        let slot = self
            .queue
            .reserve()
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        self.load.pending.fetch_add(1, Ordering::SeqCst);
        slot.send(Request { op, reply });
        verdict.await.map_err(|_| {
            StoreError::Unavailable("the batch writer stopped before answering".into())
        })?
    }

    /// Stops taking writes and waits until every queued write is committed.
    pub(crate) async fn close(self) {
        drop(self.queue);
        for writer in self.writers {
            // A writer that panicked has already dropped its replies, so its
            // callers have their answer; nothing is left to do for it here.
            let _ = writer.await;
        }
    }
}

async fn writer<Op, Out>(
    queue: Queue<Op, Out>,
    write: GroupWrite<Op, Out>,
    load: Arc<Load>,
    limits: BatchLimits,
) where
    Op: Clone + Send + 'static,
    Out: Send + 'static,
{
    loop {
        let group = {
            let mut rx = queue.lock().await;
            match next_group(&mut rx, &load, limits).await {
                Some(group) => group,
                None => return,
            }
        };
        commit(group, &write, &load).await;
    }
}

/// Takes the next group: waits for a first write, then takes what is queued
/// and, while a recent writer is still missing, waits up to `window` for
/// more, up to `size` writes. `None` once the queue is closed and empty.
async fn next_group<Op, Out>(
    rx: &mut mpsc::Receiver<Request<Op, Out>>,
    load: &Load,
    limits: BatchLimits,
) -> Option<Vec<Request<Op, Out>>> {
    let first = rx.recv().await?;
    let peak = load.observe();
    let mut group = Vec::with_capacity(limits.size.min(64));
    group.push(first);
    let deadline = tokio::time::Instant::now() + limits.window;
    while group.len() < limits.size {
        match rx.try_recv() {
            Ok(request) => group.push(request),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) if load.all_in(peak) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(request)) => group.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    Some(group)
}

async fn commit<Op, Out>(group: Vec<Request<Op, Out>>, write: &GroupWrite<Op, Out>, load: &Load)
where
    Op: Clone + Send + 'static,
    Out: Send + 'static,
{
    let (ops, replies): (Vec<Op>, Vec<_>) = group.into_iter().map(|r| (r.op, r.reply)).unzip();
    let single = ops.len() == 1;
    // Kept for a one-by-one retry; cloned only when a group has several writes.
    let retry = if single { Vec::new() } else { ops.clone() };
    match write(ops).await {
        Ok(outs) => {
            let (expected, got) = (replies.len(), outs.len());
            let mut outs = outs.into_iter();
            for reply in replies {
                let verdict = outs.next().ok_or_else(|| {
                    StoreError::Database(format!(
                        "a group of {expected} writes returned {got} verdicts"
                    ))
                });
                load.answer(reply, verdict);
            }
        }
        Err(e) if single || e.is_retryable() => {
            for reply in replies {
                load.answer(reply, Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = retry.len(), "batched write failed; retrying one by one");
            for (op, reply) in retry.into_iter().zip(replies) {
                let verdict = write(vec![op]).await.and_then(|mut outs| {
                    outs.pop()
                        .ok_or_else(|| StoreError::Database("a write returned no verdict".into()))
                });
                load.answer(reply, verdict);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use futures::FutureExt;

    use super::*;

    /// Records the groups it is given; an op of `-1` makes its group fail for
    /// good, `-2` makes it fail as unavailable. Verdicts are the ops doubled.
    /// This stands in for a database only to test the grouping logic; the
    /// real databases run the same batcher in the integration tests.
    fn recorder(groups: Arc<StdMutex<Vec<Vec<i64>>>>) -> GroupWrite<i64, i64> {
        Arc::new(move |ops: Vec<i64>| {
            groups.lock().unwrap().push(ops.clone());
            async move {
                if ops.contains(&-1) {
                    return Err(StoreError::Database("bad row".into()));
                }
                if ops.contains(&-2) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                Ok(ops.iter().map(|o| o * 2).collect())
            }
            .boxed()
        })
    }

    fn limits(size: usize, writers: usize) -> BatchLimits {
        BatchLimits {
            size,
            window: Duration::from_millis(5),
            queue: 1024,
            writers,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_writes_share_groups_bounded_by_size() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(limits(8, 1), recorder(groups.clone())));
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        for call in calls {
            let (i, verdict) = call.await.unwrap();
            assert_eq!(verdict, Ok(i * 2));
        }
        let groups = groups.lock().unwrap();
        assert!(groups.iter().all(|g| g.len() <= 8), "{groups:?}");
        assert!(groups.len() < 50, "writes were not grouped: {groups:?}");
        let mut all: Vec<i64> = groups.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_write_waits_at_most_the_window() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Batcher::spawn(limits(8, 1), recorder(groups.clone()));
        let start = tokio::time::Instant::now();
        assert_eq!(batcher.submit(21).await, Ok(42));
        assert!(start.elapsed() <= Duration::from_millis(5));
        assert_eq!(*groups.lock().unwrap(), vec![vec![21]]);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_that_wait_for_their_verdict_are_not_held_for_the_window() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let limits = BatchLimits {
            window: Duration::from_secs(1),
            ..limits(64, 1)
        };
        let batcher = Arc::new(Batcher::spawn(limits, recorder(groups.clone())));
        let start = tokio::time::Instant::now();
        let callers: Vec<_> = (0..4)
            .map(|c| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        b.submit(c * 100 + i).await.unwrap();
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        // 40 writes in at least 10 groups: a one-second wait per group would
        // show as ten seconds of (virtual) time.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            groups.lock().unwrap().iter().map(Vec::len).sum::<usize>(),
            40
        );
    }

    #[tokio::test(start_paused = true)]
    async fn independent_writers_are_grouped_within_the_window() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(limits(64, 1), recorder(groups.clone())));
        // Four writers were busy recently...
        let burst: Vec<_> = (0..4)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        for call in burst {
            call.await.unwrap().unwrap();
        }
        groups.lock().unwrap().clear();
        // ...so a lone write waits for company, and one arriving 2 ms later
        // (within the 5 ms window) joins its group.
        let b = batcher.clone();
        let first = tokio::spawn(async move { b.submit(10).await });
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(batcher.submit(11).await, Ok(22));
        assert_eq!(first.await.unwrap(), Ok(20));
        assert_eq!(*groups.lock().unwrap(), vec![vec![10, 11]]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_bad_write_does_not_fail_its_group() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(limits(8, 1), recorder(groups.clone())));
        let calls: Vec<_> = [1, -1, 3]
            .into_iter()
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        let verdicts: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(verdicts[0], Ok(2));
        assert!(matches!(verdicts[1], Err(StoreError::Database(_))));
        assert_eq!(verdicts[2], Ok(6));
        // One group of three, then three groups of one.
        assert_eq!(groups.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_database_fails_the_group_without_retries() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::spawn(limits(8, 1), recorder(groups.clone())));
        let calls: Vec<_> = [1, -2, 3]
            .into_iter()
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().unwrap_err().is_retryable());
        }
        assert_eq!(groups.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_caller_does_not_cancel_its_write_and_close_drains_the_queue() {
        let groups = Arc::new(StdMutex::new(Vec::new()));
        let batcher = Batcher::spawn(limits(8, 2), recorder(groups.clone()));
        // Poll once (the write is queued), then give up on the answer.
        let mut call = Box::pin(batcher.submit(5));
        assert!(futures::poll!(call.as_mut()).is_pending());
        drop(call);
        batcher.close().await;
        assert_eq!(*groups.lock().unwrap(), vec![vec![5]]);
    }
}
