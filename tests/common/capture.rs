//! A local HTTP endpoint that records every request body it receives (a stand-in for Slack's
//! and Sentry's ingestion endpoints).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

/// A request as received: its path and body.
type Request = (String, Vec<u8>);

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<Request>>>);

impl Captured {
    /// Bodies received so far, as text, with the path they were posted to.
    pub fn bodies(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(p, b)| (p.clone(), String::from_utf8_lossy(b).into_owned()))
            .collect()
    }
}

/// Serves on a free loopback port until the test ends.
pub async fn start() -> (SocketAddr, Captured) {
    let captured = Captured::default();
    let app = Router::new().fallback(post(record)).with_state(captured.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, captured)
}

async fn record(State(c): State<Captured>, uri: axum::http::Uri, body: Bytes) -> &'static str {
    c.0.lock().unwrap().push((uri.path().to_owned(), body.to_vec()));
    "ok"
}
