//! The accept loop: a cap on open connections, per-connection deadlines (`conn`), and a
//! graceful shutdown that waits for open requests only up to a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::conn::{ConnState, Deadlines, Guarded};
use crate::Metrics;

/// Connection-level limits of a listener.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub deadlines: Deadlines,
    pub max_connections: usize,
    /// How long shutdown waits for open requests before closing their connections.
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets open
/// requests finish for up to `limits.shutdown_timeout`, and closes whatever is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut http = http1::Builder::new();
    // Deadlines are `conn`'s: hyper's header timer also runs while a connection is idle.
    http.header_read_timeout(None);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or the peer gave up: not fatal.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_rejected.inc();
            let _ = stream.try_write(&full_response());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(&http, stream, router.clone(), &limits, &metrics, &graceful);
        let open = metrics.connections_open.clone();
        open.inc();
        conns.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection closed: {e}");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    let open = conns.len();
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            "{} of {open} connections still open {:?} after shutdown began (--shutdown-timeout-secs); closing them",
            conns.len(),
            limits.shutdown_timeout
        );
    }
    conns.shutdown().await;
    metrics.connections_open.set(0);
    Ok(())
}

/// One HTTP/1 connection: the router behind the connection's deadlines, watched for shutdown.
fn connection(
    http: &http1::Builder,
    stream: TcpStream,
    router: Router,
    limits: &ConnLimits,
    metrics: &Metrics,
    graceful: &GracefulShutdown,
) -> impl Future<Output = Result<(), hyper::Error>> + Send + 'static {
    let state = ConnState::new(limits.deadlines, metrics.connections_timed_out.clone());
    let io = TokioIo::new(Guarded::new(stream, state.clone()));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = state.begin();
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(Body::new)).await?;
            // The body owns the guard: the connection stays busy until it is written or dropped.
            let (parts, body) = resp.into_parts();
            let body = body.map_frame(move |frame| {
                let _ = &busy;
                frame
            });
            Ok::<_, Infallible>(hyper::Response::from_parts(parts, Body::new(body)))
        }
    });
    graceful.watch(http.serve_connection(io, service))
}

/// The 503 a connection over the cap gets before it is closed (nothing of it is read).
fn full_response() -> Vec<u8> {
    let body = r#"{"error":{"message":"too many open connections (--max-connections); retry later","type":"unavailable"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
