//! A TCP proxy of the suite's own between the workers and a server, to partition them. A killed
//! server answers with a fast `ECONNREFUSED`; a lost route answers with silence, which is what
//! blocking calls and timeouts must survive. On [`Proxy::partition`] every open pair stops
//! copying (bytes wait in the buffers, no socket is closed, nothing is reset) and no connection
//! is accepted; [`Proxy::heal`] copies again, including what waited. It runs on a thread and
//! runtime of its own, so the suite's blocking waits (`Cluster::wait_up`) never stall it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    pub port: u16,
    cut: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, rx) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = accept(listener, upstream, rx) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every copying task, closing its sockets.
        });
        Proxy {
            port,
            cut,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn partition(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, upstream: u16, mut cut: watch::Receiver<bool>) {
    let mut pairs = JoinSet::new();
    loop {
        open(&mut cut).await;
        let Ok((down, _)) = listener.accept().await else {
            return;
        };
        // Accepted just as the partition began: hold it unserved, as a lost route would.
        open(&mut cut).await;
        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
            continue;
        };
        let (down_r, down_w) = down.into_split();
        let (up_r, up_w) = up.into_split();
        pairs.spawn(copy(down_r, up_w, cut.clone()));
        pairs.spawn(copy(up_r, down_w, cut.clone()));
        while pairs.try_join_next().is_some() {}
    }
}

/// Copies until either side closes, pausing while the link is cut.
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        open(&mut cut).await;
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // Reading is cancel-safe: nothing read is lost by stopping here.
            _ = cut.wait_for(|c| *c) => continue,
        };
        // A partition that began while reading holds these bytes until it heals.
        open(&mut cut).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits until the link is not cut.
async fn open(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| !*c).await;
}
