//! Direct delivery (decision 0008): publishers write publications straight to ready sockets, and
//! hand whatever a full socket does not take to the connection's task. Whichever way each one
//! goes, a subscriber gets every publication once, whole, and in order.

mod common;
use common::*;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
use tokio_tungstenite::tungstenite::Message;

/// ~6.3 MB in all: more than a socket send buffer holds (tcp_wmem max is 4 MiB by default).
const MESSAGES: usize = 900;

/// Message `seq`: ~7 KB (one frame, under the 8 KiB fragment size), its text derived from `seq`
/// so that a frame cut or spliced anywhere shows.
fn payload(seq: usize) -> String {
    let fill = (b'a' + (seq % 26) as u8) as char;
    format!("{seq}:{}", fill.to_string().repeat(7000))
}

/// A subscriber with a 4 KiB receive buffer that reads nothing until every publication has
/// been accepted, so the server's socket fills and direct writes are cut short. Returns
/// (direct deliveries, messages received in order).
fn paused_subscriber_gets_everything(server: &Server) -> f64 {
    let opts = RawWs { recv_buf: Some(4096), ..RawWs::default() };
    let (status, stream) = raw_ws(server.addr, "?channel=feed", opts);
    assert_eq!(status, 101);
    assert!(
        wait_until(Duration::from_secs(5), || server.metric("tether_subscriptions") >= 1.0),
        "the subscriber never registered"
    );

    for seq in 0..MESSAGES {
        server.publish("feed", &serde_json::json!(payload(seq)).to_string());
    }

    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ws = WebSocket::from_raw_socket(stream, Role::Client, None);
    let mut seq = 0;
    while seq < MESSAGES {
        match ws.read().unwrap_or_else(|e| panic!("after {seq} messages: {e}")) {
            Message::Text(t) => {
                assert!(
                    t.as_str() == payload(seq),
                    "message {seq} arrived damaged or out of order"
                );
                seq += 1;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("after {seq} messages: unexpected {other:?}"),
        }
    }
    assert_eq!(server.metric("tether_deliveries_total"), MESSAGES as f64);
    server.metric("tether_direct_deliveries_total")
}

#[test]
fn a_paused_subscriber_gets_every_publication_whole_and_in_order() {
    let server = Server::start(&[]);
    let direct = paused_subscriber_gets_everything(&server);
    // Both ways were taken: direct while the socket had room, queued once it was full.
    assert!(direct > 0.0, "no publication was written directly");
    assert!(direct < MESSAGES as f64, "every publication went direct: the socket never filled");
}

#[test]
fn with_direct_delivery_off_every_publication_goes_through_the_queue() {
    let server = Server::start(&["--direct-delivery", "false"]);
    assert_eq!(paused_subscriber_gets_everything(&server), 0.0);
}

#[test]
fn by_sweep_a_paused_subscriber_gets_every_publication_whole_and_in_order() {
    let server = Server::start(&["--fanout-sweep", "always"]);
    let direct = paused_subscriber_gets_everything(&server);
    assert!(server.metric("tether_fanout_sweeps_total") >= 1.0, "no sweep ran");
    assert!(direct > 0.0, "no publication was written directly");
    assert!(direct < MESSAGES as f64, "every publication went direct: the socket never filled");
}
