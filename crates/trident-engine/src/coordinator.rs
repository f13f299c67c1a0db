//! The coordinator actor: decodes and validates raw records, looks them up in the cache,
//! tokenizes the misses and submits them to the batcher. Bad records and cache hits go straight
//! to the sink. Tokenization of one chunk overlaps the workers' encoding of earlier ones.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use trident_core::batch::Priority;
use trident_core::{DocId, Modes};

use crate::flight::InFlight;
use crate::job::{JobError, Outcome};
use crate::pipeline::Prepared;
use crate::record::{decode_record, is_blank, BadRecord, InputDoc};
use crate::Pipeline;

#[cfg(test)]
mod tests;

/// A record as a source read it. `ticket` identifies it to the sink (a line number, or an entry
/// of the node's in-flight table); `fallback_id` is the id when the record carries none.
/// `bytes` is shared with the source (one copy of each value, kept for a dead letter);
/// `est_tokens` is what the source counted in flight for it before tokenizing.
pub struct RawRecord {
    pub ticket: u64,
    pub bytes: Arc<[u8]>,
    pub fallback_id: DocId,
    pub est_tokens: usize,
}

/// What sinks receive. `tokens` is what the record added to the in-flight count.
pub enum SinkMsg {
    /// Records of one chunk that decoded, with their ids (as keys), before any of them is done:
    /// a sink that orders results per id knows which versions are still coming.
    Decoded(Vec<(u64, String)>),
    Done {
        ticket: u64,
        id: DocId,
        outcome: Outcome,
        tokens: usize,
    },
    Bad {
        ticket: u64,
        id: DocId,
        reason: String,
    },
    /// Internal to a sink: a delivery it waited for finished.
    Delivered {
        ticket: u64,
        ok: bool,
    },
    /// Internal to a sink: a result could not be delivered (it goes to the dead letters).
    Undeliverable {
        ticket: u64,
        id: DocId,
        reason: String,
    },
    /// End of a finite input of `total` records: answer once all are written.
    End {
        total: u64,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// A document a source decoded itself (a Parquet row): no bytes to parse.
pub struct DocRecord {
    pub ticket: u64,
    pub id: DocId,
    pub text: String,
    pub est_tokens: usize,
}

pub enum CoordinatorMsg {
    Records(Vec<RawRecord>),
    Docs(Vec<DocRecord>),
    /// No more records are coming for now: send partial batches.
    Flush,
}

pub struct CoordinatorArgs {
    pub pipeline: Pipeline,
    pub sink: ActorRef<SinkMsg>,
    pub modes: Modes,
    pub max_length: usize,
    pub max_record_bytes: usize,
    /// Dead-letter empty and blank texts (a stream's) instead of embedding them (a file's).
    pub reject_blank: bool,
    pub flight: Arc<InFlight>,
}

pub struct Coordinator;

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorArgs;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<CoordinatorMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<CoordinatorMsg>,
        msg: CoordinatorMsg,
        st: &mut CoordinatorArgs,
    ) -> Result<(), ActorProcessingErr> {
        let docs: Vec<(u64, usize, Result<InputDoc, BadRecord>)> = match msg {
            CoordinatorMsg::Flush => {
                st.pipeline.flush();
                return Ok(());
            }
            CoordinatorMsg::Records(r) => r
                .into_iter()
                .map(|r| {
                    let doc = decode_record(&r.bytes, r.fallback_id, st.max_record_bytes);
                    (r.ticket, r.est_tokens, doc)
                })
                .collect(),
            CoordinatorMsg::Docs(d) => d
                .into_iter()
                .map(|d| {
                    let doc = InputDoc { id: d.id, text: d.text, modes: None, max_length: None };
                    (d.ticket, d.est_tokens, Ok(doc))
                })
                .collect(),
        };
        let metrics = st.pipeline.metrics().clone();
        metrics.records_in.inc_by(docs.len() as u64);
        let mut reqs = Vec::with_capacity(docs.len());
        let mut metas = Vec::with_capacity(docs.len());
        let mut decoded = Vec::with_capacity(docs.len());
        for (ticket, est_tokens, doc) in docs {
            match doc {
                Err(bad) => {
                    st.flight.correct_tokens(est_tokens, 0);
                    let _ = st.sink.send_message(SinkMsg::Bad {
                        ticket,
                        id: bad.id,
                        reason: bad.reason,
                    });
                }
                Ok(doc) if st.reject_blank && is_blank(&doc.text) => {
                    st.flight.correct_tokens(est_tokens, 0);
                    let reason = "empty text: nothing to embed".to_string();
                    let _ = st.sink.send_message(SinkMsg::Bad { ticket, id: doc.id, reason });
                }
                Ok(doc) => {
                    let modes = doc.modes.unwrap_or(st.modes);
                    let max_length = doc.max_length.unwrap_or(st.max_length).min(st.max_length);
                    decoded.push((ticket, doc.id.as_key()));
                    reqs.push((doc.text, modes, max_length));
                    metas.push((ticket, doc.id, est_tokens));
                }
            }
        }
        if !decoded.is_empty() {
            let _ = st.sink.send_message(SinkMsg::Decoded(decoded));
        }
        let prepared = st.pipeline.prepare(&reqs).await;
        let mut jobs = Vec::new();
        for (((ticket, id, est), p), (_, modes, _)) in metas.into_iter().zip(prepared).zip(&reqs) {
            let actual = match &p {
                Prepared::Miss { doc, .. } => doc.ids.len(),
                _ => 0,
            };
            st.flight.correct_tokens(est, actual);
            match p {
                Prepared::Hit(e) => {
                    let _ = st.sink.send_message(SinkMsg::Done {
                        ticket,
                        id,
                        outcome: Ok(e),
                        tokens: 0,
                    });
                }
                Prepared::Failed(reason) => {
                    let _ = st.sink.send_message(SinkMsg::Done {
                        ticket,
                        id,
                        outcome: Err(JobError::Tokenizer(reason)),
                        tokens: 0,
                    });
                }
                Prepared::Miss { doc, cache_key } => {
                    let n = doc.ids.len();
                    let sink = st.sink.clone();
                    jobs.push(st.pipeline.job(
                        doc,
                        *modes,
                        Priority::Stream,
                        cache_key,
                        move |outcome| {
                            let _ =
                                sink.send_message(SinkMsg::Done { ticket, id, outcome, tokens: n });
                        },
                    ));
                }
            }
        }
        st.pipeline.submit(jobs);
        Ok(())
    }
}
