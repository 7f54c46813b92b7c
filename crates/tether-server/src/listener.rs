//! The standalone HTTP server under `Gateway::serve`: the accept loop, the cap on connections
//! that are not WebSockets yet (`pending`), TLS, and hyper's HTTP/1 with upgrades. A host
//! application that mounts the router runs its own server instead and has none of this.
//!
//! HTTP/1 is served by hyper directly rather than through `axum::serve`, so that an upgraded
//! connection is handed over as the bare TCP socket it is: axum's version-sniffing wrapper
//! would otherwise stay boxed under every WebSocket for its whole life (decision 0007).

use crate::node::Node;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serve `app` on `listener` until `drained` (graceful shutdown of the WebSocket side, started
/// by the caller's signal) resolves; then HTTP requests in flight get up to `drain_timeout`.
pub(crate) async fn run<R>(
    node: &Node,
    listener: TcpListener,
    app: Router,
    drained: impl Future<Output = R>,
) -> std::io::Result<R> {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let tls = match (&node.config.tls_cert, &node.config.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::acceptor(cert, key)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        _ => None,
    };
    let limits = HttpLimits {
        timeout: node.config.handshake_timeout,
        max_header_size: node.config.max_header_size.as_u64() as usize,
    };
    let http = TaskTracker::new();
    let stop_http = CancellationToken::new();
    tokio::pin!(drained);
    let report = loop {
        let (tcp, peer) = tokio::select! {
            report = &mut drained => break report,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: say so, back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        // Counted from accept until the connection upgrades or ends.
        let place = node.pending.enter();
        let evicted = place.eviction();
        let place = crate::pending::Held(Arc::new(std::sync::Mutex::new(Some(place))));
        let fd = crate::sys::SocketFd(std::os::fd::AsRawFd::as_raw_fd(&tcp));
        let service = app.clone().map_request(move |mut req: axum::extract::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(place.clone());
            req.extensions_mut().insert(fd);
            req
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let stop = stop_http.clone();
        let tls = tls.clone();
        http.spawn(async move {
            let served = async {
                let Some(tls) = tls else {
                    return serve_http(tcp, service, stop, limits).await;
                };
                // The TLS handshake runs here, not in the accept loop, with its own deadline.
                let handshake = tokio::time::timeout(limits.timeout, tls.accept(tcp));
                match handshake.await {
                    Ok(Ok(stream)) => serve_http(stream, service, stop, limits).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            };
            tokio::select! {
                _ = served => {}
                _ = evicted.cancelled() => {
                    tracing::debug!(%peer, "closed unfinished: max_pending_handshakes")
                }
            }
        });
    };
    drop(listener);
    stop_http.cancel();
    http.close();
    let _ = tokio::time::timeout(node.config.drain_timeout, http.wait()).await;
    Ok(report)
}

/// What an HTTP connection may take before it is a WebSocket.
#[derive(Clone, Copy)]
struct HttpLimits {
    /// For the TLS handshake, and for each request head (idle keep-alive time included).
    timeout: std::time::Duration,
    /// Request line and headers; larger gets 431.
    max_header_size: usize,
}

/// One HTTP/1.1 connection (upgrades allowed) until it ends, or gracefully once `stop` fires.
async fn serve_http<I, S>(io: I, service: S, stop: CancellationToken, limits: HttpLimits)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_header_size(limits.max_header_size)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
