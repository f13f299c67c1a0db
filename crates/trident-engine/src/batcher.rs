//! The batcher actor: groups jobs into batches by the `trident_core::batch` policy and hands each
//! batch to an idle worker (one batch per worker at a time, so the least-loaded worker is an idle
//! one and nothing is stranded in a dead worker's mailbox). It supervises the workers: a worker
//! that fails is restarted without blocking the batcher (the new worker loads its model on its
//! own task and reports `Ready`), and its batch is retried on another worker, then split to
//! isolate a poison record (see `retry`).

mod retry;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use trident_core::batch::{split_batch, Batch, BatchPolicy, Batcher};

use retry::Verdict;

use crate::job::{Job, JobError, RetryState, WorkerSpec};
use crate::worker::{Worker, WorkerArgs, WorkerMsg, WorkerReport};
use crate::Metrics;

pub enum BatcherMsg {
    Submit(Vec<Job>),
    /// A partial batch may have reached its max wait.
    Tick,
    /// Close partial batches now (end of input, shutdown).
    Flush,
    /// A worker's report.
    Worker(WorkerReport),
    /// Start the worker of a slot whose last start failed (after a backoff).
    Restart {
        index: usize,
    },
}

pub struct BatcherArgs {
    pub policy: BatchPolicy,
    pub workers: Vec<WorkerSpec>,
    pub metrics: Metrics,
}

struct Slot {
    spec: WorkerSpec,
    actor: Option<ActorRef<WorkerMsg>>,
    generation: u64,
    /// The worker has its embedder (a restarted one builds it after spawning).
    ready: bool,
    busy: bool,
    /// Consecutive failed starts: sets the restart backoff.
    start_failures: u32,
}

impl Slot {
    fn idle(&self) -> bool {
        self.actor.is_some() && self.ready && !self.busy
    }

    /// Up, or starting for the first time since it last ran: worth waiting for with a retry.
    fn up(&self) -> bool {
        self.actor.is_some() && (self.ready || self.start_failures == 0)
    }
}

pub struct BatcherState {
    batcher: Batcher<Job>,
    /// Failed batches waiting for a worker they have not failed on; served before new ones.
    retries: VecDeque<Batch<Job>>,
    slots: Vec<Slot>,
    timer_at: Option<Instant>,
    metrics: Metrics,
}

pub struct BatcherActor;

impl BatcherActor {
    /// Spawn the worker of slot `index`; without `embedder` it builds one from the factory on
    /// its own task and reports `Ready`, so the batcher keeps serving the other workers.
    async fn start_worker(
        me: &ActorRef<BatcherMsg>,
        st: &mut BatcherState,
        index: usize,
        embedder: Option<Box<dyn trident_model::Embedder>>,
    ) -> Result<(), String> {
        let slot = &mut st.slots[index];
        slot.generation += 1;
        slot.ready = false;
        slot.busy = false;
        let args = WorkerArgs {
            index,
            generation: slot.generation,
            spec: slot.spec.clone(),
            embedder,
            report: {
                let me = me.clone();
                Arc::new(move |r| me.send_message(BatcherMsg::Worker(r)).is_ok())
            },
            metrics: st.metrics.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Worker, args, me.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        slot.actor = Some(actor);
        Ok(())
    }

    /// A start failed: try again after a backoff.
    fn start_failed(me: &ActorRef<BatcherMsg>, st: &mut BatcherState, index: usize, why: &str) {
        let slot = &mut st.slots[index];
        slot.actor = None;
        slot.start_failures += 1;
        let (n, wait) = (slot.start_failures, retry::backoff(slot.start_failures));
        if retry::log_start_failure(n) {
            tracing::error!(
                "starting worker {index} ({}) failed {n} time(s): {why}; retrying in {wait:?}",
                slot.spec.name
            );
        } else {
            tracing::debug!("starting worker {index} failed {n} times: {why}");
        }
        me.send_after(wait, move || BatcherMsg::Restart { index });
    }

    /// The first retry batch that slot `index` may take.
    fn take_retry(st: &mut BatcherState, index: usize) -> Option<Batch<Job>> {
        let slots = &st.slots;
        let pos = st.retries.iter().position(|b| {
            let failed_on = b.items.first().map_or(&[][..], |j| &j.retry.failed_on[..]);
            retry::eligible(index, failed_on, |j| slots[j].up(), slots.len())
        })?;
        st.retries.remove(pos)
    }

    fn dispatch(st: &mut BatcherState) {
        for i in 0..st.slots.len() {
            if !st.slots[i].idle() {
                continue;
            }
            let (batch, is_retry) = match Self::take_retry(st, i) {
                Some(b) => (b, true),
                None => match st.batcher.pop_ready() {
                    Some(b) => (b, false),
                    None => continue,
                },
            };
            let slot = &mut st.slots[i];
            // Busy until `WorkerDone`; if the worker is gone, busy until its supervision event.
            slot.busy = true;
            let Err(e) = slot.actor.as_ref().unwrap().send_message(WorkerMsg::Run(batch)) else {
                continue;
            };
            if let ractor::MessagingErr::SendErr(WorkerMsg::Run(batch)) = e {
                if is_retry {
                    st.retries.push_front(batch);
                } else {
                    st.batcher.requeue_front(batch);
                }
            }
        }
    }

    fn arm_timer(me: &ActorRef<BatcherMsg>, st: &mut BatcherState) {
        if let Some(d) = st.batcher.next_deadline() {
            if st.timer_at.is_none_or(|t| d < t) {
                st.timer_at = Some(d);
                me.send_after(d.saturating_duration_since(Instant::now()), || BatcherMsg::Tick);
            }
        }
    }

    /// A batch failed on slot `index`: retry it elsewhere, split it, or fail its poison record.
    fn retry(st: &mut BatcherState, index: usize, mut batch: Batch<Job>, reason: String) {
        for j in &mut batch.items {
            j.retry.attempts += 1;
            j.retry.failed_on.push(index);
        }
        let Some(first) = batch.items.first() else { return };
        let r = &first.retry;
        let alternative =
            st.slots.iter().enumerate().any(|(j, s)| !r.failed_on.contains(&j) && s.up());
        match retry::verdict(batch.items.len(), r, alternative) {
            Verdict::Retry => {
                st.metrics.batch_retries.inc();
                st.retries.push_back(batch);
            }
            Verdict::Split => {
                st.metrics.batch_retries.inc();
                let halves = split_batch(batch, |j: &Job| j.doc.ids.len(), st.batcher.policy());
                for mut half in halves {
                    for j in &mut half.items {
                        let attempts = j.retry.attempts;
                        j.retry = RetryState { attempts, failed_on: Vec::new(), split: true };
                    }
                    st.retries.push_back(half);
                }
            }
            Verdict::Poison => {
                let names: Vec<&str> =
                    r.failed_on.iter().map(|&i| st.slots[i].spec.name.as_str()).collect();
                let err =
                    JobError::Poison { attempts: r.attempts, workers: names.join(", "), reason };
                for job in batch.items {
                    job.finish(Err(err.clone()));
                }
            }
        }
    }
}

impl Actor for BatcherActor {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(
        &self,
        me: ActorRef<BatcherMsg>,
        args: BatcherArgs,
    ) -> Result<BatcherState, ActorProcessingErr> {
        if args.workers.is_empty() {
            return Err("a pipeline needs at least one worker".into());
        }
        let slots = args
            .workers
            .into_iter()
            .map(|spec| Slot {
                spec,
                actor: None,
                generation: 0,
                ready: false,
                busy: false,
                start_failures: 0,
            })
            .collect();
        let mut st = BatcherState {
            batcher: Batcher::new(args.policy),
            retries: VecDeque::new(),
            slots,
            timer_at: None,
            metrics: args.metrics,
        };
        // The first embedders are built here, all before any worker is spawned, so that a
        // pipeline that cannot load its model fails to start (leaving no orphan workers)
        // instead of retrying forever.
        let mut embedders = Vec::with_capacity(st.slots.len());
        for slot in &st.slots {
            embedders.push(crate::worker::build_embedder(&slot.spec).await?);
        }
        for (i, embedder) in embedders.into_iter().enumerate() {
            Self::start_worker(&me, &mut st, i, Some(embedder)).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<BatcherMsg>,
        msg: BatcherMsg,
        st: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Submit(jobs) => {
                let now = Instant::now();
                for job in jobs {
                    let (tokens, priority) = (job.doc.ids.len(), job.priority);
                    st.batcher.push(job, tokens, priority, now);
                }
            }
            BatcherMsg::Tick => {
                st.timer_at = None;
                st.batcher.expire(Instant::now());
            }
            BatcherMsg::Flush => st.batcher.flush(),
            BatcherMsg::Worker(WorkerReport::Ready { index, generation }) => {
                let slot = &mut st.slots[index];
                if slot.generation == generation && slot.actor.is_some() {
                    if slot.start_failures > 0 {
                        tracing::info!("worker {index} ({}) started again", slot.spec.name);
                    }
                    slot.ready = true;
                    slot.start_failures = 0;
                }
            }
            BatcherMsg::Worker(WorkerReport::Done { index, generation }) => {
                let slot = &mut st.slots[index];
                if slot.generation == generation {
                    slot.busy = false;
                }
            }
            BatcherMsg::Worker(WorkerReport::Failed { index, generation, batch, reason }) => {
                let slot = &mut st.slots[index];
                if slot.generation == generation {
                    slot.busy = true; // dying; the supervision event restarts it
                }
                Self::retry(st, index, batch, reason);
            }
            BatcherMsg::Restart { index } => {
                if st.slots[index].actor.is_none() {
                    if let Err(e) = Self::start_worker(&me, st, index, None).await {
                        Self::start_failed(&me, st, index, &e);
                    }
                }
            }
        }
        Self::dispatch(st);
        Self::arm_timer(&me, st);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<BatcherMsg>,
        evt: SupervisionEvent,
        st: &mut BatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            // A clean stop is a shutdown (`Pipeline::stop`): not restarted.
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let id = cell.get_id();
                for s in &mut st.slots {
                    if s.actor.as_ref().is_some_and(|a| a.get_id() == id) {
                        s.actor = None;
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(index) =
            st.slots.iter().position(|s| s.actor.as_ref().is_some_and(|a| a.get_id() == id))
        else {
            return Ok(());
        };
        if st.slots[index].ready {
            st.slots[index].actor = None;
            st.metrics.worker_restarts.inc();
            tracing::warn!("worker {index} ({}) failed; restarting", st.slots[index].spec.name);
            if let Err(e) = Self::start_worker(&me, st, index, None).await {
                Self::start_failed(&me, st, index, &e);
            }
        } else {
            Self::start_failed(&me, st, index, &why);
        }
        Self::dispatch(st);
        Ok(())
    }
}
