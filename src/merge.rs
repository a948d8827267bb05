//! Merged calls, as a group commit merges transactions: requests that arrive while a call is in
//! flight wait for the next call, which serves all of them at once. Under load the claim batches
//! of one replica share one round trip for the duplicate check instead of paying one each
//! (small top-up batches of a few jobs are the usual case at full speed); a lone request costs
//! the call it would have cost anyway, plus at most the wait for the call already in flight.
//!
//! Requests carry a group (the worker id a running mark is taken for): only requests of one
//! group are merged into one call, in the order they arrived, so a call answers exactly what the
//! separate calls would have answered, the earlier request first.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

struct Ask<K, V, E> {
    group: String,
    keys: Vec<K>,
    reply: oneshot::Sender<Result<Vec<V>, E>>,
}

/// A merging front for `call(group, keys) -> one value per key, in order`.
pub struct Merged<K, V, E> {
    tx: mpsc::UnboundedSender<Ask<K, V, E>>,
}

impl<K, V, E> Merged<K, V, E>
where
    K: Send + 'static,
    V: Send + 'static,
    E: Clone + Send + 'static,
{
    /// Starts the task that makes the calls (on the current runtime); it ends with the last
    /// handle. `call` must answer one value per key, in order, or fail for all of them.
    pub fn spawn<F, Fut>(call: F) -> Self
    where
        F: Fn(String, Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<V>, E>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Ask<K, V, E>>();
        tokio::spawn(async move {
            let mut next: Option<Ask<K, V, E>> = None;
            loop {
                let first = match next.take() {
                    Some(ask) => ask,
                    None => match rx.recv().await {
                        Some(ask) => ask,
                        None => return,
                    },
                };
                let mut asks = vec![first];
                // Everything queued meanwhile, up to the first request of another group (kept
                // for the next call, so order is kept across groups too).
                while let Ok(ask) = rx.try_recv() {
                    if ask.group != asks[0].group {
                        next = Some(ask);
                        break;
                    }
                    asks.push(ask);
                }
                let mut keys = Vec::new();
                let mut lens = Vec::with_capacity(asks.len());
                for ask in &mut asks {
                    lens.push(ask.keys.len());
                    keys.append(&mut ask.keys);
                }
                let group = std::mem::take(&mut asks[0].group);
                match call(group, keys).await {
                    Ok(values) => {
                        let mut values = values.into_iter();
                        for (ask, len) in asks.into_iter().zip(lens) {
                            let mine: Vec<V> = values.by_ref().take(len).collect();
                            // A request whose caller stopped waiting has nobody to answer.
                            let _ = ask.reply.send(Ok(mine));
                        }
                    }
                    Err(e) => {
                        for ask in asks {
                            let _ = ask.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Merged { tx }
    }

    /// The values for `keys`, in order; `None` when the calling task is gone (the runtime is
    /// shutting down).
    pub async fn ask(&self, group: &str, keys: Vec<K>) -> Option<Result<Vec<V>, E>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Ask {
                group: group.to_owned(),
                keys,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_made_during_a_call_share_the_next_call_and_each_gets_its_own_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate) = tokio::sync::watch::channel(false);
        let counted = calls.clone();
        let merged: Merged<u32, u32, String> = Merged::spawn(move |group, keys: Vec<u32>| {
            let (calls, mut gate) = (counted.clone(), gate.clone());
            async move {
                // The first call waits for the gate, so the others queue behind it.
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    gate.wait_for(|open| *open).await.unwrap();
                }
                let offset = if group == "b" { 1000 } else { 0 };
                Ok(keys.into_iter().map(|k| k * 10 + offset).collect())
            }
        });
        // Requests queued directly, so all of them are waiting before the first call ends.
        let queue = |group: &str, keys: Vec<u32>| {
            let (reply, answer) = oneshot::channel();
            merged
                .tx
                .send(Ask {
                    group: group.to_owned(),
                    keys,
                    reply,
                })
                .ok()
                .unwrap();
            answer
        };
        let first = queue("a", vec![1]);
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = [("a", vec![2, 3]), ("a", vec![4]), ("b", vec![5]), ("a", vec![6])]
            .into_iter()
            .map(|(g, keys)| queue(g, keys))
            .collect();
        gate_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(vec![10]));
        let mut answers = Vec::new();
        for q in queued {
            answers.push(q.await.unwrap().unwrap());
        }
        assert_eq!(answers, vec![vec![20, 30], vec![40], vec![1050], vec![60]]);
        // The first call, then a, a merged; b alone; the last a alone (after b, to keep order).
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_request_it_merged() {
        let merged: Merged<u32, u32, String> =
            Merged::spawn(|_, _keys: Vec<u32>| async { Err::<Vec<u32>, _>("down".to_owned()) });
        assert_eq!(merged.ask("a", vec![1, 2]).await, Some(Err("down".to_owned())));
    }
}
