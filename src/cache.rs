//! A TTL cache, in Redis when `REDIS_URL` is set and in the process
//! otherwise (bounded, least recently used first out).
//!
//! Redis is an optimisation, not a dependency the bot needs to answer: when
//! it fails, the in-process cache serves instead, the failure is counted and
//! shown on `/health`, and Redis is tried again on later calls. Keys are
//! namespaced (`actorbot:<space>:<key>`) so several caches share one Redis.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::SecretUrl;

/// How long a Redis call may take before the local cache answers instead.
const REDIS_DEADLINE: Duration = Duration::from_millis(500);

/// A stable key for any sequence of parts (same on every host and build).
pub fn key_of<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Figures for `/metrics` and `/health`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub redis_errors: u64,
    pub local_entries: usize,
}

pub struct Cache {
    space: &'static str,
    /// In milliseconds; it can change while running ([`Cache::set_ttl`]).
    ttl_ms: AtomicU64,
    local: Mutex<LruCache<String, (Instant, Vec<u8>)>>,
    redis: Option<ConnectionManager>,
    redis_down_since: Mutex<Option<Instant>>,
    hits: AtomicU64,
    misses: AtomicU64,
    redis_errors: AtomicU64,
}

impl Cache {
    /// An in-process cache of at most `capacity` entries.
    pub fn local(space: &'static str, ttl: Duration, capacity: usize) -> Cache {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Cache {
            space,
            ttl_ms: AtomicU64::new(ttl.as_millis() as u64),
            local: Mutex::new(LruCache::new(capacity)),
            redis: None,
            redis_down_since: Mutex::new(None),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
        }
    }

    /// A cache in Redis, with the in-process one as its stand-in. A Redis
    /// that cannot be reached at start is an error: the operator asked for it.
    pub async fn with_redis(
        space: &'static str,
        ttl: Duration,
        capacity: usize,
        url: &SecretUrl,
    ) -> Result<Cache, redis::RedisError> {
        let client = redis::Client::open(url.expose())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(REDIS_DEADLINE))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_with_config(client, config).await?;
        let mut cache = Cache::local(space, ttl, capacity);
        cache.redis = Some(manager);
        Ok(cache)
    }

    /// How long an entry put from now on lives.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Entries put from now on live this long; those there keep theirs.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    fn redis_key(&self, key: &str) -> String {
        format!("actorbot:{}:{key}", self.space)
    }

    /// The value under `key`, if fresh.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let found = match self
            .redis_call(
                |mut redis, k| async move { redis.get::<_, Option<Vec<u8>>>(k).await },
                key,
            )
            .await
        {
            Some(found) => found,
            None => self.local_get(key),
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `value` under `key` for the TTL.
    pub async fn put(&self, key: &str, value: Vec<u8>) {
        self.local_put(key, value.clone());
        let ttl = self.ttl().as_secs().max(1);
        let _ = self
            .redis_call(
                |mut redis, k| async move { redis.set_ex::<_, _, ()>(k, value, ttl).await },
                key,
            )
            .await;
    }

    /// Runs a Redis command with a deadline; `None` when there is no Redis
    /// or it failed (then the local cache answers).
    async fn redis_call<T, F, Fut>(&self, command: F, key: &str) -> Option<T>
    where
        F: FnOnce(ConnectionManager, String) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let redis = self.redis.clone()?;
        let result =
            tokio::time::timeout(REDIS_DEADLINE, command(redis, self.redis_key(key))).await;
        let mut down = self
            .redis_down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(Ok(value)) => {
                if down.take().is_some() {
                    log::info!("cache: Redis is back");
                }
                Some(value)
            }
            Ok(Err(err)) => {
                self.redis_failed(&mut down, &err.to_string());
                None
            }
            Err(_) => {
                self.redis_failed(&mut down, "no answer within 500ms");
                None
            }
        }
    }

    fn redis_failed(&self, down: &mut Option<Instant>, why: &str) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        if down.is_none() {
            log::warn!("cache: Redis failed ({why}); serving from the in-process cache");
            *down = Some(Instant::now());
        }
    }

    /// Pings Redis, when there is one: its round-trip time, or why it
    /// failed. A ping that succeeds ends a "down" spell as any command does.
    pub async fn ping(&self) -> Option<Result<Duration, String>> {
        self.redis.as_ref()?;
        let started = Instant::now();
        let pong = self
            .redis_call(
                |mut redis, _| async move { redis::cmd("PING").query_async::<String>(&mut redis).await },
                "ping",
            )
            .await;
        Some(match pong {
            Some(_) => Ok(started.elapsed()),
            None => Err("no answer from Redis".to_string()),
        })
    }

    /// `Some(since)` while Redis is failing.
    pub fn redis_down_since(&self) -> Option<Instant> {
        *self
            .redis_down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn local_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        match local.get(key) {
            Some((expires, value)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                local.pop(key);
                None
            }
            None => None,
        }
    }

    fn local_put(&self, key: &str, value: Vec<u8>) {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.put(key.to_string(), (Instant::now() + self.ttl(), value));
    }

    /// Drops expired local entries; answers how many went.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<String> = local
            .iter()
            .filter(|(_, (expires, _))| *expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            local.pop(key);
        }
        expired.len()
    }

    /// Drops the older half of the local entries (least recently used
    /// first), under memory pressure; answers how many went. Redis keeps
    /// its own.
    pub fn shrink(&self) -> usize {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let drop = local.len().div_ceil(2);
        for _ in 0..drop {
            local.pop_lru();
        }
        drop
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            local_entries: self.local.lock().map(|l| l.len()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn local_entries_expire_and_the_oldest_go_first() {
        let cache = Cache::local("test", Duration::from_millis(50), 2);
        cache.put("a", b"1".to_vec()).await;
        cache.put("b", b"2".to_vec()).await;
        assert_eq!(cache.get("a").await, Some(b"1".to_vec()));
        cache.put("c", b"3".to_vec()).await; // "b" is the least recently used
        assert_eq!(cache.get("b").await, None);
        assert_eq!(cache.get("c").await, Some(b"3".to_vec()));
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(cache.sweep(), 2);
        assert_eq!(cache.get("a").await, None);
    }

    #[test]
    fn keys_are_stable_and_unambiguous() {
        assert_eq!(key_of(["ab", "c"]), key_of(["ab", "c"]));
        assert_ne!(key_of(["ab", "c"]), key_of(["a", "bc"]));
        assert_eq!(key_of(["x"]).len(), 64);
    }
}
