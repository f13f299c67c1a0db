//! Per-connection deadlines. A connection is, at any moment, receiving a request head (from
//! when it opens, or from the first byte of a later request), busy (a request being answered,
//! its response being written) or idle (kept alive between requests). Each state has its own
//! deadline; reads or writes that stall past it fail with `TimedOut`, which makes hyper drop the
//! connection. Hyper's own `header_read_timeout` also runs while a connection is idle, so it
//! cannot tell a keep-alive connection waiting politely from a client dribbling a request head;
//! hence this wrapper.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a connection may stay in each state.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub idle: Duration,
    pub header: Duration,
    /// From the request head to the last byte of the response.
    pub request: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Idle(Instant),
    Head(Instant),
    Busy(Instant, usize),
}

/// The state shared by a connection's I/O and the requests it carries.
pub struct ConnState {
    phase: Mutex<Phase>,
    /// The connection task, woken when a request ends: its pending read was armed with the
    /// request's deadline and must be re-armed with the idle one.
    waker: Mutex<Option<Waker>>,
    limits: Deadlines,
    timed_out: IntCounterVec,
}

impl ConnState {
    pub fn new(limits: Deadlines, timed_out: IntCounterVec) -> Arc<ConnState> {
        // A new connection owes its first request head at once, as nginx's
        // `client_header_timeout` has it.
        let phase = Mutex::new(Phase::Head(Instant::now()));
        Arc::new(ConnState { phase, waker: Mutex::new(None), limits, timed_out })
    }

    /// Marks a request as started; the connection is busy until the guard drops (with the
    /// response body, once written).
    pub fn begin(self: &Arc<Self>) -> BusyGuard {
        let mut p = self.phase.lock().unwrap();
        *p = match *p {
            Phase::Busy(since, n) => Phase::Busy(since, n + 1),
            _ => Phase::Busy(Instant::now(), 1),
        };
        BusyGuard(self.clone())
    }

    fn bytes_read(&self) {
        let mut p = self.phase.lock().unwrap();
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
        }
    }

    /// The current deadline, with the phase and setting to blame when it passes.
    fn deadline(&self) -> (Instant, &'static str, &'static str, Duration) {
        let l = &self.limits;
        match *self.phase.lock().unwrap() {
            Phase::Idle(t) => (t + l.idle, "idle", "--idle-timeout-secs", l.idle),
            Phase::Head(t) => (t + l.header, "header", "--header-timeout-secs", l.header),
            // A second more, so the request-timeout middleware's 503 gets written first.
            Phase::Busy(t, _) => (
                t + l.request + Duration::from_secs(1),
                "request",
                "--request-timeout-secs",
                l.request,
            ),
        }
    }
}

/// Held while a request is in progress.
pub struct BusyGuard(Arc<ConnState>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut p = self.0.phase.lock().unwrap();
        if let Phase::Busy(since, n) = *p {
            *p = if n > 1 { Phase::Busy(since, n - 1) } else { Phase::Idle(Instant::now()) };
        }
        drop(p);
        if let Some(w) = self.0.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// A stream whose stalled reads and writes fail once the connection's deadline passes.
pub struct Guarded<T> {
    io: T,
    state: Arc<ConnState>,
    sleep: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    pub fn new(io: T, state: Arc<ConnState>) -> Guarded<T> {
        Guarded { io, state, sleep: Box::pin(tokio::time::sleep(Duration::ZERO)) }
    }

    /// Called when the inner stream is not ready: arms the timer; the error once it has fired.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let (at, phase, flag, limit) = self.state.deadline();
        let mut waker = self.state.waker.lock().unwrap();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        drop(waker);
        if self.sleep.deadline() != at {
            self.sleep.as_mut().reset(at);
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.state.timed_out.with_label_values(&[phase]).inc();
        let msg = format!("{phase} timeout: connection closed after {limit:?} ({flag})");
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, msg))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Pending => me.check(cx).map(Err),
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                me.state.bytes_read();
                Poll::Ready(Ok(()))
            }
            done => done,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_write(cx, buf) {
            Poll::Pending => me.check(cx).map(Err),
            done => done,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_flush(cx) {
            Poll::Pending => me.check(cx).map(Err),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => me.check(cx).map(Err),
            done => done,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
