//! The client against scripted peers on real sockets, checked at the frame level: binary
//! messages both ways, the close code the client sends when a server breaks the protocol, and
//! compressed sends within the window the server set. Each peer accepts one connection on
//! 127.0.0.1:0; every wait has a deadline.

use futures_util::{SinkExt, StreamExt};
use std::io::Cursor;
use std::time::Duration;
use tether_client::{connect, Bytes, ClientConfig, Event, Events, Initiator, StopReason};
use tether_core::permessage_deflate::MessageInflater;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const T: Duration = Duration::from_secs(10);

/// A listener and the `ws://` URL of it.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    (listener, url)
}

/// Accept one WebSocket connection, answering `extensions` in the handshake when given.
async fn accept(listener: &TcpListener, extensions: Option<&str>) -> WebSocketStream<TcpStream> {
    let (tcp, _) = timeout(T, listener.accept()).await.expect("the client connects").unwrap();
    let extensions = extensions.map(str::to_owned);
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let answer = move |_: &Request, mut response: Response| {
        if let Some(value) = extensions {
            response.headers_mut().insert("sec-websocket-extensions", value.parse().unwrap());
        }
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async(tcp, answer).await.unwrap()
}

fn raw_client(url: String) -> ClientConfig {
    ClientConfig::new(url).raw().no_reconnect()
}

async fn next_event(events: &mut Events, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = timeout(T, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {T:?}"))
            .unwrap_or_else(|| panic!("the events ended before {what}"));
        if wanted(&event) {
            return event;
        }
    }
}

/// One frame read straight off the socket: its header and unmasked payload.
async fn read_frame(tcp: &mut TcpStream) -> (FrameHeader, Vec<u8>) {
    let mut wire = Vec::new();
    loop {
        if let Some((header, len)) = FrameHeader::parse(&mut Cursor::new(&wire[..])).unwrap() {
            let start = {
                let mut cursor = Cursor::new(&wire[..]);
                FrameHeader::parse(&mut cursor).unwrap();
                cursor.position() as usize
            };
            if wire.len() >= start + len as usize {
                let mut payload = wire[start..start + len as usize].to_vec();
                if let Some(key) = header.mask {
                    payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= key[i % 4]);
                }
                return (header, payload);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(T, tcp.read(&mut chunk)).await.expect("a frame in time").unwrap();
        assert!(n > 0, "the client closed before a whole frame");
        wire.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn binary_messages_arrive_and_leave_as_the_same_bytes() {
    let (listener, url) = listen().await;
    let (client, mut events) = connect(raw_client(url));
    let mut server = accept(&listener, None).await;
    // Not UTF-8: a lossy text conversion would change these bytes.
    let bytes = Bytes::from_static(&[0x00, 0xff, 0xfe, 0x80, b'a', 0xc3]);
    server.send(Message::Binary(bytes.clone())).await.unwrap();
    let got =
        next_event(&mut events, "the binary message", |e| matches!(e, Event::Binary(_))).await;
    let Event::Binary(got) = got else { unreachable!() };
    assert_eq!(got, bytes);

    client.send_binary(got).await.unwrap();
    let echoed = timeout(T, server.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, Message::Binary(bytes));
}

#[tokio::test]
async fn without_reconnect_the_first_close_stops_the_client() {
    let (listener, url) = listen().await;
    let (client, mut events) = connect(raw_client(url));
    let mut server = accept(&listener, None).await;
    server.close(None).await.unwrap();
    // Read the client's close reply; then the server ends the connection.
    while timeout(T, server.next()).await.unwrap().is_some() {}
    drop(server);
    let closed = next_event(&mut events, "the close", |e| matches!(e, Event::Closed(_))).await;
    let Event::Closed(info) = closed else { unreachable!() };
    assert!(
        !info.will_reconnect && info.initiator == Initiator::Server && info.was_clean,
        "{info}"
    );
    let stopped = next_event(&mut events, "the stop", |e| matches!(e, Event::Stopped { .. })).await;
    assert!(matches!(stopped, Event::Stopped { reason: StopReason::MaxAttempts(0) }));
    assert_eq!(client.stats().connect_attempts.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A server that sends `frame` (raw bytes) after the handshake; returns the code of the close
/// frame the client answered with and the client's own account of the close.
async fn client_answer_to(frame: &[u8]) -> (u16, tether_client::CloseInfo) {
    let (listener, url) = listen().await;
    let (_client, mut events) = connect(raw_client(url));
    let server = accept(&listener, None).await;
    let mut tcp = server.into_inner();
    tcp.write_all(frame).await.unwrap();
    let (header, payload) = read_frame(&mut tcp).await;
    assert_eq!(u8::from(header.opcode), 8, "a close frame");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    // The server ends the TCP connection after the client's close, as RFC 6455 wants.
    drop(tcp);
    let closed = next_event(&mut events, "the close", |e| matches!(e, Event::Closed(_))).await;
    let Event::Closed(info) = closed else { unreachable!() };
    (code, info)
}

#[tokio::test]
async fn a_server_breaking_the_protocol_is_told_why_with_a_close_code() {
    // Text that is not UTF-8: 1007.
    let (code, info) = client_answer_to(&[0x81, 0x02, 0xc3, 0x28]).await;
    assert_eq!(code, u16::from(CloseCode::Invalid));
    assert_eq!((info.code, info.initiator, info.was_clean), (1007, Initiator::Client, false));
    // A reserved bit without an extension that defines it: 1002.
    let (code, info) = client_answer_to(&[0xc1, 0x01, b'a']).await;
    assert_eq!(code, u16::from(CloseCode::Protocol));
    assert_eq!(info.code, 1002, "{info}");
}

#[tokio::test]
async fn sends_are_compressed_within_the_window_the_server_set() {
    let (listener, url) = listen().await;
    let config = raw_client(url).compress_sends(0);
    let (client, mut events) = connect(config);
    let agreed = "permessage-deflate; server_no_context_takeover; client_max_window_bits=9";
    let server = accept(&listener, Some(agreed)).await;
    next_event(&mut events, "the open", |e| matches!(e, Event::Open { .. })).await;
    assert_eq!(*client.stats().extensions.lock().unwrap(), agreed);
    let mut tcp = server.into_inner();
    let mut inflater = MessageInflater::default();
    let short = "a short message, a short message, a short message".to_owned();
    let long = "longer than the 512 bytes of a 9-bit window; ".repeat(40);
    for text in [short, long] {
        client.send_text(text.clone()).await.unwrap();
        let (header, payload) = read_frame(&mut tcp).await;
        assert!(header.rsv1 && header.is_final, "compressed, in one frame");
        assert_eq!(inflater.inflate(&payload, 1 << 20).as_deref(), Some(text.as_bytes()));
        if text.len() > 512 {
            // Stored blocks refer back to nothing: the text is in them as it is.
            assert!(payload.windows(40).any(|w| w == &text.as_bytes()[..40]));
        } else {
            assert!(payload.len() < text.len(), "short enough for the window: compressed");
        }
    }
}
