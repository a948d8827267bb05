//! Shutdown signals. SIGTERM (Railway, Docker, Kubernetes), SIGINT (Fly's default, Ctrl-C) and
//! SIGHUP (a closing terminal, some supervisors; its default action would kill the process with
//! no drain) all start a graceful drain; a second signal skips the wait for running steps and
//! bounds the rest of the exit to two seconds (see `worker.rs`).

use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop claiming, finish or hand back running work, exit.
    pub graceful: CancellationToken,
    /// Stop waiting for running steps: hand them back now.
    pub hard: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels `graceful` on the first signal and `hard` on the second.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let this = self.clone();
        tokio::spawn(async move {
            for token in [&this.graceful, &this.hard] {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => "SIGHUP",
                };
                if token.is_cancelled() {
                    continue;
                }
                if std::ptr::eq(token, &this.graceful) {
                    tracing::info!(
                        signal = name,
                        "shutdown requested: no new jobs; running jobs may finish until SHUTDOWN_TIMEOUT_MS"
                    );
                } else {
                    tracing::warn!(signal = name, "second signal: handing running jobs back now");
                }
                token.cancel();
            }
        });
        Ok(())
    }
}
