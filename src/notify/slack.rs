//! Slack: dead letters aggregated per step (at most one message per step per window, with a
//! count), and Redis or Postgres outages longer than a threshold (and their recovery). A task of
//! its own reads a bounded channel, so the job path never waits on Slack.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Notify, Secret};
use crate::health::Health;
use crate::redact::{printable, scrub_text};

/// Events waiting for the Slack task; beyond this they are dropped.
const CHANNEL: usize = 1024;
/// How often outages are checked and due messages sent.
const TICK: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Event {
    DeadLetter {
        step: String,
        job_id: Option<String>,
        reason: String,
    },
}

#[derive(Default)]
struct Pending {
    count: u64,
    last_job: Option<String>,
    reasons: BTreeMap<String, u64>,
}

struct Slack {
    webhook: Secret,
    client: reqwest::Client,
    window: Duration,
    outage_after: Duration,
    health: Arc<Health>,
    pending: BTreeMap<String, Pending>,
    last_sent: HashMap<String, Instant>,
    announced: [bool; 2],
}

pub fn spawn(config: &Notify, health: Arc<Health>, stop: CancellationToken) -> Option<mpsc::Sender<Event>> {
    let webhook = config.slack_webhook.clone()?;
    let (tx, rx) = mpsc::channel(CHANNEL);
    let slack = Slack {
        webhook,
        client: reqwest::Client::builder().timeout(POST_TIMEOUT).build().ok()?,
        window: config.slack_window,
        outage_after: config.slack_outage_after,
        health,
        pending: BTreeMap::new(),
        last_sent: HashMap::new(),
        announced: [false; 2],
    };
    tokio::spawn(slack.run(rx, stop));
    Some(tx)
}

impl Slack {
    async fn run(mut self, mut rx: mpsc::Receiver<Event>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                Some(event) = rx.recv() => self.record(event),
                _ = tick.tick() => {
                    self.check_outages().await;
                    self.send_due(false).await;
                }
                _ = stop.cancelled() => {
                    while let Ok(event) = rx.try_recv() {
                        self.record(event);
                    }
                    return self.send_due(true).await;
                }
            }
        }
    }

    fn record(&mut self, Event::DeadLetter { step, job_id, reason }: Event) {
        let p = self.pending.entry(step).or_default();
        p.count += 1;
        p.last_job = job_id.or(p.last_job.take());
        *p.reasons.entry(reason).or_default() += 1;
    }

    /// Sends one message per step whose window has passed (all of them when `flush`).
    async fn send_due(&mut self, flush: bool) {
        let due: Vec<String> = self
            .pending
            .keys()
            .filter(|step| flush || self.last_sent.get(*step).is_none_or(|t| t.elapsed() >= self.window))
            .cloned()
            .collect();
        for step in due {
            let p = self.pending.remove(&step).expect("listed above");
            let reasons: Vec<String> = p.reasons.iter().map(|(r, n)| format!("{} ×{n}", escape(r))).collect();
            let text = format!(
                ":skull: {} job(s) of step `{shown}` dead-lettered ({}){}. See `step-worker dlq list --step {shown}`.",
                p.count,
                reasons.join(", "),
                p.last_job
                    .map(|j| format!("; latest job `{}`", escape(&j)))
                    .unwrap_or_default(),
                shown = escape(&step),
            );
            self.post(&text).await;
            self.last_sent.insert(step, Instant::now());
        }
    }

    async fn check_outages(&mut self) {
        let deps = [
            ("Redis", self.health.redis_down_for()),
            ("Postgres", self.health.postgres_down_for()),
        ];
        for (i, (name, down)) in deps.into_iter().enumerate() {
            match down {
                Some((for_, error)) if for_ >= self.outage_after && !self.announced[i] => {
                    self.announced[i] = true;
                    let text = format!(
                        ":rotating_light: {name} unreachable for {} s: {}",
                        for_.as_secs(),
                        escape(&scrub_text(&error))
                    );
                    self.post(&text).await;
                }
                None if self.announced[i] => {
                    self.announced[i] = false;
                    self.post(&format!(":white_check_mark: {name} is reachable again"))
                        .await;
                }
                _ => {}
            }
        }
    }

    async fn post(&self, text: &str) {
        let result = self
            .client
            .post(self.webhook.expose())
            .json(&json!({ "text": text }))
            .send()
            .await;
        match result.map(|r| r.error_for_status()) {
            Ok(Ok(_)) => {}
            // reqwest's message names the URL, and a webhook's URL is its credential.
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %scrub_text(&e.without_url().to_string()), "posting to Slack failed")
            }
        }
    }
}

/// Text from producers (step names, job ids, errors) as Slack shows it literally: `&`, `<` and
/// `>` escaped as Slack requires, so a job id cannot write `<!channel>` or a disguised link
/// `<https://…|text>`; control characters escaped, so it stays on its line.
fn escape(text: &str) -> String {
    printable(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
