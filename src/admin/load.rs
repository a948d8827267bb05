//! `step-worker smoke` (one job through the live system: the deployment check) and
//! `step-worker load` (a load generator that reports from the result rows).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::{Admin, progress};

/// How often result rows are polled while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Jobs pushed per Redis command.
const PUSH_BATCH: usize = 1000;

/// Enqueues a `builtin.noop` job with a unique id and waits for its `succeeded` row.
pub async fn smoke(admin: &Admin, timeout: Duration) -> anyhow::Result<()> {
    let id = format!("smoke-{}", uuid::Uuid::now_v7());
    let job = json!({"id": id, "step": "builtin.noop", "input": {"smoke": true}, "enqueued_at": chrono::Utc::now().timestamp_millis()});
    let started = Instant::now();
    admin.queue.push(job.to_string().as_bytes()).await?;
    while started.elapsed() < timeout {
        let mut s = admin.pg.scope().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM step_results WHERE job_id = $1")
            .bind(&id)
            .persistent(s.cache())
            .fetch_optional(s.conn())
            .await?;
        s.finish().await?;
        match status.as_deref() {
            Some("succeeded") => {
                println!("smoke job {id} succeeded in {} ms", started.elapsed().as_millis());
                return Ok(());
            }
            Some(other) => bail!("smoke job {id} ended {other}"),
            None => tokio::time::sleep(POLL).await,
        }
    }
    bail!(
        "smoke job {id} had no result after {} s: are workers running on {}?",
        timeout.as_secs(),
        admin.config.queue_key
    )
}

/// Seconds, from the result rows of one load run.
#[derive(sqlx::FromRow)]
struct LoadReport {
    span: Option<f64>,
    e2e50: Option<f64>,
    e2e99: Option<f64>,
    wait50: Option<f64>,
    wait99: Option<f64>,
    ok: i64,
}

pub struct Load {
    pub jobs: u64,
    /// Jobs per second; `None` pushes everything at once.
    pub rate: Option<f64>,
    pub step: String,
    pub input: Value,
    pub timeout: Duration,
}

/// Pushes the jobs (tagged with one run id), waits for their rows, and reports throughput and
/// latency from the rows themselves.
pub async fn load(admin: &Admin, l: Load) -> anyhow::Result<()> {
    let run = format!("load-{}", uuid::Uuid::now_v7());
    let started = Instant::now();
    let bar = progress(l.jobs, "enqueue");
    let mut next = 0u64;
    while next < l.jobs {
        let n = match l.rate {
            Some(rate) => (((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(l.jobs)).saturating_sub(next),
            None => (l.jobs - next).min(PUSH_BATCH as u64),
        };
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let payloads: Vec<Vec<u8>> = (next..next + n)
            .map(|i| {
                json!({"id": format!("{run}-{i}"), "step": l.step, "run_id": run, "input": l.input, "enqueued_at": now})
                    .to_string()
                    .into_bytes()
            })
            .collect();
        admin.queue.push_many(&payloads).await?;
        next += n;
        bar.set_position(next);
    }
    bar.finish_and_clear();
    let bar = progress(l.jobs, "results");
    let done = loop {
        let mut s = admin.pg.scope().await?;
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM step_results WHERE run_id = $1")
            .bind(&run)
            .persistent(s.cache())
            .fetch_one(s.conn())
            .await?;
        s.finish().await?;
        bar.set_position(done as u64);
        if done as u64 >= l.jobs || started.elapsed() > l.timeout {
            break done;
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    let mut s = admin.pg.scope().await?;
    let row: LoadReport = sqlx::query_as(
        "SELECT extract(epoch FROM max(finished_at) - min(enqueued_at))::float8 AS span, \
         percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at))::float8 AS e2e50, \
         percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at))::float8 AS e2e99, \
         percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at))::float8 AS wait50, \
         percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at))::float8 AS wait99, \
         count(*) FILTER (WHERE status = 'succeeded') AS ok \
         FROM step_results WHERE run_id = $1",
    )
    .bind(&run)
    .persistent(s.cache())
    .fetch_one(s.conn())
    .await?;
    s.finish().await?;
    let LoadReport {
        span,
        e2e50,
        e2e99,
        wait50,
        wait99,
        ok,
    } = row;
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{:.1} ms", s * 1000.0));
    println!(
        "run {run}: {done}/{} results ({ok} succeeded) for step {}",
        l.jobs, l.step
    );
    if let Some(span) = span.filter(|s| *s > 0.0) {
        println!("throughput      {:.0} jobs/s", done as f64 / span);
    }
    println!("queue wait      p50 {}  p99 {}", ms(wait50), ms(wait99));
    println!("end to end      p50 {}  p99 {}", ms(e2e50), ms(e2e99));
    if (done as u64) < l.jobs {
        bail!(
            "only {done} of {} jobs finished within {} s",
            l.jobs,
            l.timeout.as_secs()
        );
    }
    Ok(())
}
