//! The batcher actor: groups jobs into batches by the `trident_core::batch` policy and hands each
//! batch to an idle worker (one batch per worker at a time, so the least-loaded worker is an idle
//! one and nothing is stranded in a dead worker's mailbox). It supervises the workers: a worker
//! that fails is restarted; its batch is retried once, then split in halves until a record that
//! fails alone is reported as failed (the poison record), so the rest proceed.

use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use trident_core::batch::{split_batch, Batch, BatchPolicy, Batcher, Priority};
use trident_core::{Embedding, Modes, TokenizedDoc};

use crate::pipeline::WorkerSpec;
use crate::worker::{Worker, WorkerArgs, WorkerMsg};
use crate::Metrics;

/// What a job ends with: the embedding, or the reason it failed.
pub type Outcome = Result<Embedding, String>;

/// One tokenized record on its way through the batcher and a worker. `done` is called exactly
/// once with the outcome (dropped unanswered only if the pipeline shuts down first).
pub struct Job {
    pub doc: TokenizedDoc,
    pub modes: Modes,
    pub priority: Priority,
    /// Failed attempts of the batches this job was in (see module doc).
    pub attempts: u32,
    /// Set by the fault-injection hook only (test builds).
    pub poison: bool,
    pub done: Box<dyn FnOnce(Outcome) + Send>,
}

pub enum BatcherMsg {
    Submit(Vec<Job>),
    /// A partial batch may have reached its max wait.
    Tick,
    /// Close partial batches now (end of input, shutdown).
    Flush,
    WorkerDone {
        index: usize,
        generation: u64,
    },
    Failed {
        index: usize,
        generation: u64,
        batch: Batch<Job>,
        reason: String,
    },
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
    busy: bool,
}

pub struct BatcherState {
    batcher: Batcher<Job>,
    slots: Vec<Slot>,
    timer_at: Option<Instant>,
    metrics: Metrics,
}

pub struct BatcherActor;

impl BatcherActor {
    async fn start_worker(
        me: &ActorRef<BatcherMsg>,
        st: &mut BatcherState,
        index: usize,
    ) -> Result<(), String> {
        let slot = &mut st.slots[index];
        slot.generation += 1;
        let args = WorkerArgs {
            index,
            generation: slot.generation,
            spec: slot.spec.clone(),
            batcher: me.clone(),
            metrics: st.metrics.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Worker, args, me.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        slot.actor = Some(actor);
        slot.busy = false;
        Ok(())
    }

    fn dispatch(st: &mut BatcherState) {
        loop {
            let Some(i) = st.slots.iter().position(|s| s.actor.is_some() && !s.busy) else {
                return;
            };
            let Some(batch) = st.batcher.pop_ready() else { return };
            let slot = &mut st.slots[i];
            match slot.actor.as_ref().unwrap().send_message(WorkerMsg::Run(batch)) {
                Ok(()) => slot.busy = true,
                Err(e) => {
                    slot.actor = None;
                    if let ractor::MessagingErr::SendErr(WorkerMsg::Run(batch)) = e {
                        st.batcher.requeue_front(batch);
                    }
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

    fn retry(st: &mut BatcherState, batch: Batch<Job>, reason: String) {
        st.metrics.batch_retries.inc();
        let attempts = batch.items.iter().map(|j| j.attempts).max().unwrap_or(0) + 1;
        if attempts < 2 {
            let mut batch = batch;
            batch.items.iter_mut().for_each(|j| j.attempts = attempts);
            st.batcher.requeue_front(batch);
        } else if batch.items.len() > 1 {
            let [mut a, mut b] = split_batch(batch, |j: &Job| j.doc.ids.len(), st.batcher.policy());
            // A half that fails once more is split again.
            a.items.iter_mut().chain(b.items.iter_mut()).for_each(|j| j.attempts = 1);
            st.batcher.requeue_front(b);
            st.batcher.requeue_front(a);
        } else {
            for job in batch.items {
                (job.done)(Err(format!(
                    "encoder failed on this record after {attempts} attempts: {reason}"
                )));
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
            .map(|spec| Slot { spec, actor: None, generation: 0, busy: false })
            .collect();
        let mut st = BatcherState {
            batcher: Batcher::new(args.policy),
            slots,
            timer_at: None,
            metrics: args.metrics,
        };
        for i in 0..st.slots.len() {
            Self::start_worker(&me, &mut st, i).await?;
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
            BatcherMsg::WorkerDone { index, generation } => {
                let slot = &mut st.slots[index];
                if slot.generation == generation {
                    slot.busy = false;
                }
            }
            BatcherMsg::Failed { index, generation, batch, reason } => {
                let slot = &mut st.slots[index];
                if slot.generation == generation {
                    slot.busy = true; // dying; the supervision event restarts it
                }
                Self::retry(st, batch, reason);
            }
            BatcherMsg::Restart { index } => {
                if st.slots[index].actor.is_none() {
                    if let Err(e) = Self::start_worker(&me, st, index).await {
                        tracing::error!("restarting worker {index} failed: {e}; retrying in 1 s");
                        me.send_after(std::time::Duration::from_secs(1), move || {
                            BatcherMsg::Restart { index }
                        });
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
        let cell = match evt {
            SupervisionEvent::ActorFailed(cell, _)
            | SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            _ => return Ok(()),
        };
        let id = cell.get_id();
        if let Some(index) =
            st.slots.iter().position(|s| s.actor.as_ref().is_some_and(|a| a.get_id() == id))
        {
            st.slots[index].actor = None;
            st.metrics.worker_restarts.inc();
            tracing::warn!("worker {index} ({}) stopped; restarting", st.slots[index].spec.name);
            let _ = me.send_message(BatcherMsg::Restart { index });
        }
        Ok(())
    }
}
