//! Test-only fault injection for workers, compiled in only with the `fault-injection` feature.
//!
//! `TRIDENT_FAULT_INJECT` holds comma-separated rules:
//! - `fail-batches=N`: the first N first attempts of batches panic inside the worker (the worker
//!   is restarted and the batch retried, on another worker if there is one, and succeeds);
//! - `poison=MARKER`: any batch holding a record whose text contains MARKER panics on every
//!   worker (the batch is retried, then split until the record, failing alone on two workers or
//!   twice on the only one, is dead-lettered).
//!
//! Without the feature, [`poison_marker`] is always `None` and [`before_encode`] does nothing.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    struct Rules {
        fail_batches: usize,
        poison: Option<String>,
    }

    static RULES: OnceLock<Rules> = OnceLock::new();
    static FAILED: AtomicUsize = AtomicUsize::new(0);

    fn rules() -> &'static Rules {
        RULES.get_or_init(|| {
            let spec = std::env::var("TRIDENT_FAULT_INJECT").unwrap_or_default();
            let mut r = Rules { fail_batches: 0, poison: None };
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                match part.split_once('=') {
                    Some(("fail-batches", n)) => r.fail_batches = n.parse().unwrap_or(0),
                    Some(("poison", m)) => r.poison = Some(m.to_string()),
                    _ => tracing::warn!("TRIDENT_FAULT_INJECT: unknown rule {part:?}"),
                }
            }
            r
        })
    }

    pub fn poison_marker() -> Option<&'static str> {
        rules().poison.as_deref()
    }

    pub fn before_encode(has_poison: bool, attempts: u32) {
        if has_poison {
            panic!("fault injection: poison record in batch");
        }
        let r = rules();
        if attempts == 0
            && r.fail_batches > 0
            && FAILED.fetch_add(1, Ordering::SeqCst) < r.fail_batches
        {
            panic!("fault injection: worker failure");
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    pub fn poison_marker() -> Option<&'static str> {
        None
    }

    pub fn before_encode(_has_poison: bool, _attempts: u32) {}
}

pub use imp::{before_encode, poison_marker};

/// Whether `text` carries the poison marker (always false without the feature).
pub fn is_poison(text: &str) -> bool {
    poison_marker().is_some_and(|m| text.contains(m))
}
