//! The connection's task: parked or active, and the moves between (the park/wake state
//! machine). What a parked connection keeps is exactly [`Parked`].

use super::*;

/// The task of one connection. Written by hand rather than as one `async fn` so that what a
/// parked connection keeps is exactly [`Parked`]: an async fn's state is the union of all its
/// await points (and keeps moved-from arguments), which measured ~2 KB per connection. Active
/// phases run as a boxed future that exists only while the connection is active.
pub(crate) struct ConnectionTask {
    state: TaskState,
}

/// An active phase: ends with the connection parked (when its heartbeat is due, and whether it
/// parked between a chatty peer's messages), or `None` once the connection has ended.
pub(super) type ActivePhase = Pin<Box<dyn Future<Output = Option<(Parked, Instant, bool)>> + Send>>;

// The large variant is the point: a parked connection is held inline, in the task itself.
#[allow(clippy::large_enum_variant)]
pub(super) enum TaskState {
    /// Upgrading, or active: returns the parked connection, or `None` once it has ended.
    Running(ActivePhase),
    Parked(Parked),
    Done,
}

/// All a parked connection holds. Every byte counts: with the task's own bookkeeping this must
/// stay within tokio's 384-byte task cell (cells are 128-byte aligned; measured in decision 0007).
/// When its heartbeat is next due is written into its mailbox, for the shared timer.
pub(crate) struct Parked {
    /// Publishers write to the parked socket directly, as to an active one, so a subscriber
    /// that only receives stays parked. First, so dropped first: the window closes before the
    /// socket can (see `mailbox::direct`).
    pub(super) direct: DirectWindow,
    pub(super) conn: Connection,
    pub(super) transport: Transport,
}

impl ConnectionTask {
    /// The task for a handshake about to be answered with 101: wait for hyper's upgrade, then
    /// serve. The connection is made here, before the 101 goes out, so that its `?channel=`
    /// subscriptions exist by the time the client can see the WebSocket open: a publication
    /// made right after the handshake is queued for it rather than missed. Should the upgrade
    /// not complete, dropping the connection gives everything back (`Drop for Connection`).
    pub(crate) fn new(
        shared: Arc<Node>,
        on_upgrade: hyper::upgrade::OnUpgrade,
        peer: Option<SocketAddr>,
        mode: Mode,
        channels: Vec<String>,
        grant: Option<Arc<Grant>>,
        deflate: Option<u8>,
    ) -> Self {
        let window = deflate.unwrap_or(0);
        let conn = Connection::open(shared, peer, mode, mode.as_str(), channels, grant, window);
        let start = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(peer = ?peer, error = %e, "upgrade did not complete");
                    return None;
                }
            };
            // No inflater yet: the connection makes one when it first reads (`Connection::active`
            // sees the window in its mailbox).
            let transport = Transport::new(upgraded);
            let parked = Parked { direct: DirectWindow::closed(), conn, transport };
            // Parked from the start: the server has nothing to say until the first heartbeat, so
            // a new connection holds no WebSocket state until its peer or a publication needs
            // it. (Anything the peer sent already wakes it at once; so does a publication queued
            // before the upgrade completed.)
            let wake_at = parked.conn.session.wake_at(std::time::Instant::now());
            Some((parked, Instant::from_std(wake_at), false))
        };
        ConnectionTask { state: TaskState::Running(Box::pin(start)) }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                TaskState::Running(phase) => match phase.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        self.state = TaskState::Done;
                        return Poll::Ready(());
                    }
                    Poll::Ready(Some((mut parked, wake_at, chatty))) => {
                        let shared = parked.conn.shared.clone();
                        shared.metrics.connections_parked.inc();
                        shared.parking.ensure_tasks();
                        parked.conn.queue.set_deadline(shared.parking.ticks(wake_at));
                        parked.conn.queue.clear_socket_ready();
                        // A chatty peer's socket stays in tokio's reactor (256 bytes more while
                        // parked): moving it out and back costs four `epoll_ctl` per message.
                        if !chatty {
                            parked.transport.leave_reactor(&shared.parking, parked.conn.lot_key);
                        }
                        // Opened only now: moving between reactors can close the socket.
                        let socket = parked.transport.direct_socket();
                        parked.direct = DirectWindow::open(&parked.conn.queue, socket);
                        self.state = TaskState::Parked(parked);
                    }
                },
                TaskState::Parked(parked) => {
                    if parked.poll_wake(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let TaskState::Parked(mut parked) =
                        std::mem::replace(&mut self.state, TaskState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    // Closed before the socket moves back to tokio's reactor (which can close it);
                    // the active phase opens its own.
                    parked.direct = DirectWindow::closed();
                    parked.transport.rejoin_reactor(&parked.conn.shared.parking);
                    parked.conn.shared.metrics.connections_parked.dec();
                    parked.conn.shared.metrics.connection_wakeups.inc();
                    parked.conn.queue.set_deadline(u64::MAX);
                    self.state = TaskState::Running(Box::pin(parked.resume()));
                }
                TaskState::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Parked {
    /// Ready when the socket is readable (data, end, error), the mailbox has something, the
    /// heartbeat is due, or shutdown began. Registers the task's waker with the mailbox
    /// (which the hub, the shared timer and shutdown wake) and with the socket.
    pub(super) fn poll_wake(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let shared = &self.conn.shared;
        if self.conn.queue.poll_ready(cx).is_ready()
            || self.conn.queue.socket_ready()
            || self.conn.queue.ordered()
            || shared.parking.ticks(Instant::now()) >= self.conn.queue.deadline()
            || shared.stopping()
            || self.transport.poll_activity(cx).is_ready()
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Run active again until the connection parks again (`Some`) or ends (`None`, logged).
    pub(super) async fn resume(self) -> Option<(Parked, Instant, bool)> {
        let Parked { direct, mut conn, transport } = self;
        drop(direct); // closed already (see `poll`)
        match conn.active(transport).await {
            Phase::Ended(ending) => {
                conn.finish(ending, "websocket");
                None
            }
            Phase::Idle { mut transport, wake_at, chatty } => {
                transport.shrink();
                let direct = DirectWindow::closed(); // opened once the socket has moved
                Some((Parked { direct, conn, transport }, wake_at, chatty))
            }
        }
    }
}
