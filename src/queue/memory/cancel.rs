//! cancel.lua on the memory queue: waiting jobs (ready, delayed, waiting on a limit) move to the
//! cancelled outbox; a claimed job is flagged for its worker's heartbeat. There are no paused
//! steps here, so no held lists.

use std::collections::VecDeque;

use super::{MemoryQueue, State, now_ms};
use crate::queue::{CancelReply, CancelTarget, Payload, SettleOp};

impl MemoryQueue {
    /// Cancels `target`'s jobs, as `RedisQueue::cancel` does; `by` names who cancels.
    pub fn cancel(&self, target: &CancelTarget, by: &str) -> CancelReply {
        let by = by.replace('|', "_");
        let now = now_ms();
        let mut s = self.state();
        let is_wanted = |p: &Payload| wanted(target, p).is_some();
        let mut removed: Vec<Payload> = Vec::new();
        let mut keep = VecDeque::with_capacity(s.ready.len());
        for p in std::mem::take(&mut s.ready) {
            if is_wanted(&p) {
                removed.push(p);
            } else {
                keep.push_back(p);
            }
        }
        s.ready = keep;
        let due: Vec<_> = s
            .delayed
            .iter()
            .filter(|(_, p)| is_wanted(p))
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            removed.extend(s.delayed.remove(&k));
        }
        removed.extend(s.caps.remove_waiting(is_wanted));
        let mut reply = CancelReply::default();
        for p in removed {
            let attempts = s.attempts.remove(&p).unwrap_or(0);
            let mut entry = format!("{attempts}|{now}|{by}|0|").into_bytes();
            entry.extend_from_slice(&p);
            s.cancelled.push_front(entry.clone());
            reply.removed.push(entry);
        }
        let mut running = Vec::new();
        for (proc, list) in &s.procs {
            for p in list {
                if let Some(id) = wanted(target, p) {
                    running.push((proc.clone(), id));
                }
            }
        }
        let prefix = self.keys().proc("");
        for (proc, id) in running {
            s.cancel.insert(format!("{proc}\n{id}"));
            let wid = proc.strip_prefix(&prefix).unwrap_or(&proc).to_owned();
            reply.running.push((wid, id));
        }
        if reply.removed.is_empty() && reply.running.is_empty() && matches!(target, CancelTarget::Id(_)) {
            reply.pending = s
                .cancelled
                .iter()
                .any(|e| outbox_payload(e).is_some_and(|p| wanted(target, p).is_some()));
        }
        reply
    }

    /// The heartbeat's share: ids of `wid`'s claimed jobs that were cancelled, and the outbox's
    /// length.
    pub(super) fn cancels_for(&self, wid: &str) -> (Vec<String>, u64) {
        let s = self.state();
        let prefix = format!("{}\n", self.keys().proc(wid));
        let ids = s
            .cancel
            .iter()
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        (ids, s.cancelled.len() as u64)
    }

    /// Forgets the cancellations of `ids` addressed to worker `wid`.
    pub fn cancel_forget(&self, wid: &str, ids: &[String]) {
        let proc = self.keys().proc(wid);
        let mut s = self.state();
        for id in ids {
            s.cancel.remove(&format!("{proc}\n{id}"));
        }
    }

    /// The oldest entries of the cancelled outbox.
    pub fn cancelled_peek(&self, n: usize) -> Vec<Vec<u8>> {
        let s = self.state();
        s.cancelled.iter().rev().take(n.max(1)).rev().cloned().collect()
    }

    /// Removes outbox entries whose rows are committed.
    pub fn cancelled_remove(&self, entries: &[Vec<u8>], _newest: bool) {
        let mut s = self.state();
        for e in entries {
            if let Some(i) = s.cancelled.iter().position(|x| x == e) {
                s.cancelled.remove(i);
            }
        }
    }
}

/// The id of payload `p` when it is one of `target`'s jobs (and its id is one a job can have).
fn wanted(target: &CancelTarget, p: &[u8]) -> Option<String> {
    let job: serde_json::Value = serde_json::from_slice(p).ok()?;
    target
        .matches(&job)
        .filter(|id| crate::job::valid_id(id))
        .map(str::to_owned)
}

/// The payload of an outbox entry (`attempts|at_ms|by|held|payload`).
fn outbox_payload(entry: &[u8]) -> Option<&[u8]> {
    entry.splitn(5, |b| *b == b'|').nth(4)
}

/// settle.lua's share on the memory queue: whether the job `p`, leaving in-flight list `proc` by
/// `op`, was cancelled while there. Its cancellation is forgotten either way; a job that would go
/// on waiting (a retry, a requeue, a hold, a due time) goes to the outbox instead, with its
/// attempts (counting a failed one), and its counters are forgotten: true, the op is done.
pub(super) fn divert_if_cancelled(s: &mut State, (proc, wid): (&str, &str), p: &Payload, op: &SettleOp) -> bool {
    if s.cancel.is_empty() {
        return false;
    }
    let Some(id) = crate::job::peek_id(p) else { return false };
    if !s.cancel.remove(&format!("{proc}\n{id}")) || matches!(op, SettleOp::Done(_)) {
        return false;
    }
    let failures = s.attempts.remove(p).unwrap_or(0);
    let attempts = failures + u32::from(matches!(op, SettleOp::Retry(..)));
    let mut entry = format!("{attempts}|{}|{wid}|1|", now_ms()).into_bytes();
    entry.extend_from_slice(p);
    s.cancelled.push_front(entry);
    true
}
