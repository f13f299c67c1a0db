//! `trident serve` on the tiny fixture model, driven by a real HTTP client over loopback:
//! every endpoint, every error path, auth, the in-flight limit, lookups from a real
//! `redis-server`, and concurrent requests sharing encoder batches (seen in /metrics).
//!
//! Each test starts its own server process on a free port (nextest runs tests in separate
//! processes) and kills it when done.
//!
//! The tests are grouped by concern: `endpoints` (what each endpoint answers), `errors` (error
//! paths, auth, overload), `encodings` (stored embeddings), `lookup` (the Redis result store),
//! `limits` (slow clients, timeouts, caps); `server` runs the server for them.

#[path = "../common/mod.rs"]
mod common;
mod encodings;
mod endpoints;
mod errors;
mod limits;
mod lookup;
mod server;
