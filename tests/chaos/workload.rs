//! The jobs a fault test pushes, each with the outcome the oracle expects of it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use step_worker::queue::RedisConn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A result row with status `succeeded`.
    Succeeded,
    /// A result row with status `dead` and a dead letter with this reason, under the job's id.
    Dead(&'static str),
    /// No result row (no trustworthy id); a dead letter holding these exact payload bytes.
    Malformed(&'static str),
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: Option<String>,
    pub payload: Vec<u8>,
    pub expect: Expect,
}

#[derive(Debug, Default, Clone)]
pub struct Workload {
    pub jobs: Vec<Job>,
}

/// Step durations, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Workload {
    /// `n` jobs: mostly `chaos.exec` of random short durations; 10 % fail once or twice before
    /// succeeding (within MAX_RETRY_ATTEMPTS = 3); 2 % always fail (dead after 1 + 1 attempts);
    /// 3 % malformed (bad JSON or a bad envelope). Deterministic for a given seed.
    pub fn mixed(prefix: &str, n: usize, d: Durations, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut jobs = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            let ms = rng.random_range(d.min_ms..=d.max_ms);
            let roll = rng.random_range(0..100);
            let job = match roll {
                0..85 => exec(&id, ms, 0, Expect::Succeeded),
                85..95 => exec(&id, ms, rng.random_range(1..=2), Expect::Succeeded),
                95..97 => {
                    let payload = json!({"id": id, "step": "chaos.exec", "max_retries": 1,
                                         "input": {"ms": ms, "fail": 1000}});
                    Job {
                        id: Some(id),
                        payload: payload.to_string().into_bytes(),
                        expect: Expect::Dead("retries_exhausted"),
                    }
                }
                97 => Job {
                    id: None,
                    payload: format!("{{\"id\":\"{id}\",\"step\":\"chaos.exec\",\"input\":{{").into_bytes(),
                    expect: Expect::Malformed("invalid_json"),
                },
                _ => Job {
                    id: None,
                    payload: json!({"id": id, "step": 7}).to_string().into_bytes(),
                    expect: Expect::Malformed("invalid_envelope"),
                },
            };
            jobs.push(job);
        }
        Workload { jobs }
    }

    pub fn push_job(&mut self, job: Job) {
        self.jobs.push(job);
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs that must end with a result row.
    pub fn valid(&self) -> impl Iterator<Item = &Job> {
        self.jobs.iter().filter(|j| j.id.is_some())
    }

    /// `LPUSH`es every payload, as producers do, in pipelined chunks.
    pub async fn push(&self, conn: &RedisConn, queue: &str) {
        push_payloads(conn, queue, self.jobs.iter().map(|j| j.payload.as_slice())).await;
    }
}

pub fn exec(id: &str, ms: u64, fail: u64, expect: Expect) -> Job {
    let payload = json!({"id": id, "step": "chaos.exec", "input": {"ms": ms, "fail": fail}});
    Job {
        id: Some(id.to_owned()),
        payload: payload.to_string().into_bytes(),
        expect,
    }
}

pub async fn push_payloads<'a>(conn: &RedisConn, queue: &str, payloads: impl Iterator<Item = &'a [u8]>) {
    let mut conn = conn.clone();
    let payloads: Vec<&[u8]> = payloads.collect();
    for chunk in payloads.chunks(500) {
        let mut pipe = redis::pipe();
        for p in chunk {
            pipe.cmd("LPUSH").arg(queue).arg(*p).ignore();
        }
        let () = pipe.query_async(&mut conn).await.expect("enqueue");
    }
}
