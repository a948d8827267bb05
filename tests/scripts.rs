//! The protocol's scripts never half-apply: Redis runs a script without rollback, so a write
//! refused halfway (a key of the wrong type) would keep the writes before it, and a payload
//! removed from one key and refused by the next would be lost. Each script checks the keys it
//! writes before its first write.

mod common;

use std::time::Duration;

use common::TestEnv;
use redis::AsyncCommands;
use step_worker::queue::{BeatMode, Payload, RedisQueue, SettleOp, Suspects};

const ISOLATE: Suspects = Suspects::Isolate { at: 2, alone: false };

#[tokio::test]
async fn a_settle_whose_target_has_the_wrong_type_keeps_the_payload_where_it_was() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let wid = "typed-host:1:0000aaaa";
    let proc = queue.keys().proc(wid);
    queue
        .heartbeat(wid, Duration::from_secs(30), BeatMode::Register, Duration::ZERO)
        .await
        .unwrap();
    env.push(r#"{"id":"typed-1","step":"builtin.noop"}"#).await;
    let payload: Payload = queue.claim(wid, &proc, 1, &[], ISOLATE).await.unwrap().jobs[0]
        .0
        .clone();
    let mut redis = env.redis.clone();
    // Someone else's value where the retries belong, then where a paused step's jobs belong.
    let _: () = redis.set(env.key("delayed"), "not a zset").await.unwrap();
    let retry = [SettleOp::Retry(payload.clone(), Duration::from_secs(1))];
    assert!(queue.settle(&proc, &retry).await.is_err(), "the settle is refused");
    assert_eq!(env.llen(&proc).await, 1, "the payload is still in the worker's list");
    let _: () = redis.del(env.key("delayed")).await.unwrap();
    let _: () = redis.sadd(env.key("paused_steps"), "builtin.noop").await.unwrap();
    let _: () = redis.set(env.key("held:builtin.noop"), "not a list").await.unwrap();
    let hold = [SettleOp::Hold(payload.clone(), "builtin.noop".into())];
    assert!(queue.settle(&proc, &hold).await.is_err());
    assert_eq!(env.llen(&proc).await, 1, "the payload is still in the worker's list");
    // With the key fixed, the same hold parks it in the held list it declares.
    let _: () = redis.del(env.key("held:builtin.noop")).await.unwrap();
    assert_eq!(queue.settle(&proc, &hold).await.unwrap(), [true]);
    assert_eq!(env.llen(&env.key("held:builtin.noop")).await, 1);
    assert_eq!(env.llen(&proc).await, 0);
    let _: () = redis
        .del(&[env.key("held:builtin.noop"), env.key("paused_steps")])
        .await
        .unwrap();
}

#[tokio::test]
async fn promotion_into_a_ready_list_of_the_wrong_type_keeps_the_retry_scheduled() {
    let env = TestEnv::new().await;
    let queue = RedisQueue::connect(&env.redis_url, &env.queue_key).await.unwrap();
    let mut redis = env.redis.clone();
    let _: () = redis
        .zadd(env.key("delayed"), r#"{"id":"due-1","step":"builtin.noop"}"#, 0)
        .await
        .unwrap();
    let _: () = redis.set(&env.queue_key, "not a list").await.unwrap();
    assert!(queue.promote().await.is_err());
    assert_eq!(
        env.zcard(&env.key("delayed")).await,
        1,
        "the due retry is still scheduled"
    );
    let beat = queue.heartbeat(
        "typed-host:1:0000bbbb",
        Duration::from_secs(30),
        BeatMode::Register,
        Duration::ZERO,
    );
    assert!(beat.await.is_err());
    assert_eq!(
        env.zcard(&env.key("delayed")).await,
        1,
        "the due retry is still scheduled"
    );
    let _: () = redis.del(&env.queue_key).await.unwrap();
    assert_eq!(queue.promote().await.unwrap().0, 1);
    assert_eq!(env.ready_len().await, 1);
}
