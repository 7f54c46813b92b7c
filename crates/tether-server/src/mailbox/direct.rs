//! The direct-write handle: how a publisher writes a publication's frame to a subscriber's
//! socket itself (decision 0008), and the one invariant that makes that sound.
//!
//! **The invariant.** A connection's socket is borrowed by publishers as a raw file descriptor
//! (a [`Socket`] in the mailbox), and
//! - it is published, under the mailbox lock, only while the connection's task holds the live
//!   socket: [`DirectWindow::open`], with the descriptor of a plain-TCP transport, active or
//!   parked (`Transport::direct_socket`; TLS and other upgraded streams give none);
//! - it is cleared under the same lock before the socket can be closed or moved between tokio's
//!   reactor and the parking lot's epoll set (a move that fails closes it): the window's `Drop`.
//!   An active connection declares its window after its WebSocket (which owns the socket), so
//!   the window goes first on every way out, and drops it before it takes the transport back to
//!   park it (`Connection::active`); a parked one holds its window as the first field of
//!   `Parked` (dropped first), opened once the socket has left tokio's reactor and dropped
//!   before it goes back (`ConnectionTask::poll`);
//! - publishers write only while holding that lock: a [`Socket`] lives in the mailbox's locked
//!   state, is neither `Copy` nor `Clone`, and its descriptor never leaves this module; its
//!   writes are called from [`OutboundQueue::deliver`] and [`OutboundQueue::hand_over`] through
//!   the lock's guard.
//!
//! So while a publisher writes, the descriptor is open and is that connection's socket. The
//! system calls themselves, the only `unsafe` code, are in `sys` (`send_now`, `writev_now`),
//! which relies on this invariant and states none of its own for these calls.
//!
//! Publishers and the connection's task never interleave their bytes: a publisher writes only
//! when the mailbox is ready for it ([`OutboundQueue::direct_ready`]: a socket, the task not
//! writing, nothing queued, nothing overflowed), and what the socket does not take stays queued,
//! already admitted, for the task to finish first (see `gate`). Writes are non-blocking and
//! never raise SIGPIPE (`sys`).

use super::WRITING;
use super::{kib, Admission, Delivery, HandOver, Mail, Outbound, OutboundQueue, PENDING};
use crate::publication::Published;
use std::io::IoSlice;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Frames gathered into one `writev` by a sweep's hand-over, at most; any more that visit
/// has go through the task.
const MAX_GATHER: usize = 32;

/// A connection's socket as its mailbox holds it for publishers, or none (see the module docs).
/// (Not an `Option<RawFd>`: 4 bytes fewer keep the whole mailbox within jemalloc's 128-byte
/// size class, 32 bytes less per connection than the next one.)
pub(super) struct Socket(RawFd);

impl Socket {
    pub(super) const NONE: Socket = Socket(-1);

    fn is_open(&self) -> bool {
        self.0 != Self::NONE.0
    }

    /// One non-blocking send: how many bytes went out (0 on error: the task learns of a failed
    /// socket by its own next write).
    fn send(&self, bytes: &[u8]) -> usize {
        crate::sys::send_now(self.0, bytes)
    }

    /// One non-blocking gathered send: how many bytes went out (0 on error).
    fn writev(&self, bufs: &[IoSlice<'_>]) -> usize {
        crate::sys::writev_now(self.0, bufs)
    }
}

/// While it lives, publishers may write to the connection's socket directly (see the module
/// docs for what its owner must keep).
pub(crate) struct DirectWindow(Option<Arc<OutboundQueue>>);

impl DirectWindow {
    /// Publish `socket` to the mailbox: the descriptor of the connection's live socket, which
    /// the caller keeps open, in its hands and active until this window is dropped; `None`
    /// when the connection cannot take direct writes (the window then does nothing).
    pub(crate) fn open(queue: &Arc<OutboundQueue>, socket: Option<RawFd>) -> Self {
        let Some(fd) = socket else { return DirectWindow(None) };
        queue.set_socket(Socket(fd));
        DirectWindow(Some(queue.clone()))
    }

    /// No window: publishers queue.
    pub(crate) const fn closed() -> Self {
        DirectWindow(None)
    }
}

impl Drop for DirectWindow {
    fn drop(&mut self) {
        if let Some(queue) = &self.0 {
            queue.set_socket(Socket::NONE);
        }
    }
}

impl OutboundQueue {
    /// Let publishers write to `socket`, or stop them ([`Socket::NONE`]). Also ends any hold:
    /// the task sets this only between writes.
    fn set_socket(&self, socket: Socket) {
        let mut mail = self.lock();
        mail.socket = socket;
        mail.set(WRITING, false);
    }

    /// Whether a publisher may write to the socket now: there is one, the connection's task is
    /// not writing, nothing is queued ahead and nothing overflowed.
    pub(super) fn direct_ready(&self, mail: &Mail) -> bool {
        mail.socket.is_open() && !mail.is(WRITING) && mail.items.is_empty() && !self.overflowed()
    }

    /// The direct part of [`OutboundQueue::deliver`]: write an admitted publication that has a
    /// shared frame, when [`OutboundQueue::direct_ready`]. What the socket does not take is
    /// queued for the task.
    pub(super) fn write_direct(&self, mail: &mut Mail, publication: Arc<Published>) -> Delivery {
        let wire = publication.wire_for(mail.window).unwrap_or_default();
        let written = mail.socket.send(wire);
        if written == wire.len() {
            return Delivery::Written(publication.payload.len());
        }
        // The rest waits for the task; it also learns of a failed socket by writing. Never
        // refused for space: it is already admitted.
        let item = Outbound::Admitted { publication, written };
        mail.queued_kib = mail.queued_kib.saturating_add(kib(&item));
        mail.items.push_back(item);
        self.raise(PENDING);
        self.waker.wake();
        Delivery::Partial
    }

    /// The direct part of [`OutboundQueue::hand_over`], when [`OutboundQueue::direct_ready`]:
    /// admit `fresh` in order and write the frames in one `writev`, counting into `done`.
    /// Returns how many of `fresh` it took (written, queued partly written, or skipped); the
    /// rest, from the first that must go through the task (a gap, or a message too large for
    /// one shared frame), is the caller's to queue.
    pub(super) fn gather_direct(
        &self,
        mail: &mut Mail,
        fresh: &[(u64, Arc<Published>)],
        done: &mut HandOver,
    ) -> usize {
        let mut iov = [IoSlice::new(&[]); MAX_GATHER];
        let mut admitted = [0usize; MAX_GATHER];
        let (mut n, mut taken) = (0, 0);
        for (i, (_, p)) in fresh.iter().enumerate().take(MAX_GATHER) {
            let Some(wire) = p.wire_for(mail.window) else { break };
            match mail.subscriptions.admit(p, false) {
                Admission::Gap => break,
                Admission::Skip => {}
                Admission::Send => {
                    iov[n] = IoSlice::new(wire);
                    admitted[n] = i;
                    n += 1;
                }
            }
            taken = i + 1;
        }
        let mut sent = if n > 0 { mail.socket.writev(&iov[..n]) } else { 0 };
        for &i in &admitted[..n] {
            let p = &fresh[i].1;
            let len = p.wire_for(mail.window).map_or(0, <[u8]>::len);
            if sent >= len {
                sent -= len;
                done.written += 1;
                done.written_bytes += p.payload.len() as u64;
            } else {
                // Admitted already: the task writes the rest first, and learns of a failed
                // socket by writing. Never refused for space.
                let item = Outbound::Admitted { publication: p.clone(), written: sent };
                done.partial |= sent > 0;
                sent = 0;
                mail.queued_kib = mail.queued_kib.saturating_add(kib(&item));
                mail.items.push_back(item);
                done.queued += 1;
            }
        }
        if done.queued > 0 {
            self.raise(PENDING);
            self.waker.wake();
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn publication(channel: &Arc<str>, offset: u64) -> Arc<Published> {
        let text = tokio_tungstenite::tungstenite::Utf8Bytes::from(format!("publication {offset}"));
        Arc::new(Published::new(text, channel.clone(), Arc::from("e"), offset))
    }

    #[test]
    fn publishers_write_directly_only_while_the_window_is_open() {
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let queue = Arc::new(OutboundQueue::new(8, 1 << 20));
        let channel: Arc<str> = Arc::from("c");
        queue.with_subscriptions(|s| s.insert(channel.clone()));

        let window = DirectWindow::open(&queue, Some(ours.as_raw_fd()));
        let first = publication(&channel, 1);
        let wire = first.wire.clone().unwrap();
        assert_eq!(queue.deliver(first, true), Ok(Delivery::Written("publication 1".len())));
        let mut got = vec![0; wire.len() + 16];
        assert_eq!(peer.read(&mut got).unwrap(), wire.len());
        assert_eq!(&got[..wire.len()], &wire[..]);

        drop(window);
        assert_eq!(queue.deliver(publication(&channel, 2), true), Ok(Delivery::Queued));
        let nothing = peer.read(&mut got).unwrap_err();
        assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock, "no write after the window");

        // A window without a socket (TLS, an upgraded stream) lets no publisher write.
        let _none = DirectWindow::open(&queue, None);
        assert!(!queue.direct_ready(&queue.lock()));
    }
}
