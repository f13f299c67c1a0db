//! Fault injection into a running binary, for the integration tests that kill workers and feed
//! poison records through `trident embed` and `trident node`. The composition root passes the
//! `TRIDENT_FAULT_INJECT` rules here; the workers are wrapped in [`crate::testing::Faulty`]
//! embedders — the production types carry no test hooks. Rules, comma-separated:
//! - `fail-batches=N`: the first N batches encoded (across restarts) panic;
//! - `poison=MARKER`: any batch holding a record whose text contains MARKER panics.
//!
//! Only builds with the `testing` feature (the binary's test builds) can inject; others log a
//! warning and run unchanged.

use trident_model::Tokenizer;

use crate::job::WorkerSpec;

#[cfg(feature = "testing")]
pub fn inject(workers: Vec<WorkerSpec>, rules: &str, tokenizer: &Tokenizer) -> Vec<WorkerSpec> {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use crate::testing::{wrap, CallLog, Faults};

    let mut faults = Faults { panic: true, ..Faults::default() };
    for part in rules.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("fail-batches", n)) => {
                faults.flaky = Some(Arc::new(AtomicUsize::new(n.parse().unwrap_or(0))))
            }
            // The marker's ids without the specials: SentencePiece gives a word the same pieces
            // at the start of a text as after a space.
            Some(("poison", m)) => match tokenizer.encode(m, usize::MAX) {
                Ok(doc) if doc.ids.len() > 2 => {
                    faults.poison_ids = Some(doc.ids[1..doc.ids.len() - 1].to_vec())
                }
                _ => tracing::warn!("TRIDENT_FAULT_INJECT: cannot tokenize marker {m:?}"),
            },
            _ => tracing::warn!("TRIDENT_FAULT_INJECT: unknown rule {part:?}"),
        }
    }
    tracing::warn!("fault injection on: {rules}");
    let log = CallLog::default();
    workers.into_iter().enumerate().map(|(i, w)| wrap(w, i, faults.clone(), log.clone())).collect()
}

#[cfg(not(feature = "testing"))]
pub fn inject(workers: Vec<WorkerSpec>, rules: &str, _tokenizer: &Tokenizer) -> Vec<WorkerSpec> {
    tracing::warn!(
        "TRIDENT_FAULT_INJECT={rules:?} ignored: fault injection is only in test builds"
    );
    workers
}
