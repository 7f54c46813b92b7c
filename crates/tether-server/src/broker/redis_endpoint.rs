//! Where the Redis broker's Redis is: one address (`redis://HOST:PORT`), or the master a set of
//! Sentinels names (`redis-sentinel://HOST:PORT,HOST:PORT/MASTER`), which moves on failover.
//!
//! With Sentinel the broker asks the Sentinels for the master each time its pub/sub link has to
//! be opened again, and replaces its command connection when the master has moved. What a
//! failover means for the streams (a new epoch, clients told `recovered: false`) is the
//! scripts' run id check (see `redis_scripts` and docs/protocol.md).

use super::BrokerError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use std::sync::Mutex;

pub const SENTINEL_SCHEME: &str = "redis-sentinel://";

pub enum Endpoint {
    Direct(redis::Client),
    Sentinel { sentinels: tokio::sync::Mutex<SentinelClient>, master: String },
}

impl Endpoint {
    /// `redis://…`, `rediss://…` or `redis-sentinel://HOST:PORT[,HOST:PORT…]/MASTER`.
    pub fn parse(url: &str) -> Result<Endpoint, BrokerError> {
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return redis::Client::open(url).map(Endpoint::Direct).map_err(|e| {
                BrokerError::Unavailable(format!(
                    "`{url}` is not a Redis URL ({e}); write redis://HOST:PORT"
                ))
            });
        };
        let bad = |why: &str| {
            BrokerError::Unavailable(format!(
                "`{url}` is not a Sentinel URL ({why}); write redis-sentinel://HOST:PORT,HOST:PORT/MASTER"
            ))
        };
        let (hosts, master) = rest.split_once('/').ok_or_else(|| bad("no /MASTER"))?;
        if master.is_empty() || master.contains('/') {
            return Err(bad("the master's name is missing"));
        }
        let sentinels: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{h}")).collect();
        if sentinels.is_empty() {
            return Err(bad("no Sentinel address"));
        }
        let client =
            SentinelClient::build(sentinels, master.to_owned(), None, SentinelServerType::Master)
                .map_err(|e| bad(&e.to_string()))?;
        Ok(Endpoint::Sentinel {
            sentinels: tokio::sync::Mutex::new(client),
            master: master.to_owned(),
        })
    }

    /// A client for Redis as it is now: with Sentinel, the current master (the Sentinels are
    /// asked, and the master's role checked).
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Endpoint::Direct(client) => Ok(client.clone()),
            Endpoint::Sentinel { sentinels, master } => {
                let mut sentinels = sentinels.lock().await;
                let asked = sentinels.async_get_client();
                match tokio::time::timeout(super::redis::RESPONSE_TIMEOUT, asked).await {
                    Ok(client) => client,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the Sentinels did not name a master in time",
                        master.clone(),
                    ))),
                }
            }
        }
    }

    /// Whether the master can move (its command connection must then follow it).
    pub fn moves(&self) -> bool {
        matches!(self, Endpoint::Sentinel { .. })
    }
}

/// The command connection: reconnects by itself, and is replaced when the master moves.
pub struct Commands(Mutex<ConnectionManager>);

impl Commands {
    pub async fn connect(client: &redis::Client) -> redis::RedisResult<Commands> {
        Ok(Commands(Mutex::new(Self::manager(client).await?)))
    }

    async fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let timeout = Some(super::redis::RESPONSE_TIMEOUT);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(2));
        client.get_connection_manager_with_config(config).await
    }

    /// A handle on the current connection (cheap: a clone of the manager).
    pub fn get(&self) -> ConnectionManager {
        crate::sync::lock(&self.0).clone()
    }

    /// Point the command connection at `client` (the new master).
    pub async fn follow(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let manager = Self::manager(client).await?;
        *crate::sync::lock(&self.0) = manager;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_an_address_or_sentinels_and_a_master() {
        assert!(matches!(Endpoint::parse("redis://127.0.0.1:6379"), Ok(Endpoint::Direct(_))));
        let sentinel = Endpoint::parse("redis-sentinel://127.0.0.1:26379,127.0.0.1:26380/main");
        assert!(matches!(sentinel, Ok(Endpoint::Sentinel { ref master, .. }) if master == "main"));
        for bad in ["redis-sentinel://127.0.0.1:26379", "redis-sentinel:///main", "nope://x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
