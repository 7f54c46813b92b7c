//! An active connection: the WebSocket over its transport and the select loop over the
//! socket, the mailbox and the heartbeat timer, until it ends or idles.

use super::*;

impl Connection {
    /// One active phase: a WebSocket over `transport` until the connection ends or idles.
    pub(super) async fn active(
        &mut self,
        mut transport: Transport,
        heartbeat: &mut Heartbeat,
        resync: &mut watch::Receiver<u64>,
        missed_resync: bool,
    ) -> Phase {
        if self.queue.window() != 0 && !transport.inflates() {
            // Dropped while parked (see `Transport::shrink`): the mailbox remembers the deal.
            transport.inflate(self.shared.config.max_message_size.as_u64() as usize);
        }
        let socket = transport.direct_socket();
        let gate = Gate::new(transport, self.queue.clone(), self.shared.metrics.clone());
        let mut ws =
            WebSocketStream::from_raw_socket(gate, Role::Server, Some(self.shared.ws_config)).await;
        // Declared after `ws`, so dropped before it on every way out: publishers stop writing
        // to the socket before it can be closed.
        let direct = DirectWindow::open(&self.queue, socket);
        // Dropping `ws` on the way out aborts the TCP connection if the ending was not a clean close.
        let ended = if missed_resync {
            Some(self.resync_close(&mut ws).await)
        } else {
            self.active_loop(&mut ws, heartbeat, resync).await
        };
        match ended {
            Some(ending) => Phase::Ended(ending),
            None => {
                let now = Instant::now();
                let wake_at = match heartbeat.poll(now.into_std()) {
                    Action::Wait(at) => self.or_token_expiry(now, Instant::from_std(at)),
                    _ => now,
                };
                drop(direct);
                Phase::Idle { transport: ws.into_inner().into_transport(), wake_at }
            }
        }
    }

    /// The broker's live feed had a hole: have the client resubscribe and recover.
    pub(super) async fn resync_close(&mut self, ws: &mut Ws) -> Ending {
        let hint = Some(self.shared.config.restart_retry_hint);
        let reason = "message backplane reconnected: resubscribe to recover";
        self.close(ws, CloseCode::SERVICE_RESTART, reason, hint, false).await
    }

    /// The select loop. `None`: idle with nothing in flight, time to park.
    pub(super) async fn active_loop(
        &mut self,
        ws: &mut Ws,
        heartbeat: &mut Heartbeat,
        resync: &mut watch::Receiver<u64>,
    ) -> Option<Ending> {
        let queue = self.queue.clone();
        let lot = self.shared.parking.clone();
        let park_after = self.shared.park_after;
        // When to consider parking, in the lot's ticks, kept in the mailbox: the lot's shared
        // timer signals us once it has passed. Moving it on each message is one store, where a
        // timer of our own would wake every busy connection every `park_after`.
        let park_check = |now: Instant| queue.set_deadline(lot.ticks(now + park_after));
        park_check(Instant::now());
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut sleep_until = None;
        // The time a message arrived serves as the next pass's clock: one reading per message
        // instead of two (the pass follows at once; its checks do not need the microseconds).
        let mut clock: Option<Instant> = None;
        loop {
            // Shutdown and resync are flags, checked here: the gateway raises them and then wakes
            // every mailbox through the parking lot, which ends the select below. (Two more
            // futures in the select, polled on every message, showed in profiles.)
            if self.shared.stopping() {
                let (code, hint) = match self.shared.config.shutdown_close {
                    crate::config::ShutdownClose::Restart => {
                        (CloseCode::SERVICE_RESTART, Some(self.shared.config.restart_retry_hint))
                    }
                    crate::config::ShutdownClose::GoingAway => (CloseCode::GOING_AWAY, None),
                };
                let reason = "server shutting down";
                return Some(Box::pin(self.close(ws, code, reason, hint, false)).await);
            }
            if self.grant.as_ref().is_some_and(|g| g.expired()) {
                return Some(Box::pin(self.token_expired(ws)).await);
            }
            // (An error would mean the gateway is gone: closing is right then too.)
            if resync.has_changed().unwrap_or(true) {
                return Some(Box::pin(self.resync_close(ws)).await);
            }
            let now = clock.take().unwrap_or_else(Instant::now);
            let wake_at = match heartbeat.poll(now.into_std()) {
                Action::SendPing => {
                    if let Err(e) = self.write_frames(ws, vec![Message::Ping(Bytes::new())]).await {
                        return Some(self.write_failed(e));
                    }
                    continue;
                }
                Action::PeerDead => {
                    self.shared.metrics.heartbeat_timeouts.inc();
                    return Some(Ending {
                        code: CloseCode::HEARTBEAT_TIMEOUT,
                        reason: "heartbeat timeout".into(),
                        initiator: Initiator::Server,
                        was_clean: false,
                    });
                }
                Action::Wait(at) => self.or_token_expiry(now, Instant::from_std(at)),
            };
            // Park when nothing happened for `park_after` and nothing is half-done: no partial
            // frame or message read, nothing queued (writes are always flushed by now).
            if lot.ticks(now) >= queue.deadline() {
                let busy = queue.take_written(); // publications written directly meanwhile
                if !busy && ws.get_ref().can_park() && queue.is_empty() && !queue.overflowed() {
                    return None;
                }
                park_check(now); // something is half-done, or it is busy: look again later
            }
            // The timer serves the heartbeat only; re-armed only when its deadline moves earlier
            // (or it has fired): a wake-up that comes too early just recomputes and re-arms.
            if sleep_until.is_none_or(|at| wake_at < at) {
                sleep.as_mut().reset(wake_at);
                sleep_until = Some(wake_at);
            }
            // The rarely taken branches below are boxed: an async fn's state is as large as its
            // largest await point, and every active connection would otherwise carry the state
            // of a closing handshake. The per-message ones (`on_message`, `write_batch`) are not:
            // a box per message costs more than the bytes it saves while active.
            // `biased`, in this order: reading first, so a busy queue never stops us reading (its
            // pongs are its proof of life); a peer that floods us still lets its queue in, since
            // tokio's cooperative budget makes the socket read pending after 128 reads, and
            // the branch taken then runs to its end. The heartbeat's timer comes last: it only
            // wakes the loop, whose top polls the heartbeat on every pass. Polling the three in
            // random order cost a waker registration on the mailbox or the timer for most
            // messages: 4.8 against 4.5-4.6 µs of CPU per ping-pong round trip.
            tokio::select! {
                biased;
                inbound = ws.next() => {
                    let arrived = Instant::now();
                    clock = Some(arrived);
                    park_check(arrived);
                    if matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))))
                        && !self.inbound_allowed(lot.ticks(arrived))
                    {
                        return Some(Box::pin(self.rate_limited(ws)).await);
                    }
                    heartbeat.on_inbound(arrived.into_std());
                    match inbound {
                        Some(Ok(Message::Pong(_))) => {
                            if let Some(rtt) = heartbeat.on_pong(Instant::now().into_std()) {
                                self.shared.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                                self.shared.stats.record_rtt(rtt);
                            }
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // tungstenite queued the pong; push it out now, not with the next write.
                            if let Err(e) = self.flush(ws).await {
                                return Some(self.write_failed(e));
                            }
                        }
                        Some(Ok(Message::Close(frame))) => return Some(Box::pin(self.peer_closed(ws, frame)).await),
                        Some(Ok(msg)) => {
                            if let Some(ending) = self.on_message(ws, msg).await {
                                return Some(ending);
                            }
                        }
                        Some(Err(e)) => return Some(Box::pin(self.read_failed(ws, e)).await),
                        None => return Some(Ending::network("connection ended without a close frame")),
                    }
                }
                out = queue.next() => {
                    // `None`: woken by the gateway (shutdown, resync); the loop's top checks.
                    let Some(out) = out else { continue };
                    park_check(Instant::now());
                    match self.write_batch(ws, out, &queue).await {
                        Err(e) => return Some(self.write_failed(e)),
                        Ok(false) => {}
                        Ok(true) if queue.overflowed() => {
                            self.shared.metrics.slow_consumers.inc();
                            return Some(Box::pin(self.close(ws, CloseCode::SLOW_CONSUMER, "slow consumer: outbound queue full", None, false)).await);
                        }
                        Ok(true) => {
                            tracing::warn!(conn = self.id, "a publication is missing from the live feed; asking the client to recover");
                            let hint = Some(self.shared.config.restart_retry_hint);
                            return Some(Box::pin(self.close(ws, CloseCode::SERVICE_RESTART, "gap in the live feed: resubscribe to recover", hint, false)).await);
                        }
                    }
                }
                _ = &mut sleep => sleep_until = None,
            }
        }
    }
}
