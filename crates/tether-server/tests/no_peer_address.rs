//! A host application that serves the router without peer addresses (plain `axum::serve(…,
//! app)`) has no per-address limits: the gateway says so in the log, once, instead of letting
//! the operator believe they apply.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tether_server::{Gateway, GatewayConfig};

/// Log lines, collected.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_without_peer_addresses_is_said_once_in_the_log() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    let gateway = Gateway::new(GatewayConfig::default()).unwrap();
    let app = gateway.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        drop(ws);
    }
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.matches("per-address limits are off").count(), 1, "{text}");
    assert!(text.contains("into_make_service_with_connect_info"), "{text}");
}
