//! Startup check of the Redis settings the delivery guarantees depend on. An evicting
//! `maxmemory-policy` makes Redis silently delete the least recently touched keys under memory
//! pressure, which for a queue are delayed retries, idle workers' in-flight lists and the worker
//! registry: jobs vanish without an error. Production refuses to start on such a Redis unless
//! `REDIS_ALLOW_EVICTION=true` says the risk is accepted. Without AOF a Redis restart loses
//! every job it held, so that is warned about (managed services often persist differently).
//! On a Redis Cluster every node is asked (any replica may become the queue's master on
//! failover), and the worst answer counts.

use anyhow::bail;

use crate::config::{AppEnv, Config};
use crate::queue::RedisQueue;

/// Checks the settings; returns the policy (`None` where `CONFIG` is forbidden, as on many
/// managed services, whose own settings must then be checked by hand).
pub async fn check(queue: &RedisQueue, config: &Config) -> anyhow::Result<Option<String>> {
    // The first node that evicts, if any: one such node is enough to lose jobs.
    let policy = queue
        .config_get("maxmemory-policy")
        .await
        .and_then(|all| all.iter().find(|p| *p != "noeviction").or(all.first()).cloned());
    match policy.as_deref() {
        None => {
            tracing::warn!("cannot read Redis maxmemory-policy (CONFIG is not allowed): make sure it is noeviction")
        }
        Some("noeviction") => {}
        Some(p) => {
            tracing::error!(
                policy = p,
                "Redis maxmemory-policy is {p}: under memory pressure Redis will silently delete queued jobs, retries and in-flight lists; set maxmemory-policy noeviction"
            );
            if config.app_env == AppEnv::Production && !config.redis_allow_eviction {
                bail!(
                    "refusing to start in production on a Redis with maxmemory-policy {p} (it can silently delete jobs); set maxmemory-policy noeviction, or REDIS_ALLOW_EVICTION=true to accept the risk"
                );
            }
        }
    }
    let aof = queue.config_get("appendonly").await.unwrap_or_default();
    if aof.iter().any(|v| v == "no") {
        tracing::warn!("Redis appendonly is off: a Redis restart loses every queued job; set appendonly yes");
    }
    Ok(policy)
}
