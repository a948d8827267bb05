//! A scripted step endpoint: an axum app on 127.0.0.1:0 that records every request it receives
//! and answers each path with the replies its test scripted, in order (the last one repeats).
//! An unscripted path answers 200 with `{"served": "<path>"}`, so a test can see who served it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One request as the endpoint received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived, for gaps between requests...
    pub at: Instant,
    /// ...and on the wall clock, for comparing with HTTP dates.
    pub received: SystemTime,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the worker sends JSON")
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Full(Vec<u8>),
    /// Sent with chunked encoding (no Content-Length), 64 KiB at a time, up to this many bytes.
    Endless(usize),
    /// Never answers while the server lives.
    Hang,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    payload: Payload,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply::text(status, body.to_string()).header("content-type", "application/json")
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            payload: Payload::Full(body.into()),
        }
    }

    /// A body streamed without Content-Length that only stops after `bytes` (or when the client
    /// hangs up): a worker that buffered it whole would take far longer than any test deadline.
    pub fn endless(status: u16, bytes: usize) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            payload: Payload::Endless(bytes),
        }
    }

    pub fn hang() -> Self {
        Reply {
            status: 200,
            headers: Vec::new(),
            payload: Payload::Hang,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    release: CancellationToken,
    /// Bytes an endless body handed to the connection, and whether that body has been dropped
    /// (finished, or the client hung up).
    streamed: AtomicUsize,
    stream_ended: AtomicBool,
}

/// Marks the endless body as ended when the stream holding it is dropped.
struct EndOfStream(Arc<Shared>);

impl Drop for EndOfStream {
    fn drop(&mut self) {
        self.0.stream_ended.store(true, Ordering::SeqCst);
    }
}

pub struct StepServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl StepServer {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StepServer { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .insert(path.to_owned(), replies.into());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// How many bytes of an endless body were sent, once the body has ended (`None` before).
    pub fn streamed_bytes(&self) -> Option<usize> {
        self.shared
            .stream_ended
            .load(Ordering::SeqCst)
            .then(|| self.shared.streamed.load(Ordering::SeqCst))
    }
}

impl Drop for StepServer {
    fn drop(&mut self) {
        self.shared.release.cancel();
        self.task.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    shared.requests.lock().unwrap().push(Recorded {
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
        received: SystemTime::now(),
    });
    let reply = {
        let mut scripts = shared.scripts.lock().unwrap();
        match scripts.get_mut(&path) {
            Some(queue) if queue.len() > 1 => queue.pop_front().unwrap(),
            Some(queue) if !queue.is_empty() => queue[0].clone(),
            _ => Reply::json(200, json!({ "served": path })),
        }
    };
    let body = match reply.payload {
        Payload::Full(bytes) => Body::from(bytes),
        Payload::Endless(total) => {
            const CHUNK: usize = 64 * 1024;
            let end = EndOfStream(shared.clone());
            let chunks = futures::stream::iter(0..total.div_ceil(CHUNK)).map(move |_| {
                end.0.streamed.fetch_add(CHUNK, Ordering::SeqCst);
                Ok::<_, Infallible>(vec![b'a'; CHUNK])
            });
            Body::from_stream(chunks)
        }
        Payload::Hang => {
            shared.release.cancelled().await;
            Body::empty()
        }
    };
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    response.body(body).unwrap()
}
