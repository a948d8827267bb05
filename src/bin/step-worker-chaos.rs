//! `step-worker-chaos`: the fault suite's worker (`tests/chaos`), not a product binary. It is the
//! ordinary worker (same library, same configuration variables, same startup and shutdown) with
//! two extra native steps the suite's workload is made of:
//!
//! - `chaos.exec` `{"ms": n, "fail": k}`: sleeps n ms, failing (retryably) its first k attempts.
//!   Every execution appends a start line and an end line to an execution log, so the suite can
//!   count executions apart from the one result row per job: duplicates (the same attempt run
//!   twice) and overlaps (two executions of one job at the same time).
//! - `chaos.abort`: a poison pill. It logs its start and aborts the whole process.
//! - `chaos.block` `{"ms": n}`: blocks its thread for n ms (`std::thread::sleep`, no await
//!   point), as a native step with blocking code does; logged like `chaos.exec`.
//!
//! The execution log is a file per process, `$CHAOS_EXEC_LOG_DIR/exec-<pid>.log`, appended with
//! one `write` per line (no user-space buffer, so a SIGKILL loses nothing already logged). It is
//! a file rather than a table so that the Postgres faults the suite injects cannot disturb the
//! measurement itself. Lines: `S <job> <attempt> <pid> <unix µs>` at the start and
//! `E <job> <attempt> <pid> <unix µs> <ok|failed|dropped>` at the end; `dropped` means the worker
//! stopped the execution early (lost lease, shutdown, timeout), which the end guard records when
//! the step's future is dropped.

use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use step_worker::{Config, Registry, Shutdown, StepContext, StepError, StepResult, telemetry};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let log = match ExecLog::open() {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("cannot open the execution log: {e}");
            return ExitCode::from(2);
        }
    };
    // The fault suite exports no traces; the handle only keeps the types honest.
    let _telemetry = telemetry::init(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let shutdown = Shutdown::new();
            shutdown.listen_for_signals()?;
            step_worker::worker::run(config, registry(log), shutdown).await
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn registry(log: Arc<ExecLog>) -> Registry {
    let abort_log = log.clone();
    let block_log = log.clone();
    Registry::new()
        .register("chaos.exec", move |ctx: StepContext, input: Value| {
            let log = log.clone();
            async move { exec(&log, ctx, input).await }
        })
        .register("chaos.abort", move |ctx: StepContext, _input: Value| {
            let log = abort_log.clone();
            async move { poison(&log, ctx).await }
        })
        .register("chaos.block", move |ctx: StepContext, input: Value| {
            let log = block_log.clone();
            async move { block(&log, ctx, input) }
        })
}

/// Blocks the thread that polls it: the runtime can run nothing else on that thread meanwhile.
fn block(log: &Arc<ExecLog>, ctx: StepContext, input: Value) -> StepResult {
    let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
    let pid = std::process::id();
    let mut end = EndGuard::started(log, &ctx);
    std::thread::sleep(Duration::from_millis(ms));
    end.outcome = "ok";
    Ok(json!({ "job": ctx.job_id, "attempt": ctx.attempt, "pid": pid }))
}

/// Logs the start, then takes the whole process down, as a step with a fatal bug would.
async fn poison(log: &ExecLog, ctx: StepContext) -> StepResult {
    log.line(&format!(
        "S {} {} {} {}",
        ctx.job_id,
        ctx.attempt,
        std::process::id(),
        now_us()
    ));
    std::process::abort()
}

async fn exec(log: &Arc<ExecLog>, ctx: StepContext, input: Value) -> StepResult {
    let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
    let fail = input.get("fail").and_then(Value::as_u64).unwrap_or(0);
    let pid = std::process::id();
    let mut end = EndGuard::started(log, &ctx);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = ctx.cancel.cancelled() => return Err(StepError::retryable("cancelled")),
    }
    if u64::from(ctx.attempt) <= fail {
        end.outcome = "failed";
        return Err(StepError::retryable(format!(
            "chaos.exec fails attempt {}",
            ctx.attempt
        )));
    }
    end.outcome = "ok";
    Ok(json!({ "job": ctx.job_id, "attempt": ctx.attempt, "pid": pid }))
}

/// Writes the end line however the execution ends, including when the worker drops the step's
/// future (interrupt, timeout).
struct EndGuard {
    log: Arc<ExecLog>,
    job: String,
    attempt: u32,
    outcome: &'static str,
}

impl EndGuard {
    /// Writes the attempt's start line, and guards its end line (`dropped` unless set).
    fn started(log: &Arc<ExecLog>, ctx: &StepContext) -> Self {
        let pid = std::process::id();
        log.line(&format!("S {} {} {pid} {}", ctx.job_id, ctx.attempt, now_us()));
        EndGuard {
            log: log.clone(),
            job: ctx.job_id.clone(),
            attempt: ctx.attempt,
            outcome: "dropped",
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let pid = std::process::id();
        let (job, attempt, outcome) = (&self.job, self.attempt, self.outcome);
        self.log
            .line(&format!("E {job} {attempt} {pid} {} {outcome}", now_us()));
    }
}

struct ExecLog {
    file: Mutex<File>,
}

impl ExecLog {
    fn open() -> std::io::Result<Self> {
        let dir = std::env::var("CHAOS_EXEC_LOG_DIR").unwrap_or_else(|_| ".".to_owned());
        let path = std::path::Path::new(&dir).join(format!("exec-{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(ExecLog { file: Mutex::new(file) })
    }

    /// One line, one `write`: job ids in the suite's workload contain no spaces or newlines.
    fn line(&self, line: &str) {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = (&*file).write_all(buf.as_bytes()) {
            eprintln!("execution log write failed: {e}");
        }
    }
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}
