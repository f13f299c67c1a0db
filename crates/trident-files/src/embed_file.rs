//! `trident embed`'s endpoints: a JSON Lines source (file or stdin) and an ordered sink (file or
//! stdout), around the shared coordinator → batcher → workers pipeline.
//!
//! Lines are numbered from 1; a line that is not a JSON object is the text itself with its line
//! number as id. Output lines come in input order: the sink keeps a reorder buffer, and the
//! source stops reading while too much is in flight (records or tokens), so memory stays bounded
//! on an input of any size.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use trident_core::types::error_json;
use trident_core::{DocId, Encoding, Format, Modes, Record};

use trident_engine::coordinator::{
    Coordinator, CoordinatorArgs, CoordinatorMsg, RawRecord, SinkMsg,
};
use trident_engine::flight::{FlightLimits, InFlight};
use trident_engine::{EngineError, Pipeline};

pub struct EmbedFileOptions {
    pub modes: Modes,
    pub max_length: usize,
    pub max_record_bytes: usize,
    pub limits: FlightLimits,
    /// Called with the number of lines written so far (a progress bar).
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Name of the input for messages ("-" for stdin).
    pub input_name: String,
    /// How results are written: format and vector encodings.
    pub format: Format,
    pub encoding: Encoding,
}

/// One output record in `format`, with its separator (JSON formats are lines; msgpack values
/// are concatenated). A failed record is `{"id", "error"}` in the same format.
pub fn output_record(
    format: Format,
    enc: Encoding,
    id: &DocId,
    outcome: Result<trident_core::Embedding, String>,
) -> Vec<u8> {
    let mut out = match outcome {
        Ok(mut e) => {
            enc.apply(&mut e);
            Record { id, e: &e, enc, note: None, version: None }.write(format)
        }
        Err(reason) if format.is_binary() => error_msgpack(id, &reason),
        Err(reason) => error_json(id, &reason).into_bytes(),
    };
    if !format.is_binary() {
        out.push(b'\n');
    }
    out
}

/// `{"id": .., "error": ..}` as a MessagePack map.
fn error_msgpack(id: &DocId, reason: &str) -> Vec<u8> {
    use rmp::encode as w;
    let mut out = Vec::with_capacity(reason.len() + 64);
    w::write_map_len(&mut out, 2).unwrap();
    w::write_str(&mut out, "id").unwrap();
    match id {
        DocId::Str(s) => w::write_str(&mut out, s).unwrap(),
        DocId::Num(n) => match n.as_u64() {
            Some(u) => w::write_uint(&mut out, u).map(|_| ()).unwrap(),
            None => w::write_str(&mut out, &n.to_string()).unwrap(),
        },
    }
    w::write_str(&mut out, "error").unwrap();
    w::write_str(&mut out, reason).unwrap();
    out
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct EmbedSummary {
    #[serde(rename = "rows")]
    pub records: u64,
    pub failed: u64,
    /// Tokens encoded (cache hits and failures count none).
    pub tokens: u64,
    /// CPU seconds spent splitting the input into lines and formatting and writing the output
    /// records (each line's JSON is decoded by the coordinator, as for Kafka, and not counted).
    pub format_seconds: f64,
}

/// Read one line of at most `max` bytes (the rest of a longer line is skipped). Returns the
/// kept bytes without the line break and the line's full length, or `None` at end of input.
pub fn read_capped_line(
    r: &mut dyn BufRead,
    max: usize,
) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        total += chunk.len();
        let used = chunk.len() + found as usize;
        r.consume(used);
        if found {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if line.last() == Some(&b'\r') && total <= max + 1 {
        line.pop();
        total -= 1;
    }
    Ok(Some((line, total)))
}

struct OrderedSink;

struct OrderedState {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    next: u64,
    pending: BTreeMap<u64, (Vec<u8>, bool, usize)>,
    format: Format,
    encoding: Encoding,
    summary: EmbedSummary,
    write_error: Option<String>,
    flight: Arc<InFlight>,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    end: Option<(u64, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    summary_out: Arc<std::sync::Mutex<EmbedSummary>>,
}

impl OrderedState {
    fn drain(&mut self) {
        let t0 = crate::cpu_clock::thread_seconds();
        while let Some((line, failed, tokens)) = self.pending.remove(&self.next) {
            if self.write_error.is_none() {
                if let Err(e) = self.out.write_all(&line) {
                    self.write_error = Some(e.to_string());
                }
            }
            self.next += 1;
            self.summary.records += 1;
            self.summary.failed += failed as u64;
            // What it held in flight is released either way; only encoded tokens count.
            if !failed {
                self.summary.tokens += tokens as u64;
            }
            self.flight.release(1, tokens, 0);
        }
        if let Some(p) = &self.progress {
            p(self.summary.records);
        }
        let done = self.end.as_ref().is_some_and(|(total, _)| self.summary.records >= *total);
        let flushed = if done { self.out.flush().map_err(|e| e.to_string()) } else { Ok(()) };
        self.summary.format_seconds += (crate::cpu_clock::thread_seconds() - t0).max(0.0);
        if done {
            let (_, reply) = self.end.take().unwrap();
            *self.summary_out.lock().unwrap() = self.summary;
            let _ = reply.send(match self.write_error.take() {
                Some(e) => Err(e),
                None => flushed,
            });
        }
    }
}

impl Actor for OrderedSink {
    type Msg = SinkMsg;
    type State = OrderedState;
    type Arguments = OrderedState;

    async fn pre_start(
        &self,
        _me: ActorRef<SinkMsg>,
        st: OrderedState,
    ) -> Result<OrderedState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        _me: ActorRef<SinkMsg>,
        msg: SinkMsg,
        st: &mut OrderedState,
    ) -> Result<(), ActorProcessingErr> {
        let mut spent = 0.0;
        crate::cpu_clock::charge(&mut spent, || match msg {
            SinkMsg::Done { ticket, id, outcome, tokens } => {
                let failed = outcome.is_err();
                let outcome = outcome.map_err(|e| e.to_string());
                let bytes = output_record(st.format, st.encoding, &id, outcome);
                st.pending.insert(ticket, (bytes, failed, tokens));
            }
            SinkMsg::Bad { ticket, id, reason } => {
                let bytes = output_record(st.format, st.encoding, &id, Err(reason));
                st.pending.insert(ticket, (bytes, true, 0));
            }
            SinkMsg::Delivered { .. } | SinkMsg::Decoded(_) | SinkMsg::Undeliverable { .. } => {}
            SinkMsg::End { total, reply } => st.end = Some((total, reply)),
        });
        st.summary.format_seconds += spent;
        // Writing (and the final flush, which publishes the summary) is charged in `drain`.
        st.drain();
        Ok(())
    }
}

/// Embed every line of `input` into `output`, in order. Fails (before writing anything) on an
/// empty input; bad lines become error records and are counted in the summary.
pub async fn embed_file(
    pipeline: &Pipeline,
    input: Box<dyn BufRead + Send>,
    output: Box<dyn Write + Send>,
    opts: EmbedFileOptions,
) -> Result<EmbedSummary, EngineError> {
    let flight = Arc::new(InFlight::default());
    let summary_out = Arc::new(std::sync::Mutex::new(EmbedSummary::default()));
    let sink_state = OrderedState {
        out: std::io::BufWriter::with_capacity(1 << 20, output),
        next: 1,
        pending: BTreeMap::new(),
        format: opts.format,
        encoding: opts.encoding,
        summary: EmbedSummary::default(),
        write_error: None,
        flight: flight.clone(),
        progress: opts.progress.clone(),
        end: None,
        summary_out: summary_out.clone(),
    };
    let actor_err = |e: ractor::SpawnErr| EngineError::Actor(e.to_string());
    let (sink, sink_join) = Actor::spawn(None, OrderedSink, sink_state).await.map_err(actor_err)?;
    let coord_args = CoordinatorArgs {
        pipeline: pipeline.clone(),
        sink: sink.clone(),
        modes: opts.modes,
        max_length: opts.max_length,
        max_record_bytes: opts.max_record_bytes,
        reject_blank: false,
        flight: flight.clone(),
    };
    let (coord, coord_join) =
        Actor::spawn(None, Coordinator, coord_args).await.map_err(actor_err)?;

    // The reader runs on a blocking thread; chunks cross a small bounded channel.
    const CHUNK: usize = 128;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<(Vec<u8>, usize)>>>(4);
    let max = opts.max_record_bytes;
    let reader = tokio::task::spawn_blocking(move || {
        let mut input = input;
        // Returns its thread's CPU time: splitting lines is the input format's cost.
        let t0 = crate::cpu_clock::thread_seconds();
        let spent = || crate::cpu_clock::thread_seconds() - t0;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let mut eof = false;
            while chunk.len() < CHUNK {
                match read_capped_line(&mut *input, max) {
                    Ok(Some(line)) => chunk.push(line),
                    Ok(None) => {
                        eof = true;
                        break;
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return spent();
                    }
                }
            }
            if (!chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err()) || eof {
                return spent();
            }
        }
    });

    let mut line_no: u64 = 0;
    let mut result = Ok(());
    while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                result = Err(EngineError::Io { path: opts.input_name.clone(), source: e });
                break;
            }
        };
        while flight.above_high(&opts.limits) {
            flight.wait_below_low(&opts.limits).await;
        }
        let recs: Vec<RawRecord> = chunk
            .into_iter()
            .map(|(mut bytes, len)| {
                line_no += 1;
                if len > bytes.len() {
                    // Over the limit: keep the true length visible to the validator.
                    bytes.resize(max + 1, 0);
                }
                RawRecord {
                    ticket: line_no,
                    bytes: bytes.into(),
                    fallback_id: DocId::from(line_no),
                    est_tokens: 0,
                }
            })
            .collect();
        flight.add_records(recs.len());
        let _ = coord.send_message(CoordinatorMsg::Records(recs));
    }
    let read_seconds = reader.await.unwrap_or(0.0);
    if result.is_ok() && line_no == 0 {
        result = Err(EngineError::Input(format!(
            "{}: the input is empty (expected JSON Lines: one document per line)",
            opts.input_name
        )));
    }
    let _ = coord.send_message(CoordinatorMsg::Flush);
    let written = if result.is_ok() {
        let (reply, done) = tokio::sync::oneshot::channel();
        let _ = sink.send_message(SinkMsg::End { total: line_no, reply });
        done.await.map_err(|_| EngineError::Actor("the output sink stopped".into()))?
    } else {
        Ok(())
    };
    coord.stop(None);
    sink.stop(None);
    let _ = coord_join.await;
    let _ = sink_join.await;
    result?;
    written
        .map_err(|e| EngineError::Io { path: "output".into(), source: std::io::Error::other(e) })?;
    let mut s = *summary_out.lock().unwrap();
    s.format_seconds += read_seconds;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines() {
        let mut r = std::io::Cursor::new(b"ab\r\ncdefgh\n\nlast".to_vec());
        let mut lines = Vec::new();
        while let Some(l) = read_capped_line(&mut r, 4).unwrap() {
            lines.push(l);
        }
        assert_eq!(
            lines,
            vec![
                (b"ab".to_vec(), 2),
                (b"cdefg".to_vec(), 6),
                (b"".to_vec(), 0),
                (b"last".to_vec(), 4)
            ]
        );
    }
}
