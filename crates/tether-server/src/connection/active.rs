//! An active connection: the WebSocket over its transport and the select loop over the
//! socket, the mailbox and the heartbeat timer, until it ends or idles.

use super::*;

/// A message that comes after at least this much quiet lets its connection park as soon as it
/// is answered (see `active_loop`): at most 10 wake-ups a second per connection. Measured at 5
/// messages a second, a wake-up (socket kept in tokio's reactor) cost no more CPU than the
/// active loop's own timer and select; moving the socket to the lot's epoll set and back each
/// time cost 5-6 µs more per message (docs/performance.md).
const PARK_AT_ONCE_AFTER: Duration = Duration::from_millis(100);

impl Connection {
    /// One active phase: a WebSocket over `transport` until the connection ends or idles.
    pub(super) async fn active(&mut self, mut transport: Transport) -> Phase {
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
        let mut chatty = false;
        match self.active_loop(&mut ws, &mut chatty).await {
            Some(ending) => Phase::Ended(ending),
            None => {
                let wake_at = Instant::from_std(self.session.wake_at(std::time::Instant::now()));
                drop(direct);
                Phase::Idle { transport: ws.into_inner().into_transport(), wake_at, chatty }
            }
        }
    }

    /// The select loop. `None`: idle with nothing in flight, time to park (`chatty`: right
    /// after a message from a peer that talks often).
    pub(super) async fn active_loop(&mut self, ws: &mut Ws, chatty: &mut bool) -> Option<Ending> {
        let queue = self.queue.clone();
        let lot = self.shared.parking.clone();
        let park_after = self.shared.park_after;
        // When to consider parking, in the lot's ticks, kept in the mailbox: the lot's shared
        // timer signals us once it has passed. Moving it on each message is one store, where a
        // timer of our own would wake every busy connection every `park_after`.
        let park_check = |now: Instant| queue.set_deadline(lot.ticks(now + park_after));
        park_check(Instant::now());
        // A peer that was quiet this long before its message talks slowly: park as soon as the
        // message is answered rather than hold the active state (~5 KB) for `park_after` more.
        // It costs no extra wake-up when the gap is `park_after` or more (the connection would
        // have parked in it anyway), and one per message below that: then the socket stays in
        // tokio's reactor while parked, which keeps that wake-up cheap.
        let quiet_enough = park_after.min(PARK_AT_ONCE_AFTER);
        let mut park_at_once = false;
        let mut gap = Duration::ZERO;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut sleep_until = None;
        // The time a message arrived serves as the next pass's clock: one reading per message
        // instead of two (the pass follows at once; its checks do not need the microseconds).
        let mut clock: Option<Instant> = None;
        loop {
            // Shutdown is a flag, checked here: the gateway raises it and then wakes
            // every mailbox through the parking lot, which ends the select below. (Two more
            // futures in the select, polled on every message, showed in profiles.)
            if self.shared.stopping() {
                let close = Close::shutdown(&self.shared.config);
                return Some(Box::pin(self.close(ws, close)).await);
            }
            // The server API's orders (subscribe, unsubscribe, disconnect this user).
            if queue.take_ordered() {
                if let Some(ending) = Box::pin(self.obey(ws)).await {
                    return Some(ending);
                }
            }
            let now = clock.take().unwrap_or_else(Instant::now);
            let wake_at = match self.session.tick(rules(&self.shared), now.into_std()) {
                Tick::SendPing => {
                    if let Err(e) = self.write_frames(ws, vec![Message::Ping(Bytes::new())]).await {
                        return Some(self.write_failed(e));
                    }
                    continue;
                }
                Tick::PeerDead => return Some(Ending::heartbeat_timeout()),
                Tick::Close(close) => return Some(Box::pin(self.close(ws, close)).await),
                Tick::Wait(at) => Instant::from_std(at),
            };
            // Park when nothing happened for `park_after` and nothing is half-done: no partial
            // frame or message read, no whole message read and not yet taken (a blocked write,
            // the heartbeat's, can come between two messages of one read), nothing queued
            // (writes are always flushed by now).
            // Publications written directly do not count: they reach a parked socket too.
            let at_once = std::mem::take(&mut park_at_once);
            if at_once || lot.ticks(now) >= queue.deadline() {
                if ws.get_ref().can_park() && queue.is_empty() && !queue.overflowed() {
                    *chatty = at_once && gap < park_after;
                    return None;
                }
                if !at_once {
                    park_check(now); // something is half-done: look again later
                }
            }
            // The timer serves the heartbeat only; re-armed only when its deadline moves earlier
            // (or it has fired): a wake-up that comes too early just recomputes and re-arms.
            if sleep_until.is_none_or(|at| wake_at < at) {
                sleep.as_mut().reset(wake_at);
                sleep_until = Some(wake_at);
            }
            // The rarely taken branches below are boxed: an async fn's state is as large as its
            // largest await point, and every active connection would otherwise carry the state
            // of a closing handshake. So is `write_batch` (2.3 KB of state; the queued path,
            // which direct writes leave to TLS connections and to bursts: one allocation beside
            // a `writev`). `on_message` is not (an inbound message is the common case for an
            // active connection); its rare branches are boxed inside it. Together: 6.9 KB of
            // active state down to 3.2 KB.
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
                    if let Some(Ok(_)) = &inbound {
                        // Parking waits until every message tungstenite has read was taken.
                        ws.get_mut().took_message();
                    }
                    park_check(arrived);
                    let counted = matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))));
                    let (at, ticks) = (arrived.into_std(), lot.ticks(arrived));
                    gap = self.session.quiet_before(at);
                    park_at_once = gap >= quiet_enough;
                    if let Err(close) = self.session.received(rules(&self.shared), at, ticks, counted) {
                        return Some(Box::pin(self.close(ws, close)).await);
                    }
                    match inbound {
                        Some(Ok(Message::Pong(_))) => {
                            let now = std::time::Instant::now();
                            if let Some(rtt) = self.session.pong(rules(&self.shared), now) {
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
                    // `None`: woken by the gateway (shutdown); the loop's top checks.
                    let Some(out) = out else { continue };
                    park_check(Instant::now());
                    match Box::pin(self.write_batch(ws, out, &queue)).await {
                        Err(e) => return Some(self.write_failed(e)),
                        Ok(false) => {}
                        Ok(true) if queue.overflowed() => {
                            self.shared.metrics.slow_consumers.inc();
                            return Some(Box::pin(self.close(ws, Close::slow_consumer())).await);
                        }
                        Ok(true) => {
                            tracing::warn!(conn = self.id, "a publication is missing from the live feed; asking the client to recover");
                            let close = Close::gap(&self.shared.config);
                            return Some(Box::pin(self.close(ws, close)).await);
                        }
                    }
                }
                _ = &mut sleep => sleep_until = None,
            }
        }
    }
}
