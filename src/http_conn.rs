//! Connections to the HTTP server, bounded: at most [`MAX_CONNECTIONS`] open at once, and none
//! idle for longer than [`IDLE_TIMEOUT`]. Anyone who can reach the port can open connections and
//! send nothing; unbounded, they use up the process's file descriptors and the platform's
//! `/health` probe is never accepted. When the limit is reached, a new connection closes the idle
//! one (nothing sent yet, or its last request answered) that has been quiet longest, so a probe
//! always gets in; a connection whose request is being answered is never closed for room.
//!
//! Twice [`MAX_CONNECTIONS`] is a hard bound: a connection is accepted only once it holds one of
//! that many slots, and an evicted connection gives its slot back when its socket is closed, not
//! when it is told to close. Without that, a backlog of held connections is accepted faster than
//! the evicted ones close, the process runs out of file descriptors, and every `accept` then
//! waits a second (axum's pause on `EMFILE`) while the probe waits in the backlog.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Connections open at once before idle ones are closed to make room (twice as many at most):
/// far more than probes and scrapers need, far below the usual file-descriptor limits (256 and
/// up), which the worker also needs for Redis, Postgres and steps.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection without a byte read or written for this long is closed: a request arrives whole
/// in well under a second, and keep-alive scrapers simply reconnect.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet this long, an unanswered connection may be closed to make room.
const EVICT_QUIET: Duration = Duration::from_millis(500);
/// How often the listener looks again for an idle connection to close when every slot is taken
/// by a request being answered, or after an `accept` failed for want of a file descriptor (other
/// parts of the worker may hold them): short, because a probe waits in the backlog meanwhile.
const RETRY_ROOM: Duration = Duration::from_millis(20);

/// What the listener knows of a connection: when it last moved, and a way to close it.
struct Conn {
    /// Milliseconds since the listener started.
    last_active: AtomicU64,
    /// Read part of a request and not yet answered it: such a connection is never evicted.
    busy: AtomicBool,
    evicted: AtomicBool,
    waker: AtomicWaker,
}

/// A [`TcpListener`] that keeps its connections within the bounds above.
pub struct BoundedListener {
    inner: TcpListener,
    started: Instant,
    conns: Arc<Mutex<Vec<Weak<Conn>>>>,
    /// `2 * MAX_CONNECTIONS` slots; each open connection holds one until its socket is closed.
    slots: Arc<Semaphore>,
    /// Whether the last `accept` failed for a reason other than the client's: logged once a run.
    failing: bool,
}

impl BoundedListener {
    pub fn new(inner: TcpListener) -> Self {
        BoundedListener {
            inner,
            started: Instant::now(),
            conns: Arc::default(),
            slots: Arc::new(Semaphore::new(2 * MAX_CONNECTIONS)),
            failing: false,
        }
    }

    /// A slot for the next connection: when all are taken, the quietest idle connection is closed
    /// and its slot awaited (looked for again every [`RETRY_ROOM`] while every one is busy).
    async fn slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return permit;
            }
            self.make_room(true);
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    return permit.expect("the listener never closes its semaphore");
                }
                _ = tokio::time::sleep(RETRY_ROOM) => {}
            }
        }
    }

    /// Makes room for one more connection by closing the one quiet longest; `force` closes the
    /// quietest idle one however recently it moved (the file descriptors matter more then).
    fn make_room(&self, force: bool) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        // An evicted connection no longer counts: it closes as soon as its task next runs.
        conns.retain(|c| c.upgrade().is_some_and(|c| !c.evicted.load(Ordering::Relaxed)));
        if conns.len() < MAX_CONNECTIONS && !force {
            return;
        }
        // A client sends its request as soon as it connects: one quiet for EVICT_QUIET is idle,
        // one accepted a moment ago may have its request on the way.
        let quiet_since = match force || conns.len() >= 2 * MAX_CONNECTIONS {
            true => u64::MAX,
            false => (self.started.elapsed().saturating_sub(EVICT_QUIET)).as_millis() as u64,
        };
        let quietest = conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.evicted.load(Ordering::Relaxed) && !c.busy.load(Ordering::Relaxed))
            .filter(|c| c.last_active.load(Ordering::Relaxed) <= quiet_since)
            .min_by_key(|c| c.last_active.load(Ordering::Relaxed));
        if let Some(c) = quietest {
            c.evicted.store(true, Ordering::Relaxed);
            c.waker.wake();
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr, slot) = loop {
            let slot = self.slot().await;
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    self.failing = false;
                    break (stream, addr, slot);
                }
                // The client gave up before it was accepted: nothing to do.
                Err(e) if is_client_error(&e) => {}
                // Out of file descriptors (the worker's other connections count too), or another
                // failure of the server's: close an idle connection and try again shortly.
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed; closing an idle one and retrying");
                    }
                    drop(slot);
                    self.make_room(true);
                    tokio::time::sleep(RETRY_ROOM).await;
                }
            }
        };
        self.make_room(false);
        let conn = Arc::new(Conn {
            last_active: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            busy: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&conn));
        let io = BoundedStream {
            inner: stream,
            _slot: slot,
            conn,
            started: self.started,
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Errors of one connection attempt, not of the listener (as hyper and axum classify them).
fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A connection that fails its next read or write once it is idle too long or evicted.
pub struct BoundedStream {
    inner: TcpStream,
    /// Given back when the stream, and with it the socket, is dropped.
    _slot: OwnedSemaphorePermit,
    conn: Arc<Conn>,
    started: Instant,
    idle: Pin<Box<Sleep>>,
}

impl BoundedStream {
    /// `Err` when the connection must close; otherwise registers for eviction and the idle timer.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.conn.waker.register(cx.waker());
        if self.conn.evicted.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closed to make room for a new connection",
            ));
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"));
        }
        Ok(())
    }

    fn moved(&mut self) {
        let now = self.started.elapsed();
        self.conn.last_active.store(now.as_millis() as u64, Ordering::Relaxed);
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.moved();
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.busy.store(true, Ordering::Relaxed);
        }
        self.track(cx, polled)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.busy.store(false, Ordering::Relaxed);
        }
        self.track(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{BoundedListener, IDLE_TIMEOUT, MAX_CONNECTIONS};

    /// Connections that send nothing, three times the hard bound of them, are all accepted, and
    /// the server never holds more than the bound open at once: an evicted connection's socket
    /// is closed before the one that replaces it is accepted.
    #[tokio::test]
    async fn open_connections_never_exceed_twice_the_limit_while_a_backlog_is_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded = BoundedListener::new(listener);
        // Connected while the server accepts: the kernel's accept queue may be shorter than this.
        let clients = tokio::spawn(async move {
            let mut clients = Vec::new();
            for _ in 0..3 * MAX_CONNECTIONS {
                clients.push(TcpStream::connect(addr).await.unwrap());
            }
            clients
        });
        let open = Arc::new(AtomicUsize::new(0));
        let mut most = 0;
        for _ in 0..3 * MAX_CONNECTIONS {
            let (mut server, _) = axum::serve::Listener::accept(&mut bounded).await;
            most = most.max(open.fetch_add(1, Ordering::SeqCst) + 1);
            let open = open.clone();
            // As a server's connection task: read until the connection fails, then drop it.
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while matches!(server.read(&mut byte).await, Ok(n) if n > 0) {}
                drop(server);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        assert!(most <= 2 * MAX_CONNECTIONS, "{most} connections open at once");
        drop(clients.await.unwrap());
    }

    /// A connection that sends nothing is closed after IDLE_TIMEOUT (on tokio's paused clock), and
    /// one that keeps moving is not, however long it lives.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_closed_after_idle_timeout_without_traffic_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded = BoundedListener::new(listener);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = axum::serve::Listener::accept(&mut bounded).await;
        let mut byte = [0u8; 1];

        // Three bytes 20 s apart: 60 s open, never 30 s quiet.
        for _ in 0..3 {
            tokio::time::sleep(IDLE_TIMEOUT * 2 / 3).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(
                server.read(&mut byte).await.unwrap(),
                1,
                "an active connection was closed"
            );
        }

        let quiet_from = tokio::time::Instant::now();
        let closed = server.read(&mut byte).await.unwrap_err();
        assert_eq!(closed.kind(), std::io::ErrorKind::TimedOut, "{closed}");
        assert!(
            quiet_from.elapsed() >= IDLE_TIMEOUT,
            "closed after {:?}",
            quiet_from.elapsed()
        );
    }
}
