//! Telling people: dead letters and outages go to Sentry and Slack when configured. Nothing here
//! may block or fail the job path: Sentry sends from its own thread, Slack events go through a
//! bounded channel that drops (and counts) rather than waits.

pub mod sentry;
pub mod slack;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Notify;
use crate::health::Health;
use crate::redact::Redactor;
use crate::store::DeadLetterRecord;

pub struct Notifier {
    sentry: bool,
    slack: Option<mpsc::Sender<slack::Event>>,
    redactor: Redactor,
}

impl Notifier {
    /// Starts the Slack task when `SLACK_WEBHOOK` is set; it stops with `stop`. Sentry is used
    /// when a client was initialised ([`sentry::init`]) for this process.
    pub fn start(config: &Notify, health: Arc<Health>, stop: CancellationToken) -> Self {
        Notifier {
            sentry: ::sentry::Hub::current().client().is_some_and(|c| c.is_enabled()),
            slack: slack::spawn(config, health, stop),
            redactor: Redactor::new(&config.pii_keys),
        }
    }

    /// A job was dead-lettered (its dead letter is committed).
    pub fn dead_lettered(&self, letter: &DeadLetterRecord) {
        if self.sentry {
            sentry::report_dead_letter(letter, &self.redactor);
        }
        if let Some(tx) = &self.slack {
            let event = slack::Event::DeadLetter {
                step: letter.step.clone().unwrap_or_else(|| "(none)".to_owned()),
                job_id: letter.job_id.clone(),
                reason: letter.reason.clone(),
            };
            if tx.try_send(event).is_err() {
                tracing::debug!("Slack notification queue full; a dead letter was not announced");
            }
        }
    }
}
