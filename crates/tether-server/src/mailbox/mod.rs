//! A connection's mailbox: its bounded outbound queue, its subscriptions (each with the last
//! publication delivered on it), and the signals its task must wake up for.
//!
//! A publication reaches a subscriber in one of three ways (decisions 0008 and 0012):
//! - **direct**: the publisher writes the publication's shared frame straight to the socket, when
//!   the connection is on a plain TCP socket (active or parked), its task is not writing, and
//!   nothing is queued ahead. No task wake-up, no queue: one non-blocking `send` per
//!   subscriber, and a subscriber that only receives stays parked. Whatever
//!   the socket does not take at once is queued, already admitted, for the task to finish.
//!   The handle publishers write through, and the invariant that keeps its descriptor open
//!   while they do, are in `direct` ([`DirectWindow`]).
//! - **queued**: for the connection's task, which writes several at a time (with
//!   `fanout_sweep = never`, or for the connections a direct write cannot reach).
//! - **by sweep**: when publications on a channel come faster than a direct fan-out takes (see
//!   `hub::pace`; the default `auto`), one task goes round the subscribers and hands each
//!   everything new in one `writev` (`hub::sweep`), through this mailbox's direct path.
//!
//! Both ways pass the same admission (`Subscriptions::admit`), under the mailbox's lock, so the
//! seam between a recovery replay and live traffic, and gap detection, hold whichever way a
//! publication goes.

mod direct;
mod subscriptions;

use crate::publication::Published;
pub(crate) use direct::DirectWindow;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
pub(crate) use subscriptions::{Admission, Subscriptions};
use tokio_tungstenite::tungstenite::Message;

/// One item of a connection's outbound queue.
pub enum Outbound {
    /// A reply or error for this connection.
    Reply(Message),
    /// A publication, shared with every other subscriber it went to; admitted when popped.
    Publication(Arc<Published>),
    /// A publication a publisher admitted and began to write directly: `written` bytes of its
    /// frame went out (0 when the socket was full). The rest goes before anything else.
    Admitted { publication: Arc<Published>, written: usize },
}

/// What the lock guards.
struct Mail {
    items: VecDeque<Outbound>,
    subscriptions: Subscriptions,
    /// The connection's socket while publishers may write to it: the direct-write handle, whose
    /// invariant `direct` states.
    socket: direct::Socket,
    /// What the queued items weigh, in KiB rounded up per item (a u16 keeps `Mail` in 64 bytes).
    queued_kib: u16,
    /// The permessage-deflate window its compressed frames must fit (see
    /// `Published::wire_for`); 0: the extension was not agreed.
    window: u8,
    /// [`WRITING`]: one byte, where `bool`s would push `Mail` past 64 bytes and
    /// the mailbox past jemalloc's 128-byte class.
    flags: u8,
}

/// The connection's task holds the write side: it is writing, or holds items it popped.
const WRITING: u8 = 1;

impl Mail {
    fn is(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
}

/// An item's weight against `outbound_queue_bytes`: KiB, rounded up, at least 1.
fn kib(item: &Outbound) -> u16 {
    let bytes = match item {
        Outbound::Reply(m) => m.len(),
        Outbound::Publication(p) => p.payload.len(),
        Outbound::Admitted { publication, written } => {
            publication.wire.as_ref().map_or(0, |w| w.len().saturating_sub(*written))
        }
    };
    u16::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u16::MAX)
}

/// What [`OutboundQueue::hand_over`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HandOver {
    /// Publications written whole to the socket...
    pub written: u32,
    /// ...with this many bytes of message text...
    pub written_bytes: u64,
    /// ...and publications queued for the task (including a partly written one)...
    pub queued: u32,
    /// ...and publications it never gets: the queue was full (the connection is now a slow
    /// consumer), or the connection is closing.
    pub dropped: u32,
    /// Whether the `writev` ended inside a frame (its rest is queued, counted in `queued`).
    pub partial: bool,
    /// The sequence number of the oldest publication handed over (0: none).
    pub oldest: u64,
}

/// How a publication was handed over.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the connection's task.
    Queued,
    /// Written to the socket by the publisher: this many bytes of message text.
    Written(usize),
    /// Begun by the publisher, which the socket took only in part: the rest is queued for the
    /// connection's task, which finishes it before it writes anything else (see `gate`).
    Partial,
    /// Not for this connection (already delivered by a recovery, or unsubscribed).
    Skipped,
}

/// A connection's mailbox. Lighter than a tokio mpsc channel (which allocates a block of 32
/// slots per connection up front): an idle queue holds no allocation at all, the memory a burst
/// needed is released once the queue drains, and a single waker slot serves both the running
/// and the parked connection.
pub struct OutboundQueue {
    mail: Mutex<Mail>,
    /// Items queued at most...
    capacity: u16,
    /// ...and KiB queued at most (`outbound_queue_bytes`).
    max_kib: u16,
    /// [`CLOSED`], [`OVERFLOWED`], [`SOCKET_READY`], [`SIGNALLED`], [`PENDING`], [`ORDERED`]:
    /// one byte (six `AtomicBool`s would push the mailbox past jemalloc's 128-byte class).
    state: AtomicU8,
    /// When the connection wants the lot's shared timer to signal it, in the lot's ticks:
    /// while parked, its next heartbeat; while active, when to consider parking.
    deadline: AtomicU64,
    waker: AtomicWaker,
}

/// The connection is ending: pushes are refused.
const CLOSED: u8 = 1;
/// A delivery found the queue full: the connection closes as a slow consumer.
const OVERFLOWED: u8 = 2;
/// Set by the parking lot's reactor: the parked connection's socket has something.
const SOCKET_READY: u8 = 4;
/// Set by the gateway (shutdown): the connection must look at the gateway's state.
const SIGNALLED: u8 = 8;
/// Something is queued: mirrors `!items.is_empty()`, changed under the lock, so that the task
/// can see an empty queue without taking the lock (once per pass of its loop).
const PENDING: u8 = 16;
/// Orders from the server API wait for this connection (`hub::users`).
const ORDERED: u8 = 32;

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

impl OutboundQueue {
    /// A mailbox holding at most `capacity` items and `max_bytes` (counted in KiB, at most
    /// 64 MiB).
    pub fn new(capacity: usize, max_bytes: u64) -> Self {
        OutboundQueue {
            mail: Mutex::new(Mail {
                items: VecDeque::new(),
                subscriptions: Subscriptions::default(),
                socket: direct::Socket::NONE,
                queued_kib: 0,
                window: 0,
                flags: 0,
            }),
            capacity: u16::try_from(capacity).unwrap_or(u16::MAX),
            max_kib: u16::try_from(max_bytes / 1024).unwrap_or(u16::MAX).max(1),
            state: AtomicU8::new(0),
            deadline: AtomicU64::new(u64::MAX),
            waker: AtomicWaker::new(),
        }
    }

    /// For a connection that agreed to permessage-deflate: the window its compressed frames
    /// must fit, in bits (0: not agreed).
    pub fn deflating(mut self, window: u8) -> Self {
        self.mail.get_mut().unwrap_or_else(|p| p.into_inner()).window = window;
        self
    }

    /// The connection's permessage-deflate window, 0 without the extension.
    pub fn window(&self) -> u8 {
        self.lock().window
    }

    fn is(&self, flag: u8) -> bool {
        self.state.load(Ordering::Acquire) & flag != 0
    }

    fn raise(&self, flag: u8) {
        self.state.fetch_or(flag, Ordering::AcqRel);
    }

    fn lower(&self, flag: u8) {
        self.state.fetch_and(!flag, Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, Mail> {
        // A panic while holding it cannot leave `Mail` half-updated in a way that matters more
        // than losing the connection; keep serving rather than poisoning every later call.
        crate::sync::lock(&self.mail)
    }

    /// Queue an item for the connection's task.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        if self.is(CLOSED) {
            return Err(PushError::Closed);
        }
        let mut mail = self.lock();
        self.queue(&mut mail, item)
    }

    fn queue(&self, mail: &mut Mail, item: Outbound) -> Result<(), PushError> {
        let weight = kib(&item);
        if mail.items.len() >= self.capacity as usize
            || u32::from(mail.queued_kib) + u32::from(weight) > u32::from(self.max_kib)
        {
            self.raise(OVERFLOWED);
            self.waker.wake();
            return Err(PushError::Full);
        }
        mail.items.push_back(item);
        mail.queued_kib = mail.queued_kib.saturating_add(weight);
        self.raise(PENDING);
        self.waker.wake();
        Ok(())
    }

    /// Hand a publication over: written directly when `direct` is allowed and the connection
    /// is ready for it (see the module docs), else queued.
    pub fn deliver(
        &self,
        publication: Arc<Published>,
        direct: bool,
    ) -> Result<Delivery, PushError> {
        if self.is(CLOSED) {
            return Err(PushError::Closed);
        }
        let mut mail = self.lock();
        // For a deflate subscriber this compresses the publication, once for all of them, here
        // in the publisher rather than later in some subscriber's task.
        let framed = publication.wire_for(mail.window).is_some();
        if direct && framed && self.direct_ready(&mail) {
            match mail.subscriptions.admit(&publication, false) {
                Admission::Skip => return Ok(Delivery::Skipped),
                // Queued as it is: the task meets the gap and closes the connection.
                Admission::Gap => {}
                Admission::Send => return Ok(self.write_direct(&mut mail, publication)),
            }
        }
        self.queue(&mut mail, Outbound::Publication(publication)).map(|()| Delivery::Queued)
    }

    /// Hand over what a sweep (see `hub`) has for this connection on one channel: `batch` holds
    /// the sweep's entries in offset order with their sequence numbers, and those at or below
    /// the watermark's `handed` (already handed over, or published before the subscription)
    /// are passed by. The rest go out in one `writev` when the connection is ready for a direct
    /// write (as in [`OutboundQueue::deliver`]); what the socket does not take, and everything
    /// when it is not ready, is queued for the task. A closing connection gets nothing, and
    /// only what it had not been handed counts as dropped: the sweep comes back, round after
    /// round, to connections it has served, some closed since (their clients had everything).
    pub fn hand_over(&self, batch: &[(u64, Arc<Published>)]) -> HandOver {
        let Some((_, first)) = batch.first() else { return HandOver::default() };
        let mut guard = self.lock();
        let mail = &mut *guard;
        let Some(w) = mail.subscriptions.for_tag(&first.channel) else {
            return HandOver::default();
        };
        let fresh = &batch[batch.partition_point(|(seq, _)| *seq <= w.handed)..];
        let Some((last, _)) = fresh.last() else { return HandOver::default() };
        w.handed = *last;
        let mut done = HandOver { oldest: fresh[0].0, ..HandOver::default() };
        if self.is(CLOSED) {
            done.dropped = fresh.len() as u32;
            return done;
        }
        let mut rest = fresh;
        if self.direct_ready(mail) {
            rest = &fresh[self.gather_direct(mail, fresh, &mut done)..];
        }
        for (i, (_, p)) in rest.iter().enumerate() {
            if self.queue(mail, Outbound::Publication(p.clone())).is_err() {
                // Flagged and woken: the connection closes as a slow consumer.
                done.dropped = (rest.len() - i) as u32;
                break;
            }
            done.queued += 1;
        }
        done
    }

    /// Admit a queued publication (see [`Subscriptions::admit`]).
    pub(crate) fn admit(&self, publication: &Published) -> Admission {
        let overflowed = self.overflowed();
        self.lock().subscriptions.admit(publication, overflowed)
    }

    /// The last publication delivered on `channel` (see [`Subscriptions::position`]).
    pub fn position(&self, channel: &str) -> Option<(Arc<str>, u64)> {
        self.lock().subscriptions.position(channel)
    }

    pub(crate) fn with_subscriptions<R>(&self, f: impl FnOnce(&mut Subscriptions) -> R) -> R {
        f(&mut self.lock().subscriptions)
    }

    /// Hold the write side for a write of the task's own (see `gate`), and take the publication
    /// a publisher left half-written, if any, with how many bytes of its frame are out: it
    /// must be finished before anything else is written. One lock for both, so no direct write
    /// can begin in between.
    pub(crate) fn hold_for_write(&self) -> Option<(Arc<Published>, usize)> {
        let mut mail = self.lock();
        mail.set(WRITING, true);
        // Only the first item can be half-written: direct writes happen on an empty queue.
        if !matches!(mail.items.front(), Some(Outbound::Admitted { written, .. }) if *written > 0) {
            return None;
        }
        match self.take(&mut mail) {
            Some(Outbound::Admitted { publication, written }) => Some((publication, written)),
            _ => None,
        }
    }

    /// Hold the write side if nothing is queued ahead (and nothing overflowed): a reply may then
    /// be written at once. One lock for the check and the hold.
    pub(crate) fn hold_if_idle(&self) -> bool {
        let mut mail = self.lock();
        let idle = mail.items.is_empty() && !self.overflowed();
        if idle {
            mail.set(WRITING, true);
        }
        idle
    }

    /// The connection's task has written and flushed everything it held.
    pub(crate) fn release(&self) {
        self.lock().set(WRITING, false);
    }

    /// The next queued item, if any; the task holds the write side until it releases it.
    pub fn pop(&self) -> Option<Outbound> {
        let mut mail = self.lock();
        self.take(&mut mail)
    }

    fn take(&self, mail: &mut Mail) -> Option<Outbound> {
        let item = mail.items.pop_front()?;
        mail.queued_kib = mail.queued_kib.saturating_sub(kib(&item));
        mail.set(WRITING, true);
        if mail.items.is_empty() {
            self.lower(PENDING);
            if mail.items.capacity() > 16 {
                mail.items.shrink_to_fit();
            }
        }
        Some(item)
    }

    pub fn is_empty(&self) -> bool {
        !self.is(PENDING)
    }

    /// Bytes the queue could still take (`outbound_queue_bytes` less what is queued, in whole
    /// KiB): what a recovery replay may weigh (see `connection::replay`).
    pub(crate) fn room_bytes(&self) -> u64 {
        let queued = self.lock().queued_kib;
        u64::from(self.max_kib.saturating_sub(queued)) * 1024
    }

    /// Whether a delivery was refused because the queue was full.
    pub fn overflowed(&self) -> bool {
        self.is(OVERFLOWED)
    }

    /// Ready once a delivery has found the queue full.
    pub(crate) async fn overflow(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.overflowed() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Ready when there is something to do: an item, or an overflow. Registers the task's waker
    /// first, so a push racing this check is never missed.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.overflowed() || !self.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The next item, waiting for one if the queue is empty; `None` when the connection was
    /// signalled (see [`OutboundQueue::signal`]) instead.
    pub async fn next(&self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            // Registered before looking: a push after the look wakes this waker. An empty queue
            // (most passes of a busy connection's loop) costs no lock.
            self.waker.register(cx.waker());
            if self.is(PENDING) {
                if let Some(item) = self.take(&mut self.lock()) {
                    return Poll::Ready(Some(item));
                }
            }
            if self.state.fetch_and(!SIGNALLED, Ordering::AcqRel) & SIGNALLED != 0 {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Wake the connection task and make a pending [`OutboundQueue::next`] return `None`, so
    /// that it looks at the gateway's state (shutdown).
    pub fn signal(&self) {
        self.raise(SIGNALLED);
        self.waker.wake();
    }

    /// Orders wait for the connection (see `hub::users`): wake it, and make a pending
    /// [`OutboundQueue::next`] return `None` so that its loop takes them.
    pub(crate) fn order(&self) {
        self.raise(ORDERED | SIGNALLED);
        self.waker.wake();
    }

    /// Whether orders wait; lowers the flag.
    pub(crate) fn take_ordered(&self) -> bool {
        self.state.fetch_and(!ORDERED, Ordering::AcqRel) & ORDERED != 0
    }

    pub(crate) fn ordered(&self) -> bool {
        self.is(ORDERED)
    }

    /// The parked socket became readable (or failed): wake the connection.
    pub(crate) fn set_socket_ready(&self) {
        self.raise(SOCKET_READY);
        self.waker.wake();
    }

    pub(crate) fn socket_ready(&self) -> bool {
        self.is(SOCKET_READY)
    }

    pub(crate) fn clear_socket_ready(&self) {
        self.lower(SOCKET_READY);
    }

    pub(crate) fn set_deadline(&self, ticks: u64) {
        self.deadline.store(ticks, Ordering::Relaxed);
    }

    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Refuse further pushes (the connection is ending). Returns how many publications were
    /// still queued, never to be delivered.
    pub fn close(&self) -> u64 {
        self.raise(CLOSED);
        let mut mail = self.lock();
        // Queued duplicates (a replay delivered them; they would be skipped when popped) are
        // not missed.
        let missed = mail
            .items
            .iter()
            .filter(|i| match i {
                Outbound::Reply(_) => false,
                Outbound::Publication(p) => mail.subscriptions.is_news(p),
                Outbound::Admitted { .. } => true,
            })
            .count();
        mail.items.clear();
        mail.queued_kib = 0;
        self.lower(PENDING);
        missed as u64
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_closing_connection_has_missed_only_what_it_was_not_delivered() {
        // Delivered up to offset 5 (a replay); live publications 4 and 5 still queued are
        // duplicates it would have skipped, 6 is news.
        let queue = OutboundQueue::new(16, 1 << 20);
        let channel: Arc<str> = Arc::from("feed");
        queue.with_subscriptions(|s| {
            s.insert(channel.clone());
            let w = s.get_mut("feed").unwrap();
            (w.epoch, w.offset) = (Some(Arc::from("e")), 5);
        });
        for offset in [4, 5, 6] {
            let p = Published::new("x".into(), channel.clone(), Arc::from("e"), offset);
            queue.push(Outbound::Publication(Arc::new(p))).unwrap();
        }
        assert_eq!(queue.close(), 1);
    }

    #[test]
    fn a_sweep_revisiting_a_closed_connection_drops_only_what_it_had_not_handed() {
        // A sweep visits everyone once per round while an entry is young, so it comes back to
        // connections it has served, some since closed (their clients had everything).
        let queue = OutboundQueue::new(16, 1 << 20);
        let channel: Arc<str> = Arc::from("feed");
        let handed = queue.with_subscriptions(|s| {
            s.insert(channel.clone());
            s.get_mut("feed").unwrap().handed
        });
        let batch: Vec<_> = (1..=2)
            .map(|i| {
                let p = Published::new("x".into(), channel.clone(), Arc::from("e"), i);
                (handed + i, Arc::new(p))
            })
            .collect();
        assert_eq!(queue.hand_over(&batch[..1]).queued, 1);
        assert_eq!(queue.close(), 1, "the queued one was never delivered");
        let again = queue.hand_over(&batch);
        assert_eq!((again.queued, again.dropped), (0, 1), "only the second is missed, once");
        assert_eq!(queue.hand_over(&batch).dropped, 0, "nothing is missed twice");
    }

    #[test]
    fn a_mailbox_fits_jemallocs_128_byte_class() {
        // One per connection, in an `Arc` (two counters, 16 bytes).
        let size = 16 + std::mem::size_of::<super::OutboundQueue>();
        assert!(size <= 128, "Arc<OutboundQueue> is {size} bytes");
    }
}
