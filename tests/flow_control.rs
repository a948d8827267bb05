//! Flow control across replicas: `STEP_CONCURRENCY` caps a step's attempts running at once
//! across every worker sharing the queue, without holding up other steps, and a dead worker's
//! slots are freed when it is reaped.

#[macro_use]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestEnv, WorkerProcess};
use redis::AsyncCommands;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn intervals(env: &TestEnv, step: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    env.step_intervals(step).await
}

/// The most intervals that overlap at one instant (an end and a start at the same instant do not).
fn max_overlap(intervals: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for (start, end) in intervals {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// `step-worker stats --json` with the given limits.
fn stats(env: &TestEnv, limits: &[(&str, &str)]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_step-worker"))
        .env_clear()
        .envs(env.vars())
        .envs(limits.iter().copied())
        .args(["stats", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn cap_used(env: &TestEnv, step: &str) -> i64 {
    let used: Option<i64> = env.redis.clone().hget(env.key("cap_used"), step).await.unwrap();
    used.unwrap_or(0)
}

#[tokio::test]
async fn a_capped_step_runs_at_most_its_cap_across_three_replicas_and_other_steps_are_not_delayed() {
    let env = TestEnv::new().await;
    let caps = [("STEP_CONCURRENCY", "builtin.sleep=3"), ("WORKER_CONCURRENCY", "10")];
    let _replicas: Vec<WorkerProcess> = (0..3).map(|_| WorkerProcess::spawn(&env, &caps)).collect();
    common::wait_for("three replicas to register", WAIT, || async {
        env.live_workers().await == 3
    })
    .await;
    // The capped jobs first: without caps, uncapped jobs behind them would wait their turn.
    for i in 0..60 {
        env.push_job(&format!("sleep-{i}"), "builtin.sleep", json!({"ms": 200}))
            .await;
    }
    for i in 0..200 {
        env.push_job(&format!("noop-{i}"), "builtin.noop", json!({})).await;
    }
    let highest = AtomicI64::new(0);
    common::wait_for("260 results", WAIT, || async {
        highest.fetch_max(cap_used(&env, "builtin.sleep").await, Ordering::Relaxed);
        env.count("SELECT count(*) FROM step_results").await >= 260
    })
    .await;
    let highest = highest.into_inner();
    assert!(highest <= 3, "slots held never pass the cap: {highest}");

    let sleeps = intervals(&env, "builtin.sleep").await;
    assert_eq!(sleeps.len(), 60);
    assert_eq!(max_overlap(&sleeps), 3, "the cap is reached and never exceeded");
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded' AND attempts = 1")
            .await,
        260,
        "waiting for a slot is not an attempt"
    );
    assert_eq!(env.count("SELECT count(*) FROM step_attempts").await, 0);
    // 60 jobs of 200 ms, 3 at a time, take 4 s at least; the noops are done long before.
    let noops = intervals(&env, "builtin.noop").await;
    let last_noop = noops.iter().map(|(_, end)| *end).max().unwrap();
    let tenth_sleep_end = {
        let mut ends: Vec<_> = sleeps.iter().map(|(_, end)| *end).collect();
        ends.sort();
        ends[9]
    };
    assert!(
        last_noop < tenth_sleep_end,
        "the noops ran beside the capped jobs, not after them: last noop {last_noop}, tenth sleep done {tenth_sleep_end}"
    );
    common::wait_for("the slots to be freed", WAIT, || async {
        cap_used(&env, "builtin.sleep").await == 0
    })
    .await;
    assert_eq!(env.llen(&env.key("throttled:builtin.sleep")).await, 0);
}

#[tokio::test]
async fn a_killed_replica_holding_slots_frees_them_when_it_is_reaped() {
    let env = TestEnv::new().await;
    let caps = [("STEP_CONCURRENCY", "builtin.sleep=3")];
    let mut doomed = WorkerProcess::spawn(&env, &caps);
    common::wait_for("the doomed replica to register", WAIT, || async {
        env.live_workers().await == 1
    })
    .await;
    for i in 0..3 {
        env.push_job(&format!("long-{i}"), "builtin.sleep", json!({"ms": 3000}))
            .await;
    }
    common::wait_for("the doomed replica to hold all three slots", WAIT, || async {
        cap_used(&env, "builtin.sleep").await == 3
    })
    .await;
    for i in 0..3 {
        env.push_job(&format!("short-{i}"), "builtin.sleep", json!({"ms": 100}))
            .await;
    }
    common::wait_for("the others to wait for a slot", WAIT, || async {
        env.llen(&env.key("throttled:builtin.sleep")).await == 3
    })
    .await;
    let limits = stats(
        &env,
        &[
            ("STEP_CONCURRENCY", "builtin.sleep=3"),
            ("STEP_RATE_LIMITS", "builtin.noop=5/1s"),
        ],
    );
    assert_eq!(
        limits["limits"],
        json!([
            {"step": "builtin.sleep", "kind": "concurrency", "limit": "3", "used": 3, "waiting": 3},
            {"step": "builtin.noop", "kind": "rate", "limit": "5/1000ms", "next_start_ms": 0, "waiting": 0},
        ]),
        "{limits}"
    );
    doomed.kill();
    let doomed_slots: Vec<String> = env.redis.clone().keys(env.key("slots:*")).await.unwrap();
    assert_eq!(doomed_slots.len(), 1, "the slots are recorded as the dead worker's");

    let _others: Vec<WorkerProcess> = (0..2).map(|_| WorkerProcess::spawn(&env, &caps)).collect();
    let highest = AtomicI64::new(0);
    common::wait_for(
        "the dead worker's slots to be freed and the cap reached again",
        WAIT,
        || async {
            let used = cap_used(&env, "builtin.sleep").await;
            highest.fetch_max(used, Ordering::Relaxed);
            let gone = !env.redis.clone().exists::<_, bool>(&doomed_slots[0]).await.unwrap();
            gone && used == 3
        },
    )
    .await;
    env.wait_count("six results", "SELECT count(*) FROM step_results", 6, WAIT)
        .await;
    let highest = highest.into_inner();
    assert!(highest <= 3, "slots held never pass the cap: {highest}");
    let sleeps = intervals(&env, "builtin.sleep").await;
    assert!(max_overlap(&sleeps) <= 3, "{sleeps:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded'")
            .await,
        6
    );
    common::wait_for("every slot to be freed", WAIT, || async {
        cap_used(&env, "builtin.sleep").await == 0
    })
    .await;
}

/// SIGSTOPs a replica past its deadline while it holds cap slots: the others take the slots over
/// when it is reaped, and when it wakes, fenced, it cannot push the slots held past the cap.
#[tokio::test]
async fn a_frozen_replica_cannot_exceed_the_cap_after_it_is_fenced() {
    let env = TestEnv::new().await;
    let caps = [("STEP_CONCURRENCY", "builtin.sleep=2")];
    let frozen = WorkerProcess::spawn(&env, &caps);
    common::wait_for("the replica to register", WAIT, || async {
        env.live_workers().await == 1
    })
    .await;
    for i in 0..2 {
        env.push_job(&format!("frozen-{i}"), "builtin.sleep", json!({"ms": 1500}))
            .await;
    }
    common::wait_for("the replica to hold both slots", WAIT, || async {
        cap_used(&env, "builtin.sleep").await == 2
    })
    .await;
    let pid = frozen.0.id() as i32;
    // SAFETY: a plain signal to a child process this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for i in 0..6 {
        env.push_job(&format!("later-{i}"), "builtin.sleep", json!({"ms": 300}))
            .await;
    }
    let frozen_slots: Vec<String> = env.redis.clone().keys(env.key("slots:*")).await.unwrap();
    assert_eq!(frozen_slots.len(), 1, "the slots are recorded as the frozen worker's");
    let _other = WorkerProcess::spawn(&env, &caps);
    let highest = AtomicI64::new(0);
    let sample = || async {
        let used = cap_used(&env, "builtin.sleep").await;
        highest.fetch_max(used, Ordering::Relaxed);
        used
    };
    common::wait_for("the frozen replica to be reaped and its slots taken", WAIT, || async {
        let gone = !env.redis.clone().exists::<_, bool>(&frozen_slots[0]).await.unwrap();
        sample().await == 2 && gone
    })
    .await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    common::wait_for("all eight jobs to finish", WAIT, || async {
        sample().await;
        env.count("SELECT count(*) FROM step_results").await == 8
    })
    .await;
    common::wait_for("every slot to be freed", WAIT, || async { sample().await == 0 }).await;
    let highest = highest.into_inner();
    assert!(highest <= 2, "slots held never pass the cap: {highest}");
    let sleeps = intervals(&env, "builtin.sleep").await;
    assert_eq!(sleeps.len(), 8, "{sleeps:?}");
    assert!(max_overlap(&sleeps) <= 2, "{sleeps:?}");
    drop(frozen);
}

/// Pausing a capped step still holds its jobs (none runs, none is an attempt, the slots are given
/// back), and after resuming they run within the cap.
#[tokio::test]
async fn pausing_a_capped_step_holds_its_jobs_and_resuming_runs_them_within_the_cap() {
    let env = TestEnv::new().await;
    let worker = env
        .start(&[("STEP_CONCURRENCY", "builtin.sleep=1"), ("WORKER_CONCURRENCY", "4")])
        .await;
    let out = env.cli(&["pause", "--step", "builtin.sleep"]).await;
    assert!(out.status.success(), "{out:?}");
    common::wait_for("the worker to see the paused step", WAIT, || async {
        let (_, body) = common::get(&format!("http://{}/health", worker.http_addr.unwrap())).await;
        body.contains("builtin.sleep")
    })
    .await;
    for i in 0..3 {
        env.push_job(&format!("held-{i}"), "builtin.sleep", json!({"ms": 200}))
            .await;
    }
    env.push_job("free", "builtin.noop", json!({})).await;
    assert_eq!(env.wait_result("free", WAIT).await.status, "succeeded");
    common::wait_for(
        "the paused step's jobs to be held, its slot given back",
        WAIT,
        || async { env.llen(&env.key("held:builtin.sleep")).await == 3 && cap_used(&env, "builtin.sleep").await == 0 },
    )
    .await;
    assert_eq!(env.count("SELECT count(*) FROM step_results").await, 1);
    let out = env.cli(&["resume", "--step", "builtin.sleep"]).await;
    assert!(out.status.success(), "{out:?}");
    env.wait_count("four results", "SELECT count(*) FROM step_results", 4, WAIT)
        .await;
    let sleeps = intervals(&env, "builtin.sleep").await;
    assert_eq!(max_overlap(&sleeps), 1, "{sleeps:?}");
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded' AND attempts = 1")
            .await,
        4,
        "holding is not an attempt"
    );
    worker.stop().await.unwrap();
}

/// One worker, one slot for the capped step: the capped jobs run one after another, the others
/// beside them, on either driver.
async fn a_capped_step_waits_for_its_slot_while_other_steps_run(env: TestEnv) {
    let worker = env
        .start(&[("STEP_CONCURRENCY", "builtin.sleep=1"), ("WORKER_CONCURRENCY", "4")])
        .await;
    for i in 0..4 {
        env.push_job(&format!("sleep-{i}"), "builtin.sleep", json!({"ms": 300}))
            .await;
    }
    for i in 0..20 {
        env.push_job(&format!("noop-{i}"), "builtin.noop", json!({})).await;
    }
    env.wait_count("24 results", "SELECT count(*) FROM step_results", 24, WAIT)
        .await;
    let sleeps = intervals(&env, "builtin.sleep").await;
    assert_eq!(max_overlap(&sleeps), 1, "{sleeps:?}");
    let last_noop = intervals(&env, "builtin.noop")
        .await
        .iter()
        .map(|(_, e)| *e)
        .max()
        .unwrap();
    assert!(last_noop < sleeps[1].1, "the noops did not wait behind the capped jobs");
    assert_eq!(
        env.count("SELECT count(*) FROM step_results WHERE status = 'succeeded' AND attempts = 1")
            .await,
        24
    );
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    let throttled = common::metric(
        &metrics,
        "step_worker_throttled_total{reason=\"concurrency\",step=\"builtin.sleep\"}",
    )
    .unwrap_or(0.0);
    assert!(throttled >= 3.0, "{metrics}");
    assert!(
        metrics.contains("step_worker_jobs_waiting{reason=\"concurrency\",step=\"builtin.sleep\"}")
            && metrics.contains("step_worker_concurrency_slots_used{step=\"builtin.sleep\"}"),
        "{metrics}"
    );
    worker.stop().await.unwrap();
}

/// The claim reads a job's step without decoding every payload: one whose step is written with
/// JSON escapes, or with spacing around its colon, is still counted against its step's cap.
async fn a_capped_step_is_capped_however_its_name_is_written(env: TestEnv) {
    let worker = env
        .start(&[("STEP_CONCURRENCY", "builtin.sleep=1"), ("WORKER_CONCURRENCY", "4")])
        .await;
    let spellings = [
        r#""step":"builtin\u002esleep""#,
        r#""step" : "builtin.sleep""#,
        r#""step":"\u0062uiltin.sleep""#,
        r#""step":"builtin.sleep""#,
    ];
    for (i, step) in spellings.iter().enumerate() {
        env.push(&format!(r#"{{"id":"spelt-{i}",{step},"input":{{"ms":300}}}}"#))
            .await;
    }
    env.wait_count("4 results", "SELECT count(*) FROM step_results", 4, WAIT)
        .await;
    let sleeps = intervals(&env, "builtin.sleep").await;
    assert_eq!(sleeps.len(), 4, "{sleeps:?}");
    assert_eq!(max_overlap(&sleeps), 1, "{sleeps:?}");
    worker.stop().await.unwrap();
}

/// Counts, with `redis-cli MONITOR`, the commands sent by the clients that name one queue's keys
/// (all their commands, so a `PING` counts too). Commands run inside scripts (`[0 lua]`) are not
/// sent, and are not counted.
struct CommandCounter {
    child: Child,
    counts: Option<std::thread::JoinHandle<u64>>,
}

impl CommandCounter {
    /// Returns once MONITOR sees commands (a marker `ECHO` is sent until it does).
    async fn start(env: &TestEnv) -> Self {
        // redis://host:port[/db]
        let authority = env.redis_url.trim_start_matches("redis://").split('/').next().unwrap();
        let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "6379"));
        let mut child = Command::new("redis-cli")
            .args(["-h", host, "-p", port, "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli is installed (scripts/test installs it)");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let queue_key = env.queue_key.clone();
        let marker = common::unique("monitor-attached-");
        let (attached_tx, attached) = std::sync::mpsc::channel();
        let seen_marker = marker.clone();
        let counts = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent: std::collections::HashMap<String, u64> = Default::default();
            let mut ours: std::collections::HashSet<String> = Default::default();
            for line in out.lines().map_while(Result::ok) {
                if line.contains(&seen_marker) {
                    let _ = attached_tx.send(());
                    continue;
                }
                // 1764556800.123456 [0 127.0.0.1:50000] "EVALSHA" "…" …
                let Some(client) = line
                    .split_once('[')
                    .and_then(|(_, r)| r.split_once(']'))
                    .map(|(c, _)| c)
                else {
                    continue;
                };
                if client.ends_with(" lua") {
                    continue;
                }
                *sent.entry(client.to_owned()).or_default() += 1;
                if line.contains(&queue_key) {
                    ours.insert(client.to_owned());
                }
            }
            sent.iter().filter(|(c, _)| ours.contains(*c)).map(|(_, n)| n).sum()
        });
        let counter = CommandCounter {
            child,
            counts: Some(counts),
        };
        let conn = env.redis.clone();
        common::wait_for("MONITOR to attach", WAIT, || {
            let mut conn = conn.clone();
            let marker = marker.clone();
            let attached = &attached;
            async move {
                let _: String = redis::cmd("ECHO").arg(&marker).query_async(&mut conn).await.unwrap();
                attached.recv_timeout(Duration::from_millis(100)).is_ok()
            }
        })
        .await;
        counter
    }

    /// Stops MONITOR and returns the count.
    fn stop(mut self) -> u64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.counts.take().unwrap().join().unwrap()
    }
}

impl Drop for CommandCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Jobs waiting on a cap cost no polling: with 2,000 jobs queued behind a cap of 2, the worker sends
/// at most README's budget of 3 Redis commands per completed job.
#[tokio::test]
async fn jobs_waiting_on_a_cap_cost_no_polling_storm() {
    let env = TestEnv::new().await;
    for i in 0..2000 {
        env.push_job(&format!("capped-{i}"), "builtin.sleep", json!({"ms": 5}))
            .await;
    }
    let counter = CommandCounter::start(&env).await;
    let worker = env
        .start(&[("STEP_CONCURRENCY", "builtin.sleep=2"), ("WORKER_CONCURRENCY", "8")])
        .await;
    env.wait_count("2,000 results", "SELECT count(*) FROM step_results", 2000, WAIT)
        .await;
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    worker.stop().await.unwrap();
    let sent = counter.stop();
    let throttled = common::metric(
        &metrics,
        "step_worker_throttled_total{reason=\"concurrency\",step=\"builtin.sleep\"}",
    )
    .unwrap_or(0.0);
    assert!(throttled >= 1900.0, "the jobs did not wait on the cap: {metrics}");
    let per_job = sent as f64 / 2000.0;
    eprintln!("{sent} commands sent for 2,000 capped jobs: {per_job:.2} a job");
    assert!(sent > 0, "MONITOR saw none of the worker's commands");
    assert!(per_job <= 3.0, "{sent} commands for 2,000 jobs: {per_job:.2} a job");
}

#[test]
fn an_invalid_limit_stops_startup_naming_the_variable_and_the_entry() {
    let out = common::step_worker(&[("STEP_CONCURRENCY", "email.send=5,charge=0")], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("STEP_CONCURRENCY") && stderr.contains("charge=0"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("email.send=5"),
        "only the bad entry is named: {stderr}"
    );
    let out = common::step_worker(&[("STEP_CONCURRENCY", "email.send=5,charge=2")], &["config", "check"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("STEP_CONCURRENCY=charge=2,email.send=5"), "{stdout}");

    let out = common::step_worker(
        &[("STEP_RATE_LIMITS", "email.send=10/1s,openai.chat=500/1w")],
        &["config", "check"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("STEP_RATE_LIMITS") && stderr.contains("openai.chat=500/1w"),
        "{stderr}"
    );
    let out = common::step_worker(
        &[("STEP_RATE_LIMITS", "email.send=10/1s,openai.chat=500/1m")],
        &["config", "check"],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("STEP_RATE_LIMITS=email.send=10/1000ms,openai.chat=500/60000ms"),
        "{stdout}"
    );
}

/// The most starts in any window of `window` beginning at a start.
fn busiest_window(intervals: &[(DateTime<Utc>, DateTime<Utc>)], window: Duration) -> usize {
    let starts: Vec<DateTime<Utc>> = intervals.iter().map(|(s, _)| *s).collect();
    let window = chrono::Duration::from_std(window).unwrap();
    starts
        .iter()
        .map(|s| starts.iter().filter(|t| **t >= *s && **t < *s + window).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_rate_limited_step_starts_at_its_rate_across_three_replicas() {
    let env = TestEnv::new().await;
    // The rate is admitted by the claim script; the duplicate check then runs between a job's
    // admission and its start, and its latency would blur the starts this measures (see
    // docs/flow-control.md, "Rates and the duplicate check"). The check is off here.
    let limit = [("STEP_RATE_LIMITS", "builtin.noop=20/1s"), ("DUPLICATE_CHECK", "off")];
    let replicas: Vec<WorkerProcess> = (0..3).map(|_| WorkerProcess::spawn(&env, &limit)).collect();
    common::wait_for("three replicas to register", WAIT, || async {
        env.live_workers().await == 3
    })
    .await;
    for i in 0..200 {
        env.push_job(&format!("noop-{i}"), "builtin.noop", json!({})).await;
    }
    env.wait_count("200 results", "SELECT count(*) FROM step_results", 200, WAIT)
        .await;
    drop(replicas);
    let starts = intervals(&env, "builtin.noop").await;
    // 20 a second with a burst of 2 (a tenth of a second's starts): any second holds at most
    // 20 + 2 - 1 starts as Redis admits them, plus one for the few ms between admission and the
    // recorded start.
    let busiest = busiest_window(&starts, Duration::from_secs(1));
    assert!(busiest <= 22, "{busiest} starts in one second");
    assert!(
        busiest >= 19,
        "the rate is used: {busiest} starts in the busiest second"
    );
    // Two at once, then one every 50 ms: the last start 198 × 50 ms = 9.9 s after the first.
    let took = (starts.last().unwrap().0 - starts[0].0).to_std().unwrap();
    eprintln!("200 starts at 20/s across 3 replicas: {took:?}, busiest second {busiest}");
    assert!(
        took >= Duration::from_millis(8_910) && took <= Duration::from_millis(10_890),
        "200 starts at 20/s took {took:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM step_attempts").await,
        0,
        "waiting is not an attempt"
    );
}

/// The rate on either driver, with one worker.
async fn a_rate_limited_step_waits_for_its_start(env: TestEnv) {
    // Queued before the worker starts: pushed one by one to a running worker on a loaded machine,
    // they could arrive slower than the rate and never need to wait.
    for i in 0..30 {
        env.push_job(&format!("noop-{i}"), "builtin.noop", json!({})).await;
    }
    env.push_job("sleep", "builtin.sleep", json!({"ms": 1})).await;
    // The check off, as in the test above: this measures starts against the admitted rate.
    let worker = env
        .start(&[("STEP_RATE_LIMITS", "builtin.noop=20/1s"), ("DUPLICATE_CHECK", "off")])
        .await;
    env.wait_count("31 results", "SELECT count(*) FROM step_results", 31, WAIT)
        .await;
    let starts = intervals(&env, "builtin.noop").await;
    let took = (starts.last().unwrap().0 - starts[0].0).to_std().unwrap();
    assert!(
        took >= Duration::from_millis(1_260) && took <= Duration::from_millis(1_700),
        "30 starts at 20/s took {took:?}"
    );
    assert!(busiest_window(&starts, Duration::from_secs(1)) <= 22);
    let (_, metrics) = common::get(&format!("http://{}/metrics", worker.http_addr.unwrap())).await;
    let throttled = common::metric(
        &metrics,
        "step_worker_throttled_total{reason=\"rate\",step=\"builtin.noop\"}",
    )
    .unwrap_or(0.0);
    assert!(throttled >= 28.0, "{metrics}");
    worker.stop().await.unwrap();
}

on_each_driver!(
    a_capped_step_waits_for_its_slot_while_other_steps_run,
    a_capped_step_is_capped_however_its_name_is_written,
    a_rate_limited_step_waits_for_its_start,
    a_native_step_that_asks_for_back_pressure_holds_its_step
);

/// A native handler asks for the same back-pressure with `StepError::throttled`.
async fn a_native_step_that_asks_for_back_pressure_holds_its_step(env: TestEnv) {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let seen = calls.clone();
    let registry = step_worker::Registry::new().register(
        "native.limited",
        move |_ctx: step_worker::StepContext, _input: serde_json::Value| {
            let first = {
                let mut calls = seen.lock().unwrap();
                calls.push(std::time::Instant::now());
                calls.len() == 1
            };
            async move {
                match first {
                    true => Err(step_worker::StepError::throttled(
                        "quota used up",
                        Duration::from_secs(2),
                    )),
                    false => Ok(json!(null)),
                }
            }
        },
    );
    let worker = env
        .start_with(
            &[("WORKER_CONCURRENCY", "1"), ("RETRY_BACKOFF_MAX_MS", "10000")],
            registry,
        )
        .await;
    env.push_job("first", "native.limited", json!(null)).await;
    common::wait_for("the first call", WAIT, || async { calls.lock().unwrap().len() == 1 }).await;
    for i in 0..4 {
        env.push_job(&format!("next-{i}"), "native.limited", json!(null)).await;
    }
    env.push_job("other", "builtin.noop", json!({})).await;
    env.wait_count("six results", "SELECT count(*) FROM step_results", 6, WAIT)
        .await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 6);
    for at in &calls[1..] {
        assert!(
            *at - calls[0] >= Duration::from_secs(2),
            "called after {:?}",
            *at - calls[0]
        );
    }
    let noop = intervals(&env, "builtin.noop").await;
    let limited = intervals(&env, "native.limited").await;
    assert!(noop[0].1 < limited.last().unwrap().0, "other steps are not held");
    assert_eq!(env.count("SELECT count(*) FROM step_attempts").await, 1);
    worker.stop().await.unwrap();
}
