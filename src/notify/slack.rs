//! Slack: dead letters aggregated per step (at most one message per step per window, with a
//! count, and at most [`MAX_MESSAGES`] step messages per window in all plus one summary), and Redis or Postgres outages longer than a threshold (and their recovery). A task of
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
/// Step messages per `SLACK_DEAD_LETTER_WINDOW_MS` in all, plus one summary of the rest: a
/// channel can read that many, and a stream of invented step names cannot flood it.
pub const MAX_MESSAGES: usize = 10;
/// Distinct steps whose dead letters are counted apart between messages; the rest are summed.
const MAX_STEPS: usize = 100;

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

impl Pending {
    fn absorb(&mut self, other: Pending) {
        self.count += other.count;
        self.last_job = other.last_job.or(self.last_job.take());
        for (reason, n) in other.reasons {
            *self.reasons.entry(reason).or_default() += n;
        }
    }

    fn reasons(&self) -> String {
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{} ×{n}", escape(r)))
            .collect();
        reasons.join(", ")
    }
}

struct Slack {
    webhook: Secret,
    client: reqwest::Client,
    window: Duration,
    outage_after: Duration,
    health: Arc<Health>,
    /// Dead letters waiting for their step's message, for at most MAX_STEPS steps.
    pending: BTreeMap<String, Pending>,
    /// Dead letters of the steps beyond those, or beyond the message budget: one summary.
    overflow: Pending,
    /// When each step's last message went, within the window.
    last_sent: HashMap<String, Instant>,
    /// When each step message of the current window went.
    sent: Vec<Instant>,
    last_summary: Option<Instant>,
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
        overflow: Pending::default(),
        last_sent: HashMap::new(),
        sent: Vec::new(),
        last_summary: None,
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
        // Step names come from producers: past MAX_STEPS distinct ones, the rest share a summary.
        let p = match self.pending.contains_key(&step) || self.pending.len() < MAX_STEPS {
            true => self.pending.entry(step).or_default(),
            false => &mut self.overflow,
        };
        p.count += 1;
        p.last_job = job_id.or(p.last_job.take());
        *p.reasons.entry(reason).or_default() += 1;
    }

    /// Sends one message per step whose window has passed (all of them when `flush`), at most
    /// MAX_MESSAGES per window in all; the rest go into one summary per window.
    async fn send_due(&mut self, flush: bool) {
        let window = self.window;
        self.sent.retain(|t| t.elapsed() < window);
        self.last_sent.retain(|_, t| t.elapsed() < window);
        let due: Vec<String> = self
            .pending
            .keys()
            .filter(|step| flush || !self.last_sent.contains_key(*step))
            .cloned()
            .collect();
        for step in due {
            let p = self.pending.remove(&step).expect("listed above");
            if self.sent.len() >= MAX_MESSAGES {
                self.overflow.absorb(p);
                continue;
            }
            let text = format!(
                ":skull: {} job(s) of step `{shown}` dead-lettered ({}){}. See `step-worker dlq list --step {shown}`.",
                p.count,
                p.reasons(),
                p.last_job
                    .map(|j| format!("; latest job `{}`", escape(&j)))
                    .unwrap_or_default(),
                shown = escape(&step),
            );
            self.post(&text).await;
            self.sent.push(Instant::now());
            self.last_sent.insert(step, Instant::now());
        }
        let summary_due = self.last_summary.is_none_or(|t| t.elapsed() >= window);
        if self.overflow.count > 0 && (flush || summary_due) {
            let p = std::mem::take(&mut self.overflow);
            let text = format!(
                ":skull: {} more job(s) of other steps dead-lettered ({}): at most {MAX_MESSAGES} messages per window. See `step-worker dlq list`.",
                p.count,
                p.reasons(),
            );
            self.post(&text).await;
            self.last_summary = Some(Instant::now());
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
