//! The drain's order, with stand-ins for the tasks it stops that never stop by themselves: so the
//! drain must stop them itself, and before the step that depends on it.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::queue::{BeatMode, MemoryQueue};

/// Sets its flag when dropped: the task holding it has been stopped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn drain(queue: &Queue, lease: &Arc<Lease>) -> Drain {
    let vars = [("QUEUE_DRIVER", "memory"), ("SHUTDOWN_TIMEOUT_MS", "0")];
    let config = Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    Drain {
        config: Arc::new(config),
        queue: queue.clone(),
        store: crate::store::Store::connect_lazy("sqlite::memory:", 1).unwrap(),
        lease: lease.clone(),
        health: Arc::new(Health::default()),
        capacity: Arc::new(Capacity::new(1, 0)),
        tasks: TaskTracker::new(),
        blocking_id: Arc::new(AtomicI64::new(0)),
        claim_stop: CancellationToken::new(),
        give_up: CancellationToken::new(),
        background: CancellationToken::new(),
        http_stop: CancellationToken::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_pipeline_is_stopped_before_the_hand_back_and_the_heartbeat_before_deregistering() {
    let queue = Queue::Memory(MemoryQueue::named("drain.ready"));
    let deadline = Duration::from_secs(30);
    let lease = Arc::new(Lease::new(queue.keys(), deadline));
    let wid = lease.identity().wid.clone();
    let proc_key = lease.identity().proc_key.clone();
    queue
        .heartbeat(&wid, deadline, BeatMode::Register, deadline)
        .await
        .unwrap();

    // A pipeline stuck on a commit that never answers, which would settle its job afterwards.
    let pipeline_stopped = Arc::new(AtomicBool::new(false));
    let pipeline = {
        let (flag, queue, proc_key) = (Dropped(pipeline_stopped.clone()), queue.clone(), proc_key.clone());
        tokio::spawn(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            let _ = queue.settle(&proc_key, &[]).await;
        })
    };
    // A heartbeat that keeps registering this worker until it is stopped.
    let heartbeat = {
        let (queue, wid) = (queue.clone(), wid.clone());
        tokio::spawn(async move {
            loop {
                let _ = queue.heartbeat(&wid, deadline, BeatMode::Register, deadline).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let tasks = Tasks {
        claimer: tokio::spawn(async {}),
        pipeline,
        heartbeat,
        duties: tokio::spawn(async {}),
        promoter: tokio::spawn(async {}),
    };
    let shutdown = Shutdown::new();
    shutdown.graceful.cancel();
    let started = Instant::now();
    drain(&queue, &lease).run(&shutdown, tasks).await;

    assert!(pipeline_stopped.load(Ordering::SeqCst), "the pipeline was left running");
    let d = queue.depths().await.unwrap();
    assert_eq!(d.workers, 0, "a beat after the deregistration put the worker back");
    assert!(
        started.elapsed() <= EXIT_MARGIN,
        "the drain took {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_ends_the_drain_within_the_hard_exit_bound() {
    let queue = Queue::Memory(MemoryQueue::named("drain-hard.ready"));
    let lease = Arc::new(Lease::new(queue.keys(), Duration::from_secs(30)));
    let never = || tokio::spawn(std::future::pending::<()>());
    let tasks = Tasks {
        claimer: never(),
        pipeline: never(),
        heartbeat: never(),
        duties: never(),
        promoter: never(),
    };
    let shutdown = Shutdown::new();
    let mut d = drain(&queue, &lease);
    d.config = Arc::new(Config::from_vars([("SHUTDOWN_TIMEOUT_MS".to_owned(), "600000".to_owned())]).unwrap());
    shutdown.graceful.cancel();
    let run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { d.run(&shutdown, tasks).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = Instant::now();
    shutdown.hard.cancel();
    run.await.unwrap();
    assert!(
        second.elapsed() <= HARD_EXIT,
        "took {:?} after the second signal",
        second.elapsed()
    );
}
