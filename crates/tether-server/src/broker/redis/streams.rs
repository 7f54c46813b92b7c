//! The stream scripts as the broker calls them (see `redis_scripts`): which keys each call
//! names, and on a cluster, the second call when a script reports a channel's state made by
//! another Redis process (a slot migration keeps the stream; see `redis_lineage`).

use super::*;

/// A history entry as the script returns it: its ID (`OFFSET-0`) and fields.
pub(super) type Entry = (String, Vec<(String, String)>);

/// The publications in history entries, by offset.
pub(super) fn entries(entries: Vec<Entry>) -> Vec<(u64, Arc<RawValue>)> {
    let mut publications = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let offset = id.split('-').next().and_then(|o| o.parse::<u64>().ok());
        let data = fields.into_iter().find(|(k, _)| k == "d").map(|(_, v)| v);
        if let (Some(offset), Some(data)) = (offset, data) {
            if let Ok(raw) = RawValue::from_string(data) {
                publications.push((offset, Arc::<RawValue>::from(raw)));
            }
        }
    }
    publications
}

impl RedisBroker {
    /// Run the publish script: (epoch, offset, duplicate 0/1). `history` is the channel's
    /// (size, ttl), `once` its idempotency (key, window); keys not in use are not named (a
    /// missing key beside present ones is refused while the cluster migrates the slot).
    pub(super) async fn run_publish(
        &self,
        channel: &str,
        data: &RawValue,
        (size, ttl): (usize, Duration),
        (key, window): (&str, Duration),
    ) -> Result<(String, u64, u8), BrokerError> {
        let mut adopt = self.ask_first();
        loop {
            let mut call = self.publish.key(state_key(channel));
            if size > 0 {
                call.key(history_key(channel));
            }
            if !window.is_zero() {
                call.key(idempotency_key(channel, key));
            }
            let (epoch, offset, duplicate, moved): (String, u64, u8, String) = call
                .arg(data.get())
                .arg(size)
                .arg(ttl.as_millis() as u64)
                .arg(new_epoch())
                .arg(publications_channel(channel, self.endpoint.sharded()))
                .arg(self.state_ttl.max(ttl).as_millis() as u64)
                .arg(window.as_millis() as u64)
                .arg(if self.endpoint.sharded() { "SPUBLISH" } else { "PUBLISH" })
                .arg(&adopt)
                .invoke_async(&mut self.commands.get())
                .await
                .map_err(Self::unavailable)?;
            match moved.is_empty() {
                true => return Ok((epoch, offset, duplicate)),
                false => adopt = self.adopt(&moved).await,
            }
        }
    }

    /// Run the history script from offset `from` (0: the position only): (epoch, top,
    /// entries, over).
    pub(super) async fn run_history(
        &self,
        channel: &str,
        from: u64,
        max_bytes: u64,
    ) -> Result<(String, u64, Vec<Entry>, u64), BrokerError> {
        let policy = history_policy(&self.rules, channel);
        let ttl = policy.map(|p| p.ttl).unwrap_or(Duration::ZERO);
        let mut adopt = self.ask_first();
        loop {
            let mut call = self.history.key(state_key(channel));
            if policy.is_some() {
                call.key(history_key(channel));
            }
            let (epoch, top, entries, over, moved): (String, u64, Vec<Entry>, u64, String) = call
                .arg(new_epoch())
                .arg(self.state_ttl.max(ttl).as_millis() as u64)
                .arg(ttl.as_millis() as u64)
                .arg(from)
                .arg(crate::broker::MAX_REPLAY)
                .arg(max_bytes)
                .arg(&adopt)
                .invoke_async(&mut self.commands.get())
                .await
                .map_err(Self::unavailable)?;
            match moved.is_empty() {
                true => return Ok((epoch, top, entries, over)),
                false => adopt = self.adopt(&moved).await,
            }
        }
    }

    /// The scripts' first `adopt`: on a cluster, a state made by another Redis process is
    /// reported (it may have come with its slot), elsewhere it starts a new epoch.
    fn ask_first(&self) -> String {
        if self.endpoint.sharded() { "?" } else { "" }.to_owned()
    }

    /// The next `adopt` after a script reported a state made elsewhere ('MADE>HERE'): that,
    /// if it came with its slot (the stream goes on), else `!` (a new epoch, now). Never `?`,
    /// so each call asks at most once. A verdict holds for a few seconds for the same pair:
    /// a moved slot or a failed-over shard reports it for each of its channels.
    async fn adopt(&self, moved: &str) -> String {
        let migrated = match self.verdicts.get(moved) {
            Some(migrated) => migrated,
            None => {
                let mut conn = self.commands.get();
                let migrated = crate::broker::redis_lineage::check(&mut conn, moved).await;
                self.verdicts.put(moved, migrated);
                migrated
            }
        };
        match migrated {
            true => moved.to_owned(),
            false => "!".to_owned(),
        }
    }
}
