//! The replica's lifecycle (DESIGN §4) as a sans-I/O state machine: what this
//! process owns and how long it may act on it. It owns the [`Scheduler`] and
//! everything around it that used to live in the engine: claims and their
//! epochs, the heartbeat and orphan-scan timers (the scan spread by the seeded
//! [`Rng`]), plan loads and their retries, claims deferred until an earlier
//! session of the same experiment has drained, lost ownership, self-fencing,
//! draining and the release of claims at shutdown.
//!
//! Like the scheduler it takes inputs through `handle_*(…, now)`, hands out
//! store requests and events through [`Replica::poll_order`], jobs through
//! [`Replica::poll_dispatch`], and says when to call again with
//! [`Replica::poll_timeout`]. It reads no clock and performs no I/O.
//!
//! One claim's life:
//!
//! ```text
//!  claimed (API, reclaim at start, orphan scan)
//!      │ earlier session still here ──▶ Deferred ──(it departs)──┐
//!      ▼                                                         │
//!  ┌─────────┐ plan read ┌───────────┐ done / gave up ┌───────────┐
//!  │ Loading │──────────▶│ Scheduled │───────────────▶│ Finishing │──▶ gone
//!  └─────────┘           └───────────┘  (status write)└───────────┘
//!   │ retry on           │   ▲    │ stop / lost / shutdown
//!   │ store errors       │   │    ▼
//!   │              lease │   │ confirmed     draining ──▶ gone (released
//!   │            × (1−m) │   │ heartbeat                  at shutdown)
//!   │                    ▼   │
//!   │                  Fenced: starts no call, lets calls under way finish
//!   └─ not found / lost ──────────────────────────────────────▶ gone
//! ```
//!
//! Self-fencing: every heartbeat (and every claim) the database confirms
//! renews the experiment's right to start calls until
//! `sent + lease × (1 − lease_safety_margin)`, where `sent` is this replica's
//! monotonic instant when the request was handed to the driver. The lease
//! itself is measured by the database's clock from the timestamp the
//! statement wrote, and that statement ran after it was sent, so a confirmed
//! timestamp is never earlier than `sent`: the replica's deadline falls at
//! least `lease × margin` before any other replica can take the experiment
//! over. The margin absorbs what the two clocks do not share: a step of the
//! database's clock, a difference in rate, and the moment between deciding a
//! call and sending it. A replica cut off from the database, or frozen past
//! its lease, therefore starts nothing for an experiment it may have lost
//! until a heartbeat confirms it still owns it (which fails if it was taken
//! over). Heartbeats go on while draining at shutdown, until the claims are
//! released.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::Error;
use crate::experiment::WriteResult;
use crate::ids::{Claim, ExperimentId, ReplicaId};
use crate::outcome::CallReport;
use crate::ports::{Advisor, Departure, Finish, LogLevel, RunWrite};
use crate::rng::Rng;
use crate::scheduler::{Action, InsertError, PlanKeys, Scheduler, store_backoff};
use crate::spec::ExperimentPlan;
use crate::work::{EvalKey, EvalWork, Job, TaskKey, TaskWork};

/// Something the replica asks its driver to do (or to announce).
#[derive(Clone, Debug)]
pub enum Order {
    /// Take back the experiments still claimed under this replica's identity
    /// (`Store::reclaim_own`), then call [`Replica::handle_claims`].
    Reclaim,
    /// Claim the experiments whose lease ran out (`Store::take_over_orphans`
    /// with the configured lease), then call [`Replica::handle_claims`].
    ScanOrphans,
    /// Renew these claims (`Store::heartbeat`), then call
    /// [`Replica::handle_heartbeat`].
    Heartbeat(Vec<Claim>),
    /// Read the experiment's plan (`Store::load_plan`) and its rate-limit
    /// keys (`Provider::rate_key`), then call [`Replica::handle_plan`].
    LoadPlan(Claim),
    /// Mark these claims expired (`Store::release`), retrying while the store
    /// is unreachable for up to `release_give_up`, then call
    /// [`Replica::handle_released`].
    Release(Vec<Claim>),
    /// A scheduler action: fetch, write, log or final status. After a
    /// [`Action::Finish`], call [`Replica::handle_finished`].
    Work(Action),
    /// The start-up reclaim is over: fresh claims may be made now.
    Started,
    /// An experiment started running here (for event streams).
    Adopted {
        /// The claim it runs under.
        claim: Claim,
        /// Whether it was taken over from another replica.
        takeover: bool,
    },
    /// An experiment left this replica (for event streams).
    Departed {
        /// The claim it ran under.
        claim: Claim,
        /// Why.
        why: Departure,
    },
}

/// Which request found the claims handed to [`Replica::handle_claims`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimSource {
    /// [`Order::Reclaim`].
    Reclaim,
    /// [`Order::ScanOrphans`].
    Orphans,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// The plan is being read (`retry_at: Some` while backing off).
    Loading {
        failures: u32,
        retry_at: Option<Instant>,
    },
    /// In the scheduler (running or draining).
    Scheduled,
    /// The final status is being written.
    Finishing,
}

#[derive(Clone, Debug)]
struct Held {
    claim: Claim,
    takeover: bool,
    stage: Stage,
    /// No call may start at or after this instant (self-fencing).
    fence_at: Instant,
}

#[derive(Clone, Debug)]
struct Waiting {
    claim: Claim,
    takeover: bool,
    fence_at: Instant,
}

#[derive(Debug)]
struct Shutdown {
    deadline: Instant,
    release: Vec<Claim>,
    releasing: bool,
    done: bool,
}

/// The lifecycle of one replica. See the module documentation.
#[derive(Debug)]
pub struct Replica {
    id: ReplicaId,
    scheduler: Scheduler,
    rng: Rng,
    held: HashMap<ExperimentId, Held>,
    /// Claims waiting until an earlier session of the same experiment drains.
    deferred: HashMap<ExperimentId, Waiting>,
    next_heartbeat: Instant,
    /// The claims of the heartbeat under way and when it was sent.
    heartbeat: Option<(Instant, Vec<Claim>)>,
    next_scan: Instant,
    /// When the claim request under way (reclaim or scan) was sent.
    scan: Option<Instant>,
    started: bool,
    shutdown: Option<Shutdown>,
    orders: VecDeque<Order>,
}

impl Replica {
    /// A replica named `id` with the given constants and jitter seed. Call
    /// [`Replica::start`] once before anything else.
    pub fn new(config: Config, id: ReplicaId, seed: u64, now: Instant) -> Self {
        Self {
            id,
            scheduler: Scheduler::new(config, seed),
            rng: Rng::new(seed ^ 0x5EED),
            held: HashMap::new(),
            deferred: HashMap::new(),
            next_heartbeat: now,
            heartbeat: None,
            next_scan: now,
            scan: None,
            started: false,
            shutdown: None,
            orders: VecDeque::new(),
        }
    }

    /// The constants in use.
    pub fn config(&self) -> &Config {
        self.scheduler.config()
    }

    /// This replica's identity.
    pub fn id(&self) -> &ReplicaId {
        &self.id
    }

    /// The scheduler, for inspection.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Starts the timers and, when this replica takes over experiments, asks
    /// to take back its own claims first (then it scans for orphans).
    pub fn start(&mut self, now: Instant) {
        self.next_heartbeat = now + self.config().heartbeat_interval();
        self.next_scan = now + self.scan_interval();
        if self.config().take_over {
            self.scan = Some(now);
            self.orders.push_back(Order::Reclaim);
        } else {
            self.started = true;
            self.orders.push_back(Order::Started);
        }
    }

    /// Whether the start-up reclaim is over.
    pub fn is_started(&self) -> bool {
        self.started
    }

    fn scan_interval(&mut self) -> Duration {
        let config = self.scheduler.config();
        let spread = 1.0 + config.orphan_scan_jitter * self.rng.signed_unit();
        config.orphan_scan_interval().mul_f64(spread)
    }

    fn fence_from(&self, sent: Instant) -> Instant {
        sent + self.config().fence_after()
    }

    /// Runs an experiment this replica claimed elsewhere (the API's start or
    /// resume). `sent` is when the claiming statement was sent, if known: the
    /// lease counts from then. Without it, the claim is confirmed by a
    /// heartbeat (sent at once) before any call starts.
    pub fn handle_adopt(&mut self, claim: Claim, sent: Option<Instant>, now: Instant) {
        let fence_at = match sent {
            Some(sent) => self.fence_from(sent),
            None => {
                self.next_heartbeat = self.next_heartbeat.min(now);
                now
            }
        };
        self.adopt(claim, false, fence_at, now);
    }

    fn adopt(&mut self, claim: Claim, takeover: bool, fence_at: Instant, now: Instant) {
        if let Some(s) = &mut self.shutdown {
            // Claimed while shutting down: hand it straight back.
            if !s.releasing {
                s.release.push(claim);
            }
            return;
        }
        let id = claim.experiment;
        let waiting = Waiting {
            claim,
            takeover,
            fence_at,
        };
        match self.held.get_mut(&id) {
            None => self.load(waiting),
            Some(h) if h.claim == waiting.claim => {
                h.fence_at = h.fence_at.max(waiting.fence_at);
                if h.stage == Stage::Scheduled {
                    self.scheduler.set_fence(&h.claim, h.fence_at, now);
                }
            }
            // A newer claim while the older one's plan is still being read:
            // nothing ran under the older one, so it is simply replaced.
            Some(h)
                if matches!(h.stage, Stage::Loading { .. })
                    && h.claim.epoch < waiting.claim.epoch =>
            {
                self.load(waiting);
            }
            // An earlier session is still here (draining after a stop, or
            // writing its final status): run the new one once it has left,
            // so no work identity is ever in flight twice.
            Some(_) => {
                self.deferred.insert(id, waiting);
            }
        }
    }

    fn load(&mut self, w: Waiting) {
        self.held.insert(
            w.claim.experiment,
            Held {
                claim: w.claim.clone(),
                takeover: w.takeover,
                stage: Stage::Loading {
                    failures: 0,
                    retry_at: None,
                },
                fence_at: w.fence_at,
            },
        );
        self.orders.push_back(Order::LoadPlan(w.claim));
    }

    /// Stops an experiment locally: `Stopped` lets calls under way finish and
    /// records them, `Lost` drops everything (it is owned elsewhere or gone).
    pub fn handle_stop(&mut self, experiment: ExperimentId, why: Departure, now: Instant) {
        self.deferred.remove(&experiment);
        let loading = self
            .held
            .get(&experiment)
            .is_some_and(|h| matches!(h.stage, Stage::Loading { .. }));
        if loading {
            if let Some(h) = self.held.remove(&experiment) {
                self.depart(h.claim, why);
            }
        } else {
            self.scheduler.stop(experiment, why, now);
        }
        self.pump();
    }

    /// The plan of a claim arrived (with its rate-limit keys, or the reason
    /// the provider cannot compute them).
    pub fn handle_plan(
        &mut self,
        claim: &Claim,
        result: Result<(ExperimentPlan, Result<PlanKeys, String>), Error>,
        now: Instant,
    ) {
        let Some(h) = self.held.get_mut(&claim.experiment) else {
            return;
        };
        let Stage::Loading { failures, .. } = h.stage else {
            return;
        };
        if h.claim != *claim {
            return; // replaced while loading
        }
        match result {
            Ok((plan, Ok(keys))) => match self.scheduler.insert(claim.clone(), &plan, keys, now) {
                Ok(()) => {
                    h.stage = Stage::Scheduled;
                    let (fence_at, takeover) = (h.fence_at, h.takeover);
                    self.scheduler.set_fence(claim, fence_at, now);
                    self.orders.push_back(Order::Work(Action::Log {
                        experiment: claim.experiment,
                        level: LogLevel::Info,
                        message: format!(
                            "{} on replica {} (epoch {})",
                            if takeover { "taken over" } else { "running" },
                            claim.replica,
                            claim.epoch
                        ),
                    }));
                    self.orders.push_back(Order::Adopted {
                        claim: claim.clone(),
                        takeover,
                    });
                }
                Err(InsertError::AlreadyPresent) => {
                    // Cannot happen: `held` admits one session per experiment.
                    // Kept as a deferred claim rather than dropped.
                    let w = Waiting {
                        claim: claim.clone(),
                        takeover: h.takeover,
                        fence_at: h.fence_at,
                    };
                    self.held.remove(&claim.experiment);
                    self.deferred.insert(claim.experiment, w);
                }
                Err(InsertError::KeysMismatch) => self.fail(
                    claim,
                    "the plan and its rate-limit keys do not match".into(),
                ),
            },
            Ok((_, Err(message))) => self.fail(claim, message),
            Err(Error::NotFound(_)) => {
                self.held.remove(&claim.experiment);
                self.depart(claim.clone(), Departure::Lost);
            }
            Err(e) if e.is_retryable() => {
                let failures = failures + 1;
                let delay = store_backoff(failures, self.scheduler.config());
                h.stage = Stage::Loading {
                    failures,
                    retry_at: Some(now + delay),
                };
            }
            Err(e) => self.fail(claim, format!("the experiment cannot run: {e}")),
        }
        self.pump();
    }

    /// Ends a claim that cannot run: logs why and writes ERROR.
    fn fail(&mut self, claim: &Claim, message: String) {
        if let Some(h) = self.held.get_mut(&claim.experiment) {
            h.stage = Stage::Finishing;
        }
        self.orders.push_back(Order::Work(Action::Log {
            experiment: claim.experiment,
            level: LogLevel::Error,
            message: message.clone(),
        }));
        self.orders.push_back(Order::Work(Action::Finish {
            claim: claim.clone(),
            end: Finish::Error(message),
        }));
    }

    /// Claims found by [`Order::Reclaim`] or [`Order::ScanOrphans`] arrived.
    pub fn handle_claims(
        &mut self,
        source: ClaimSource,
        result: Result<Vec<Claim>, Error>,
        now: Instant,
    ) {
        let sent = self.scan.take().unwrap_or(now);
        match result {
            Ok(claims) => {
                let fence_at = self.fence_from(sent);
                for claim in claims {
                    let takeover = source == ClaimSource::Orphans;
                    if takeover {
                        tracing::info!(experiment = %claim.experiment, epoch = %claim.epoch, "took over an orphaned experiment");
                    }
                    self.adopt(claim, takeover, fence_at, now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "claim scan failed; retrying at the next scan"),
        }
        if !self.started {
            self.started = true;
            self.orders.push_back(Order::Started);
            if self.shutdown.is_none() {
                self.scan = Some(now);
                self.orders.push_back(Order::ScanOrphans);
            }
        }
        self.pump();
    }

    /// The answer to the last [`Order::Heartbeat`]: the experiments still
    /// owned, or an error (the claims are then neither renewed nor lost).
    pub fn handle_heartbeat(&mut self, result: Result<Vec<ExperimentId>, Error>, now: Instant) {
        let Some((sent_at, sent)) = self.heartbeat.take() else {
            return;
        };
        match result {
            Ok(owned) => {
                let fence_at = self.fence_from(sent_at);
                for claim in &sent {
                    if let Some(w) = self.deferred.get_mut(&claim.experiment)
                        && w.claim == *claim
                    {
                        if owned.contains(&claim.experiment) {
                            w.fence_at = w.fence_at.max(fence_at);
                        } else {
                            self.deferred.remove(&claim.experiment);
                        }
                        continue;
                    }
                    let Some(h) = self.held.get_mut(&claim.experiment) else {
                        continue;
                    };
                    if h.claim != *claim {
                        continue;
                    }
                    if owned.contains(&claim.experiment) {
                        h.fence_at = h.fence_at.max(fence_at);
                        if h.stage == Stage::Scheduled {
                            self.scheduler.set_fence(claim, h.fence_at, now);
                        }
                    } else if matches!(h.stage, Stage::Loading { .. }) {
                        self.held.remove(&claim.experiment);
                        self.depart(claim.clone(), Departure::Lost);
                    }
                }
                self.scheduler.handle_heartbeat(&sent, &owned, now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed; retrying at the next beat")
            }
        }
        // A claim adopted while this beat was out and never confirmed yet:
        // confirm it at once rather than a whole interval later. (Claims
        // this beat carried wait for the next one, so a failing store is not
        // hammered.)
        if self
            .held
            .values()
            .any(|h| h.fence_at <= now && !sent.contains(&h.claim))
        {
            self.next_heartbeat = self.next_heartbeat.min(now);
        }
        // A scan or the release may have waited for this answer.
        self.handle_timeout(now);
    }

    /// A reconnected notification listener may have missed stops, resumes
    /// and deletions: check the claims (heartbeat) and look for orphans now.
    pub fn handle_listener_reconnected(&mut self, now: Instant) {
        self.next_heartbeat = self.next_heartbeat.min(now);
        self.next_scan = self.next_scan.min(now);
        self.handle_timeout(now);
    }

    /// The final status requested by [`Action::Finish`] was written (or given
    /// up).
    pub fn handle_finished(&mut self, claim: &Claim, end: Finish, now: Instant) {
        if self
            .held
            .get(&claim.experiment)
            .is_some_and(|h| h.claim == *claim)
        {
            self.held.remove(&claim.experiment);
        }
        let why = match end {
            Finish::Completed => Departure::Completed,
            Finish::Error(msg) => Departure::Errored(msg),
        };
        self.depart(claim.clone(), why);
        self.handle_timeout(now);
    }

    /// The claims of [`Order::Release`] were released (or given up).
    pub fn handle_released(&mut self) {
        if let Some(s) = &mut self.shutdown {
            s.done = true;
        }
    }

    /// Graceful shutdown: no new calls, claims not yet running are released
    /// at once, calls under way finish (heartbeats go on) for up to
    /// `shutdown_grace`, then every claim left is released.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        let mut release = Vec::new();
        let loading: Vec<ExperimentId> = self
            .held
            .iter()
            .filter(|(_, h)| matches!(h.stage, Stage::Loading { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in loading {
            if let Some(h) = self.held.remove(&id) {
                release.push(h.claim);
            }
        }
        release.extend(self.deferred.drain().map(|(_, w)| w.claim));
        self.shutdown = Some(Shutdown {
            deadline: now + self.config().shutdown_grace,
            release,
            releasing: false,
            done: false,
        });
        self.scheduler.stop_all(Departure::Released, now);
        self.handle_timeout(now);
    }

    /// Whether shutdown is complete (the claims have been released).
    pub fn is_done(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| s.done)
    }

    /// The claims released at shutdown.
    pub fn released(&self) -> Vec<Claim> {
        self.shutdown
            .as_ref()
            .map(|s| s.release.clone())
            .unwrap_or_default()
    }

    /// Time passed: heartbeats, scans, plan-load retries and the end of
    /// shutdown fall due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.scheduler.handle_timeout(now);
        self.pump();
        let releasing = self.shutdown.as_ref().is_some_and(|s| s.releasing);
        if now >= self.next_heartbeat && self.heartbeat.is_none() && !releasing {
            self.next_heartbeat = now + self.config().heartbeat_interval();
            let claims = self.heartbeat_claims();
            if !claims.is_empty() {
                self.heartbeat = Some((now, claims.clone()));
                self.orders.push_back(Order::Heartbeat(claims));
            }
        }
        // The scan waits for the heartbeat under way: after an outage, this
        // replica renews its own claims before looking for expired ones, so
        // it does not take its own experiments over (a new epoch would drop
        // the calls under way). Nor does it run while one of this replica's
        // own claims is fenced: that claim may have expired in the database,
        // and the scan would take it over from this very replica.
        let fenced = self
            .held
            .values()
            .map(|h| h.fence_at)
            .chain(self.deferred.values().map(|w| w.fence_at))
            .any(|at| at <= now);
        if now >= self.next_scan
            && self.shutdown.is_none()
            && self.started
            && self.heartbeat.is_none()
        {
            self.next_scan = now + self.scan_interval();
            if self.config().take_over && self.scan.is_none() && !fenced {
                self.scan = Some(now);
                self.orders.push_back(Order::ScanOrphans);
            }
        }
        let due: Vec<Claim> = self
            .held
            .values_mut()
            .filter_map(|h| match h.stage {
                Stage::Loading {
                    failures,
                    retry_at: Some(at),
                } if at <= now => {
                    h.stage = Stage::Loading {
                        failures,
                        retry_at: None,
                    };
                    Some(h.claim.clone())
                }
                _ => None,
            })
            .collect();
        self.orders.extend(due.into_iter().map(Order::LoadPlan));
        self.maybe_release(now);
    }

    fn maybe_release(&mut self, now: Instant) {
        let drained = self.held.is_empty() && self.scheduler.is_empty();
        // A heartbeat answered after the release would renew a released
        // claim, so the release waits for the beat under way.
        let beat_out = self.heartbeat.is_some();
        let Some(s) = &mut self.shutdown else {
            return;
        };
        if s.releasing || beat_out || !(drained || now >= s.deadline) {
            return;
        }
        s.releasing = true;
        // Whatever still drains at the deadline is released too: its late
        // results are fenced once another replica claims it.
        for h in self.held.values() {
            if !s.release.contains(&h.claim) {
                s.release.push(h.claim.clone());
            }
        }
        if s.release.is_empty() {
            s.done = true;
        } else {
            self.orders.push_back(Order::Release(s.release.clone()));
        }
    }

    /// Claims to renew: every claim held except those the scheduler no longer
    /// writes for (stopped here or lost), and the deferred ones.
    fn heartbeat_claims(&self) -> Vec<Claim> {
        let owned = self.scheduler.owned_claims();
        let mut claims: Vec<Claim> = self
            .held
            .values()
            .filter(|h| h.stage != Stage::Scheduled || owned.contains(&h.claim))
            .map(|h| h.claim.clone())
            .chain(self.deferred.values().map(|w| w.claim.clone()))
            .collect();
        claims.sort_by_key(|c| c.experiment);
        claims
    }

    /// Moves the scheduler's actions into the orders, handling departures.
    fn pump(&mut self) {
        while let Some(action) = self.scheduler.poll_action() {
            match action {
                Action::Departed { claim, why } => {
                    if self
                        .held
                        .get(&claim.experiment)
                        .is_some_and(|h| h.claim == claim)
                    {
                        self.held.remove(&claim.experiment);
                    }
                    self.depart(claim, why);
                }
                Action::Finish { claim, end } => {
                    if let Some(h) = self.held.get_mut(&claim.experiment)
                        && h.claim == claim
                    {
                        h.stage = Stage::Finishing;
                    }
                    self.orders
                        .push_back(Order::Work(Action::Finish { claim, end }));
                }
                other => self.orders.push_back(Order::Work(other)),
            }
        }
    }

    fn depart(&mut self, claim: Claim, why: Departure) {
        if why == Departure::Released
            && let Some(s) = &mut self.shutdown
            && !s.releasing
        {
            s.release.push(claim.clone());
        }
        let id = claim.experiment;
        self.orders.push_back(Order::Departed { claim, why });
        if let Some(next) = self.deferred.remove(&id) {
            if let Some(s) = &mut self.shutdown {
                if !s.releasing {
                    s.release.push(next.claim);
                }
            } else if self.held.contains_key(&id) {
                self.deferred.insert(id, next);
            } else {
                self.load(next);
            }
        }
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_order(&mut self) -> Option<Order> {
        self.pump();
        self.orders.pop_front()
    }

    /// The next job to start, if any (see [`Scheduler::poll_dispatch`]).
    /// Nothing is dispatched once shutdown began, nor for a fenced experiment.
    pub fn poll_dispatch<A: Advisor + ?Sized>(
        &mut self,
        now: Instant,
        advisor: &A,
        estimate: &dyn Fn(&Job) -> Option<u64>,
    ) -> Option<Job> {
        if self.shutdown.is_some() {
            return None;
        }
        self.scheduler.poll_dispatch(now, advisor, estimate)
    }

    /// When to call [`Replica::handle_timeout`] again if nothing else
    /// happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut deadline = self.scheduler.poll_timeout();
        let mut consider = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d: Instant| d.min(t)));
        };
        let releasing = self.shutdown.as_ref().is_some_and(|s| s.releasing);
        // While a heartbeat is out, its answer is the next event: the timers
        // waiting for it must not make the driver spin.
        let beat_out = self.heartbeat.is_some();
        if !releasing && !beat_out && !self.held.is_empty() {
            consider(self.next_heartbeat);
        }
        match &self.shutdown {
            Some(s) if !s.releasing && !beat_out => consider(s.deadline),
            Some(_) => {}
            None if self.started && self.config().take_over && !beat_out => {
                consider(self.next_scan)
            }
            None => {}
        }
        for h in self.held.values() {
            if let Stage::Loading {
                retry_at: Some(at), ..
            } = h.stage
            {
                consider(at);
            }
        }
        deadline
    }

    /// A provider call ended (see [`Scheduler::handle_call_finished`]).
    pub fn handle_call_finished<A: Advisor + ?Sized>(
        &mut self,
        job: Job,
        report: CallReport,
        now: Instant,
        advisor: &A,
    ) {
        self.scheduler
            .handle_call_finished(job, report, now, advisor);
        self.after_work(now);
    }

    /// A page of task work arrived.
    pub fn handle_task_page(
        &mut self,
        claim: &Claim,
        page: Result<Vec<TaskWork>, Error>,
        now: Instant,
    ) {
        self.scheduler.handle_task_page(claim, page, now);
        self.after_work(now);
    }

    /// A page of eval work arrived.
    pub fn handle_eval_page(
        &mut self,
        claim: &Claim,
        page: Result<Vec<EvalWork>, Error>,
        now: Instant,
    ) {
        self.scheduler.handle_eval_page(claim, page, now);
        self.after_work(now);
    }

    /// A run write ended.
    pub fn handle_run_written(
        &mut self,
        claim: &Claim,
        key: TaskKey,
        result: WriteResult<RunWrite>,
        now: Instant,
    ) {
        self.scheduler.handle_run_written(claim, key, result, now);
        self.after_work(now);
    }

    /// An annotation write ended.
    pub fn handle_annotation_written(
        &mut self,
        claim: &Claim,
        key: EvalKey,
        result: WriteResult<()>,
        now: Instant,
    ) {
        self.scheduler
            .handle_annotation_written(claim, key, result, now);
        self.after_work(now);
    }

    fn after_work(&mut self, now: Instant) {
        self.pump();
        self.maybe_release(now);
    }

    /// Claims held (loading, scheduled or finishing), for tests and stats.
    pub fn claims(&self) -> Vec<Claim> {
        self.held.values().map(|h| h.claim.clone()).collect()
    }

    /// Until when the experiment may start calls, if it is held here.
    pub fn fence_at(&self, experiment: ExperimentId) -> Option<Instant> {
        self.held.get(&experiment).map(|h| h.fence_at)
    }
}

#[cfg(test)]
// The tests pick an arbitrary starting instant; the machine never reads one.
#[allow(clippy::disallowed_methods)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::Epoch;
    use crate::memory::Unlimited;
    use crate::spec::{CallSpec, ExampleData};
    use crate::{DatasetId, ExampleId, RateKey};

    fn claim(epoch: i64) -> Claim {
        Claim {
            experiment: ExperimentId(uuid::Uuid::from_u128(1)),
            replica: ReplicaId::new("a"),
            epoch: Epoch(epoch),
        }
    }

    fn plan() -> (ExperimentPlan, Result<PlanKeys, String>) {
        let plan = ExperimentPlan {
            id: claim(1).experiment,
            dataset: DatasetId(uuid::Uuid::nil()),
            repetitions: 1,
            max_concurrency: Some(1),
            task: CallSpec {
                provider: "p".into(),
                model: "m".into(),
                messages: vec![],
                params: Default::default(),
                timeout_s: None,
                stream: false,
            },
            evaluators: vec![],
        };
        let keys = PlanKeys {
            task: RateKey::new("p", "m"),
            evaluators: vec![],
        };
        (plan, Ok(keys))
    }

    fn work(n: i64) -> Vec<TaskWork> {
        (1..=n)
            .map(|e| TaskWork {
                key: TaskKey {
                    example: ExampleId(e),
                    repetition: 0,
                },
                data: Arc::new(ExampleData::default()),
            })
            .collect()
    }

    fn orders(r: &mut Replica) -> Vec<Order> {
        std::iter::from_fn(|| r.poll_order()).collect()
    }

    /// A replica (lease 30 s, fencing after 24 s) that reclaimed one
    /// experiment at `t0` and has its work buffered.
    fn running(t0: Instant) -> Replica {
        let mut r = Replica::new(Config::default(), ReplicaId::new("a"), 1, t0);
        r.start(t0);
        assert!(matches!(orders(&mut r)[..], [Order::Reclaim]));
        r.handle_claims(ClaimSource::Reclaim, Ok(vec![claim(1)]), t0);
        orders(&mut r);
        r.handle_claims(ClaimSource::Orphans, Ok(vec![]), t0);
        r.handle_plan(&claim(1), Ok(plan()), t0);
        for order in orders(&mut r) {
            match order {
                Order::Work(Action::FetchTasks { .. }) => {
                    r.handle_task_page(&claim(1), Ok(work(100)), t0)
                }
                Order::Work(Action::FetchEvals { .. }) => {
                    r.handle_eval_page(&claim(1), Ok(vec![]), t0)
                }
                _ => {}
            }
        }
        r
    }

    fn finish_call(r: &mut Replica, job: Job, now: Instant) {
        let report = CallReport::new(
            crate::Outcome::Success(crate::Reply::Task { output: "x".into() }),
            Duration::from_millis(1),
        );
        r.handle_call_finished(job, report, now, &Unlimited);
    }

    fn heartbeat_sent(r: &mut Replica, now: Instant) -> bool {
        r.handle_timeout(now);
        orders(r)
            .iter()
            .any(|o| matches!(o, Order::Heartbeat(c) if c.contains(&claim(1))))
    }

    #[test]
    fn a_replica_without_a_confirmed_heartbeat_stops_dispatching_until_one_is_confirmed() {
        let t0 = Instant::now();
        let mut r = running(t0);
        let s = Duration::from_secs;
        let job = r.poll_dispatch(t0, &Unlimited, &|_| None).expect("a job");
        finish_call(&mut r, job, t0 + s(1));
        // Every heartbeat fails (the database is cut off).
        for t in [10, 20] {
            assert!(heartbeat_sent(&mut r, t0 + s(t)));
            r.handle_heartbeat(Err(Error::StoreUnavailable("down".into())), t0 + s(t));
        }
        let before = t0 + s(24) - Duration::from_millis(1);
        let job = r
            .poll_dispatch(before, &Unlimited, &|_| None)
            .expect("still leased");
        finish_call(&mut r, job, before);
        // lease × (1 − 0.2) after the reclaim was sent: fenced.
        assert!(r.poll_dispatch(t0 + s(24), &Unlimited, &|_| None).is_none());
        assert!(r.scheduler().is_fenced(claim(1).experiment, t0 + s(24)));
        // While fenced, no orphan scan: it could take this replica's own
        // expired claim over.
        for t in [30, 40, 50] {
            assert!(heartbeat_sent(&mut r, t0 + s(t)));
            r.handle_heartbeat(Err(Error::StoreUnavailable("down".into())), t0 + s(t));
            r.handle_timeout(t0 + s(t + 5));
            assert!(
                !orders(&mut r)
                    .iter()
                    .any(|o| matches!(o, Order::ScanOrphans))
            );
        }
        // Frozen for a while: on waking, still nothing starts …
        assert!(r.poll_dispatch(t0 + s(90), &Unlimited, &|_| None).is_none());
        // … until a heartbeat sent now is confirmed.
        assert!(heartbeat_sent(&mut r, t0 + s(90)));
        assert!(r.poll_dispatch(t0 + s(91), &Unlimited, &|_| None).is_none());
        r.handle_heartbeat(Ok(vec![claim(1).experiment]), t0 + s(91));
        assert!(r.poll_dispatch(t0 + s(91), &Unlimited, &|_| None).is_some());
        assert_eq!(r.fence_at(claim(1).experiment), Some(t0 + s(90 + 24)));
    }

    #[test]
    fn a_replica_that_lost_the_experiment_while_frozen_starts_nothing_on_waking() {
        let t0 = Instant::now();
        let mut r = running(t0);
        let s = Duration::from_secs;
        let job = r.poll_dispatch(t0, &Unlimited, &|_| None).expect("a job");
        // Frozen from 1 s to 60 s; another replica took the experiment over.
        assert!(r.poll_dispatch(t0 + s(60), &Unlimited, &|_| None).is_none());
        assert!(heartbeat_sent(&mut r, t0 + s(60)));
        r.handle_heartbeat(Ok(vec![]), t0 + s(60));
        // The call under way ends; its result is dropped, nothing starts.
        finish_call(&mut r, job, t0 + s(61));
        assert!(r.poll_dispatch(t0 + s(61), &Unlimited, &|_| None).is_none());
        let gone = orders(&mut r).into_iter().any(|o| {
            matches!(
                o,
                Order::Departed {
                    why: Departure::Lost,
                    ..
                }
            )
        });
        assert!(gone, "the experiment leaves without writing");
    }

    #[test]
    fn heartbeats_go_on_while_draining_until_the_claims_are_released() {
        let t0 = Instant::now();
        let mut r = running(t0);
        let s = Duration::from_secs;
        let job = r.poll_dispatch(t0, &Unlimited, &|_| None).expect("a job");
        r.handle_shutdown(t0 + s(1));
        for t in [10, 20] {
            assert!(heartbeat_sent(&mut r, t0 + s(t)), "beat at {t} s");
            r.handle_heartbeat(Ok(vec![claim(1).experiment]), t0 + s(t));
        }
        // The call ends after 25 s; its result is written, then released.
        finish_call(&mut r, job, t0 + s(25));
        let writes = orders(&mut r);
        assert!(
            writes
                .iter()
                .any(|o| matches!(o, Order::Work(Action::WriteRun { .. })))
        );
        r.handle_run_written(
            &claim(1),
            TaskKey {
                example: ExampleId(1),
                repetition: 0,
            },
            WriteResult::Done(crate::Write::Accepted(RunWrite {
                id: crate::RunId(1),
                new_success: true,
            })),
            t0 + s(26),
        );
        r.handle_timeout(t0 + s(26));
        let release = orders(&mut r)
            .into_iter()
            .find_map(|o| match o {
                Order::Release(c) => Some(c),
                _ => None,
            })
            .expect("released");
        assert_eq!(release, vec![claim(1)]);
        r.handle_released();
        assert!(r.is_done());
    }

    #[test]
    fn a_reconnected_listener_checks_the_claims_at_once() {
        let t0 = Instant::now();
        let mut r = running(t0);
        let t = t0 + Duration::from_secs(2);
        r.handle_listener_reconnected(t);
        // The heartbeat first; the scan once it is answered, so the replica
        // renews its own claims before it looks for expired ones.
        assert!(matches!(orders(&mut r)[..], [Order::Heartbeat(_)]));
        r.handle_heartbeat(Ok(vec![claim(1).experiment]), t);
        assert!(matches!(orders(&mut r)[..], [Order::ScanOrphans]));
    }

    #[test]
    fn a_claim_adopted_without_its_instant_waits_for_a_heartbeat() {
        let t0 = Instant::now();
        let mut r = Replica::new(Config::default(), ReplicaId::new("a"), 1, t0);
        r.start(t0);
        r.handle_claims(ClaimSource::Reclaim, Ok(vec![]), t0);
        orders(&mut r);
        r.handle_adopt(claim(3), None, t0);
        let c = Claim {
            epoch: Epoch(3),
            ..claim(1)
        };
        r.handle_plan(&c, Ok(plan()), t0);
        for order in orders(&mut r) {
            if let Order::Work(Action::FetchTasks { .. }) = order {
                r.handle_task_page(&c, Ok(work(3)), t0);
            }
            if let Order::Work(Action::FetchEvals { .. }) = order {
                r.handle_eval_page(&c, Ok(vec![]), t0);
            }
        }
        assert!(r.poll_dispatch(t0, &Unlimited, &|_| None).is_none());
        r.handle_timeout(t0);
        assert!(
            orders(&mut r)
                .iter()
                .any(|o| matches!(o, Order::Heartbeat(_)))
        );
        r.handle_heartbeat(Ok(vec![c.experiment]), t0);
        assert!(r.poll_dispatch(t0, &Unlimited, &|_| None).is_some());
    }
}
