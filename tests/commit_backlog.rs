//! `WORKER_CONCURRENCY` counts steps running; finished jobs awaiting their Postgres commit are
//! bounded apart, by `COMMIT_BACKLOG`. With commits blocked by a table lock held here, a worker
//! keeps running steps until it holds `WORKER_CONCURRENCY + COMMIT_BACKLOG` jobs, then stops
//! claiming; once the lock is released every job commits and settles, exactly once.

mod common;

use std::time::Duration;

use common::TestEnv;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use step_worker::worker::Running;

const WAIT: Duration = Duration::from_secs(30);
const JOBS: usize = 6;
/// How long the worker is watched for a claim it must not make. A free hold is used within
/// milliseconds (the claim loop waits on the capacity itself), so a claim beyond the bound
/// would show well inside this; it is an observation window, not a wait for an event.
const NO_CLAIM_WINDOW: Duration = Duration::from_millis(1500);

/// Blocks every write to `step_results` in an open transaction, until [`release`] rolls it
/// back. Reads still pass, the duplicate check's `FOR KEY SHARE` included (`SHARE` mode conflicts
/// with writes, not with row locks).
async fn block_commits(database_url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(database_url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE step_results IN SHARE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut locker: PgConnection) {
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();
}

/// Steps that have ended successfully on this worker (`step_worker_jobs_total`, counted when
/// the attempt ends, before its outcome is persisted).
async fn steps_ended(worker: &Running) -> f64 {
    let (_, text) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    text.lines()
        .filter(|l| l.starts_with("step_worker_jobs_total{") && l.contains(r#"outcome="succeeded""#))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// What the worker holds and where the rest of the jobs are, at one moment.
#[derive(Debug, PartialEq)]
struct State {
    held: i64,
    ready: i64,
    steps_ended: f64,
    rows: i64,
}

async fn state(env: &TestEnv, worker: &Running) -> State {
    State {
        held: env.in_flight_len().await,
        ready: env.ready_len().await,
        steps_ended: steps_ended(worker).await,
        rows: env.count("SELECT count(*) FROM step_results").await,
    }
}

/// Starts a worker with one run slot and `backlog`, blocks its commits, pushes [`JOBS`] jobs and
/// waits until it holds `1 + backlog` of them with their steps ended; checks that it claims no
/// more while commits stay blocked; then releases the lock and checks every job committed and
/// settled once. Returns the state seen while blocked.
async fn run_with_commits_blocked(backlog: usize) -> State {
    let env = TestEnv::new().await;
    let backlog_var = backlog.to_string();
    let worker = env
        .start(&[("WORKER_CONCURRENCY", "1"), ("COMMIT_BACKLOG", &backlog_var)])
        .await;
    let locker = block_commits(&env.database_url).await;
    for i in 0..JOBS {
        env.push_job(&format!("backlog-{i}"), "builtin.noop", json!({})).await;
    }
    let bound = 1 + backlog as i64;
    let full = State {
        held: bound,
        ready: JOBS as i64 - bound,
        steps_ended: bound as f64,
        rows: 0,
    };
    common::wait_for(&format!("{full:?}"), WAIT, || async {
        state(&env, &worker).await == full
    })
    .await;
    let window = tokio::time::Instant::now() + NO_CLAIM_WINDOW;
    while tokio::time::Instant::now() < window {
        let now = state(&env, &worker).await;
        assert_eq!(
            now, full,
            "the worker claimed beyond 1 + COMMIT_BACKLOG while its commits were blocked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    release(locker).await;
    env.wait_count(
        "every row once the lock is gone",
        "SELECT count(*) FROM step_results",
        JOBS as i64,
        WAIT,
    )
    .await;
    common::wait_for("every job settled", WAIT, || async {
        env.in_flight_len().await == 0 && env.ready_len().await == 0
    })
    .await;
    for i in 0..JOBS {
        let row = env.result(&format!("backlog-{i}")).await.unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("succeeded", 1), "backlog-{i}");
    }
    // /metrics is rendered at most once a second: wait for a rendering that includes the last
    // steps, then check no step ran twice (a re-run would count beyond JOBS).
    common::wait_for("every step counted", WAIT, || async {
        steps_ended(&worker).await >= JOBS as f64
    })
    .await;
    assert_eq!(steps_ended(&worker).await, JOBS as f64, "a step ran twice");
    worker.stop().await.unwrap();
    full
}

#[tokio::test]
async fn while_commits_are_blocked_steps_keep_running_up_to_the_commit_backlog() {
    let seen = run_with_commits_blocked(3).await;
    // One run slot, yet four steps ended before the first commit: each started while the
    // outcomes before it waited for theirs.
    assert_eq!((seen.held, seen.steps_ended, seen.rows), (4, 4.0, 0));
}

#[tokio::test]
async fn without_a_commit_backlog_a_finished_job_keeps_its_slot_until_committed() {
    let seen = run_with_commits_blocked(0).await;
    assert_eq!((seen.held, seen.steps_ended, seen.rows), (1, 1.0, 0));
}
