//! Where the Redis broker's Redis is: one address (`redis://HOST:PORT`), the master a set of
//! Sentinels names (`redis-sentinel://HOST:PORT,HOST:PORT/MASTER`), which moves on failover, or
//! a Redis Cluster (`redis-cluster://HOST:PORT,HOST:PORT`), where each channel lives on the
//! shard that owns its hash slot and its publications go over sharded pub/sub.
//!
//! With Sentinel the broker asks the Sentinels for the master each time its pub/sub link has to
//! be opened again, and replaces its command connection when the master has moved. What a
//! failover means for the streams (a new epoch, clients told `recovered: false`) is the
//! scripts' run id check (see `redis_scripts` and docs/protocol.md).

use super::BrokerError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Mutex;
use std::time::Duration;

pub const SENTINEL_SCHEME: &str = "redis-sentinel://";
/// Redis round trips slower than this fail (and surface as 503), rather than hang a request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const PUBLICATIONS_PREFIX: &str = "tether:p:";

/// The pub/sub channel a channel's publications go out on: `tether:p:CH`, or on a cluster
/// `tether:p:{CH}` (a sharded channel must hash to the slot of the channel's keys, which the
/// publish script writes in the same step).
pub fn publications_channel(channel: &str, sharded: bool) -> String {
    match sharded {
        false => format!("{PUBLICATIONS_PREFIX}{channel}"),
        true => format!("{PUBLICATIONS_PREFIX}{{{channel}}}"),
    }
}

/// The channel a publications channel is for (see [`publications_channel`]).
pub fn channel_of(name: &str, sharded: bool) -> Option<&str> {
    let rest = name.strip_prefix(PUBLICATIONS_PREFIX)?;
    match sharded {
        false => Some(rest),
        true => rest.strip_prefix('{')?.strip_suffix('}'),
    }
}
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

pub enum Endpoint {
    Direct(redis::Client),
    Sentinel {
        sentinels: tokio::sync::Mutex<SentinelClient>,
        master: String,
    },
    /// The cluster's seed nodes; the client learns the rest (and follows MOVED/ASK).
    Cluster(Vec<String>),
}

/// Told every push a cluster connection receives (publications, subscription confirmations),
/// on the connection's own task: it must only queue them.
pub type OnPush = std::sync::Arc<dyn Fn(redis::PushInfo) + Send + Sync>;

impl Endpoint {
    /// `redis://…`, `rediss://…` or `redis-sentinel://HOST:PORT[,HOST:PORT…]/MASTER`.
    pub fn parse(url: &str) -> Result<Endpoint, BrokerError> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            let nodes: Vec<String> = rest
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{h}/?protocol=resp3"))
                .collect();
            if nodes.is_empty() {
                return Err(BrokerError::Unavailable(format!(
                    "`{url}` names no node; write redis-cluster://HOST:PORT,HOST:PORT"
                )));
            }
            return Ok(Endpoint::Cluster(nodes));
        }
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
    /// asked, and the master's role checked). Not for a cluster (see [`Commands::cluster`]).
    pub async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Endpoint::Direct(client) => Ok(client.clone()),
            Endpoint::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster has no single client",
            ))),
            Endpoint::Sentinel { sentinels, master } => {
                let mut sentinels = sentinels.lock().await;
                let asked = sentinels.async_get_client();
                match tokio::time::timeout(RESPONSE_TIMEOUT, asked).await {
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

    /// Whether this is a cluster: channels are sharded, and published with `SPUBLISH`.
    pub fn sharded(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }
}

/// A connection to Redis: one server's, or a cluster's (which routes each command to the
/// shard owning its key, follows `MOVED`/`ASK` and refreshes the slot map by itself).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// `PUBLISH`, or on a cluster `SPUBLISH` (to the shard owning the channel's slot, whose
    /// answer counts that shard's subscribers: all of them).
    pub fn publish(&self) -> Cmd {
        match self {
            Conn::Single(_) => redis::cmd("PUBLISH"),
            Conn::Cluster(_) => redis::cmd("SPUBLISH"),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The command connection: reconnects by itself, and is replaced when the master moves.
pub struct Commands(Mutex<Conn>);

impl Commands {
    pub async fn connect(client: &redis::Client) -> redis::RedisResult<Commands> {
        Ok(Commands(Mutex::new(Conn::Single(Self::manager(client).await?))))
    }

    /// A cluster connection (RESP3) whose pushes go to `on_push`.
    pub async fn cluster(nodes: &[String], on_push: OnPush) -> redis::RedisResult<Commands> {
        let conn = Self::cluster_connection(nodes, on_push).await?;
        Ok(Commands(Mutex::new(Conn::Cluster(conn))))
    }

    /// A new cluster connection, which learns the slot map afresh from `nodes`.
    pub async fn cluster_connection(
        nodes: &[String],
        on_push: OnPush,
    ) -> redis::RedisResult<ClusterConnection> {
        let timeout = RESPONSE_TIMEOUT;
        let client: ClusterClient = ClusterClientBuilder::new(nodes.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .push_sender(move |push: redis::PushInfo| {
                on_push(push);
                Ok::<(), std::convert::Infallible>(())
            })
            .build()?;
        let conn = tokio::time::timeout(timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out connecting to the cluster",
                ))
            })??;
        Ok(conn)
    }

    /// Use `conn` from now on (a cluster connection made afresh).
    pub fn set(&self, conn: Conn) {
        *crate::sync::lock(&self.0) = conn;
    }

    async fn manager(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
        let timeout = Some(RESPONSE_TIMEOUT);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(2));
        client.get_connection_manager_with_config(config).await
    }

    /// A handle on the current connection (cheap: a clone of the manager).
    pub fn get(&self) -> Conn {
        crate::sync::lock(&self.0).clone()
    }

    /// Point the command connection at `client` (the new master).
    pub async fn follow(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let manager = Self::manager(client).await?;
        *crate::sync::lock(&self.0) = Conn::Single(manager);
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
        let cluster = Endpoint::parse("redis-cluster://127.0.0.1:7000,127.0.0.1:7001");
        assert!(matches!(cluster, Ok(Endpoint::Cluster(ref nodes)) if nodes.len() == 2));
        assert_eq!(publications_channel("a:b", true), "tether:p:{a:b}");
        assert_eq!(channel_of("tether:p:{a:b}", true), Some("a:b"));
        assert_eq!(channel_of("tether:p:a:b", false), Some("a:b"));
        for bad in [
            "redis-sentinel://127.0.0.1:26379",
            "redis-sentinel:///main",
            "nope://x",
            "redis-cluster://",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
