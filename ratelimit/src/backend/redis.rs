//! The Redis counter store, shared by every replica that uses the same Redis.
//!
//! A batch is one `MULTI`/`EXEC` transaction holding, per counter,
//! `INCRBY key hits` and `EXPIRE key window_seconds`, the commands
//! envoyproxy/ratelimit pipelines (`src/redis/fixed_cache_impl.go`), so the
//! count and its expiry are set together and replicas never lose updates.
//!
//! The connection is a `redis` crate connection manager: it connects lazily
//! (the service starts, and reports unhealthy, while Redis is down), and
//! reconnects after an I/O error. Every call is bounded by a timeout; any
//! failure is returned as an error, never as a count.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BackendError, Increment};

/// A Redis-backed counter store.
pub struct RedisBackend {
    /// The shared, reconnecting connection.
    manager: ConnectionManager,
    /// Bound on each call (connect + transaction).
    timeout: Duration,
    /// The URL with any password masked, for logs.
    display_url: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A store for `url` (`redis://host:port[/db]`, `rediss://…`,
    /// `redis+unix://…`). Does not connect yet; fails only on a malformed URL.
    /// Must be called inside a Tokio runtime.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, BackendError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Fail fast: the caller (Envoy, appguard) has its own timeout and
            // failure mode; the next request tries to reconnect again.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisBackend {
            manager,
            timeout,
            display_url: mask_password(url),
        })
    }

    /// The URL with any password replaced by `*****`.
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// Runs the increments in one transaction and returns the new counts.
    pub async fn increment(&self, items: &[Increment]) -> Result<Vec<u64>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for item in items {
            pipe.cmd("INCRBY").arg(&item.key).arg(item.hits);
            pipe.cmd("EXPIRE")
                .arg(&item.key)
                .arg(item.window_seconds)
                .ignore();
        }
        let mut conn = self.manager.clone();
        let counts: Vec<i64> = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
            .await
            .map_err(|_| BackendError::Timeout(self.timeout))??;
        if counts.len() != items.len() {
            return Err(BackendError::UnexpectedReply(format!(
                "{} counts for {} increments",
                counts.len(),
                items.len()
            )));
        }
        // A negative count can only come from someone else's DECRBY; treat it
        // as nothing used.
        Ok(counts
            .into_iter()
            .map(|c| u64::try_from(c).unwrap_or(0))
            .collect())
    }

    /// Sends PING and expects PONG.
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.manager.clone();
        let reply: String =
            tokio::time::timeout(self.timeout, redis::cmd("PING").query_async(&mut conn))
                .await
                .map_err(|_| BackendError::Timeout(self.timeout))??;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(BackendError::UnexpectedReply(reply))
        }
    }
}

/// `redis://user:secret@host` → `redis://*****@host`.
pub fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}*****{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            mask_password("redis://user:pa@ss@10.0.0.1:6379/0"),
            "redis://*****@10.0.0.1:6379/0"
        );
        assert_eq!(
            mask_password("rediss://:secret@host"),
            "rediss://*****@host"
        );
    }

    #[tokio::test]
    async fn malformed_urls_are_refused_and_down_redis_is_an_error() {
        assert!(RedisBackend::new("http://nope", Duration::from_millis(200)).is_err());
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let backend = RedisBackend::new(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(backend.ping().await.is_err());
        let item = Increment {
            key: "k".to_owned(),
            hits: 1,
            window_seconds: 60,
            window_end: 60,
        };
        assert!(backend.increment(&[item]).await.is_err());
    }
}
