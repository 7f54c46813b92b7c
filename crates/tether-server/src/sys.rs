//! The gateway's only `unsafe` code: system calls on sockets it does not own as Rust objects.
//!
//! **Invariants.**
//! - A connection's socket is borrowed by file descriptor in two places: publishers write to
//!   it from its mailbox (decision 0008) and the connection's own vectored writes pass a flag
//!   std does not. Every function here takes a descriptor that its caller keeps open for the
//!   whole call. For publishers' writes ([`send_now`], [`writev_now`]) that is the direct-write
//!   handle's invariant, stated once, in `mailbox::direct` (the only caller); the connection's
//!   own writes borrow a socket it owns.
//! - Every send passes `MSG_NOSIGNAL`: a peer's reset must come back as an error, never as a
//!   SIGPIPE that kills a host process which does not ignore the signal (std's `write` passes
//!   the flag, its `write_vectored` — a plain `writev` — cannot).
//! - The parking lot's epoll set is registered with tokio by descriptor while `mio::Poll` owns
//!   it (see [`register_epoll`]).
//! - A request's own socket is known to its handler by descriptor ([`SocketFd`], put there by
//!   `listener` for the connection hyper serves the request on): hyper keeps that connection,
//!   and so the descriptor, open while the handler runs, and [`set_user_timeout`] is only
//!   called from a handler.

use std::io::{self, IoSlice};
use std::os::fd::{BorrowedFd, RawFd};

/// One non-blocking send of `bytes` to `fd`: how many went out (0 if none could, or on error:
/// the connection's task learns of a failed socket by its own next write).
pub(crate) fn send_now(fd: RawFd, bytes: &[u8]) -> usize {
    // SAFETY: `fd` is open for this call: the invariant of `mailbox::direct`, the only caller.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).send_with_flags(bytes, libc::MSG_NOSIGNAL).unwrap_or(0)
}

/// One non-blocking gathered send to `fd`: how many bytes went out (0 if none, or on error).
pub(crate) fn writev_now(fd: RawFd, bufs: &[IoSlice<'_>]) -> usize {
    // SAFETY: as in `send_now`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    send_vectored(fd, bufs).unwrap_or(0)
}

/// A gathered send without SIGPIPE (`sendmsg` with `MSG_NOSIGNAL`), on a socket the caller
/// owns or borrows.
pub(crate) fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(&fd).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
}

/// The socket a request came on (a request extension, from `listener`; absent when a host
/// application serves the router itself).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SocketFd(pub RawFd);

/// Give the connection up when data it sent stays unacknowledged for `timeout`
/// (`TCP_USER_TIMEOUT`): the bound on a reader that vanished without a FIN, for a response
/// that never hears back from it (SSE).
pub(crate) fn set_user_timeout(fd: SocketFd, timeout: std::time::Duration) -> io::Result<()> {
    // SAFETY: a `SocketFd` is the socket of the request being handled, open while its handler
    // runs (module docs), and this is called from the handler.
    let fd = unsafe { BorrowedFd::borrow_raw(fd.0) };
    socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(timeout))
}

/// The parking lot's epoll set, watched for readability by tokio's reactor.
pub(crate) fn register_epoll(poll: mio::Poll) -> io::Result<tokio::io::unix::AsyncFd<mio::Poll>> {
    // SAFETY: `mio::Poll` owns its epoll file descriptor and keeps it open and unchanged for
    // its whole life, and the `AsyncFd` owns the `Poll`.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE)
    };
    registered.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The environment variable that makes the test below run its body in a child process.
    const CHILD: &str = "TETHER_SIGPIPE_CHILD";

    /// Sends on a socket that can no longer send (here: shut down for writing; a peer's reset
    /// does the same) fail with an error, with SIGPIPE at its default action (kill the
    /// process), as in a host application that does not ignore it.
    #[test]
    fn sends_to_a_dead_socket_fail_without_sigpipe() {
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: restoring a signal's default action; no handler is involved.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            let fd = server.as_raw_fd();
            assert_eq!(send_now(fd, b"one"), 0);
            let two = [IoSlice::new(b"one"), IoSlice::new(b"two")];
            assert_eq!(writev_now(fd, &two), 0);
            // SAFETY: `server` is open for this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let err = send_vectored(borrowed, &two).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
            drop(client);
            return;
        }
        // In a child process: without MSG_NOSIGNAL the signal kills it, not the test runner.
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args(["--exact", "sys::tests::sends_to_a_dead_socket_fail_without_sigpipe"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), None, "the child was killed by signal {:?}", status.signal());
        assert!(status.success(), "the child failed: {status}");
    }
}
