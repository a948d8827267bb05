//! Bad input at volume: generated payloads of every kind of wrongness, mixed with valid jobs
//! (some of them odd but legal). The worker must never crash, every bad payload must become a
//! dead letter with a reason, and every valid job must complete.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Opts};
use crate::report::Row;
use crate::worker_faults::settle;
use crate::workload::{Expect, Job, Workload};
use crate::{scale, serial};

/// A bad payload's expected reason, judged independently of the worker's decoder: anything
/// serde_json cannot parse is bad JSON, anything else generated here is a bad envelope.
fn bad(payload: Vec<u8>) -> Job {
    let reason = match serde_json::from_slice::<Value>(&payload) {
        Ok(_) => "invalid_envelope",
        Err(_) => "invalid_json",
    };
    Job {
        id: None,
        payload,
        expect: Expect::Malformed(reason),
    }
}

fn valid(id: String, step: &str, input: Value) -> Job {
    let expect = if step == "builtin.noop" {
        Expect::Succeeded
    } else {
        Expect::Dead("unknown_step")
    };
    Job {
        payload: json!({"id": id, "step": step, "input": input}).to_string().into_bytes(),
        id: Some(id),
        expect,
    }
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// One bad payload of a random kind.
fn bad_payload(rng: &mut StdRng, i: usize) -> Job {
    let id = format!("bad-{i}");
    let envelope = json!({"id": id, "step": "builtin.noop", "input": {"i": i}}).to_string();
    match rng.random_range(0..12) {
        // Random bytes, including the empty payload.
        0 | 1 => {
            let len = rng.random_range(0..300);
            bad((0..len).map(|_| rng.random::<u8>()).collect())
        }
        // Truncated JSON.
        2 | 3 => {
            let cut = rng.random_range(0..envelope.len());
            bad(envelope.as_bytes()[..cut].to_vec())
        }
        // Wrong types for each field, and non-object payloads.
        4 | 5 => {
            let wrong: [Value; 8] = [
                json!(7),
                json!(true),
                json!([1]),
                json!({"a": 1}),
                json!(""),
                json!(null),
                json!(-1),
                json!(1.5),
            ];
            let w = wrong[rng.random_range(0..wrong.len())].clone();
            // Optional fields may be null; give them a wrong value instead.
            let opt = |alt: Value| if w.is_null() { alt } else { w.clone() };
            let p = match rng.random_range(0..9) {
                0 => json!({"id": w, "step": "builtin.noop"}),
                1 => json!({"id": id, "step": w}),
                2 => {
                    json!({"id": id, "step": "builtin.noop", "max_retries": if w.is_u64() { json!("3") } else { opt(json!("3")) }})
                }
                3 => {
                    json!({"id": id, "step": "builtin.noop", "timeout_ms": if w.is_u64() { json!(0) } else { opt(json!(0)) }})
                }
                4 => {
                    // Any number in range is a valid timestamp (fractions too); the contract's edges are unit-tested.
                    json!({"id": id, "step": "builtin.noop", "enqueued_at": if w.is_number() { json!("yesterday") } else { opt(json!("yesterday")) }})
                }
                5 => json!({"id": id, "step": "builtin.noop", "run_id": opt(json!(5))}),
                6 => json!({"id": id, "step": "builtin.noop", "correlation_id": opt(json!([]))}),
                7 => json!({"step": "builtin.noop"}),
                _ => w,
            };
            bad(p.to_string().into_bytes())
        }
        // Huge fields (rarely a very large one).
        6 => {
            let n = if rng.random_range(0..2_000) == 0 {
                1 << 20
            } else {
                rng.random_range(201..5_000)
            };
            let big = "x".repeat(n);
            let p = if rng.random() {
                json!({"id": big, "step": "builtin.noop"})
            } else {
                json!({"id": id, "step": big})
            };
            bad(p.to_string().into_bytes())
        }
        // Deep nesting, past the parser's recursion limit.
        7 => {
            let depth = rng.random_range(129..20_000);
            if rng.random() {
                bad(nested(depth).into_bytes())
            } else {
                bad(format!(r#"{{"id":"{id}","step":"builtin.noop","input":{}}}"#, nested(depth)).into_bytes())
            }
        }
        // Unicode edge cases that make the payload invalid.
        8 | 9 => {
            let cases: [&[u8]; 6] = [
                br#"{"id":"\ud800","step":"builtin.noop"}"#,
                b"{\"id\":\"\xff\xfe\",\"step\":\"builtin.noop\"}",
                b"\xef\xbb\xbf{\"id\":\"bom\",\"step\":\"builtin.noop\"}",
                b"{\"id\":\"\xc0\xaf\",\"step\":\"builtin.noop\"}",
                br#"{"id":"nul\u0000id","step":"builtin.noop"}"#,
                br#"{"id":"a","step":"builtin.noop","input":"\udfff"}"#,
            ];
            let mut p = cases[rng.random_range(0..cases.len())].to_vec();
            // Make most of them distinct; exact duplicates stay too (each must be filed).
            if rng.random() {
                p.extend_from_slice(format!(" {:>1$}", "", i % 7).as_bytes());
            }
            bad(p)
        }
        // Not JSON at all: text, XML, a number followed by junk.
        _ => {
            let texts = [
                "hello",
                "<job id=\"1\"/>",
                "42 43",
                "{}",
                "{\"id\":1}",
                "null",
                "[]",
                "\"id\"",
            ];
            bad(texts[rng.random_range(0..texts.len())].as_bytes().to_vec())
        }
    }
}

/// One valid job of a random kind: plain, odd but legal ids, duplicated ids, big or deep input,
/// unknown steps.
fn valid_payload(rng: &mut StdRng, i: usize) -> Vec<Job> {
    match rng.random_range(0..8) {
        0 => vec![valid(format!("ü-é-😀-{i}"), "builtin.noop", json!({"i": i}))],
        1 => vec![valid(
            format!("\u{202E}rtl\u{200B}zw-e\u{301}-{i}"),
            "builtin.noop",
            json!(null),
        )],
        2 => {
            // The longest legal id: 200 characters, 400 bytes.
            let mut id = format!("{i}-");
            while id.chars().count() < 200 {
                id.push('é');
            }
            vec![valid(id, "builtin.noop", json!(1))]
        }
        3 => {
            // One id, two different payloads: one result row.
            let id = format!("dup-{i}");
            vec![
                valid(id.clone(), "builtin.noop", json!({"copy": 1})),
                valid(id, "builtin.noop", json!({"copy": 2})),
            ]
        }
        4 => {
            // The same bytes twice.
            let j = valid(format!("twin-{i}"), "builtin.noop", json!({"twin": true}));
            vec![j.clone(), j]
        }
        5 => {
            let depth = rng.random_range(1..100);
            let input: Value = serde_json::from_str(&nested(depth)).unwrap();
            vec![valid(format!("deep-{i}"), "builtin.noop", input)]
        }
        6 => vec![valid(format!("nostep-{i}"), "no.such.step", json!({"i": i}))],
        _ => vec![valid(
            format!("plain-{i}"),
            "builtin.noop",
            json!({"i": i, "big": "y".repeat(rng.random_range(0..20_000))}),
        )],
    }
}

pub fn workload(bad_n: usize, valid_n: usize, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = Workload::default();
    let mut i = 0;
    while w.jobs.iter().filter(|j| j.id.is_none()).count() < bad_n || i < valid_n {
        if rng.random_range(0..bad_n + valid_n) < valid_n && i < valid_n {
            w.jobs.extend(valid_payload(&mut rng, i));
            i += 1;
        } else {
            w.jobs.push(bad_payload(&mut rng, w.jobs.len()));
        }
    }
    w
}

#[tokio::test]
async fn bad_input_at_volume_is_dead_lettered_and_valid_jobs_complete() {
    let _serial = serial().await;
    let opts = Opts {
        replicas: 2,
        concurrency: 16,
        ..Opts::default()
    };
    let w = workload(scale(3_000, 100_000), scale(300, 10_000), 31);
    let bad_n = w.jobs.iter().filter(|j| j.id.is_none()).count();
    let mut c = Cluster::start(opts).await;
    w.push(&c.redis_conn, &c.queue_key).await;
    let (v, _log, restarts) = settle(&mut c, &w).await;
    let row = Row {
        fault: "12 bad input".into(),
        jobs: w.len(),
        lost: v.lost.len(),
        duplicates: v.extra_dead_letters,
        overlaps: 0,
        recovery: String::new(),
        notes: format!(
            "{bad_n} bad payloads, {} missing dead letters, {restarts} crashes",
            v.missing_dead_letters.len()
        ),
        pass: v.clean() && restarts == 0,
    };
    row.emit();
    assert_eq!(restarts, 0, "a worker crashed on bad input");
    v.assert_clean();
}
