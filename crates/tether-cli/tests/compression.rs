//! permessage-deflate (RFC 7692) on the wire, checked byte by byte with hand-made clients:
//! negotiated only when offered, each publication compressed once and the same compressed frame
//! sent to every subscriber that agreed (plain frames to the others), compressed messages from
//! clients inflated, and decompression bombs and bad data refused with the right close code.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use tether_core::permessage_deflate::{compress, Inflating};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

const T: std::time::Duration = std::time::Duration::from_secs(10);

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const JSON_MODE: &str = "Sec-WebSocket-Protocol: tether.v1.json\r\n";
const AGREED: &str = "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Read one frame: its header, its raw bytes on the wire, and its payload.
fn read_frame(s: &mut TcpStream) -> (FrameHeader, Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let (header, len) = loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        wire.push(b[0]);
        if let Some(parsed) = FrameHeader::parse(&mut std::io::Cursor::new(&wire[..])).unwrap() {
            break parsed;
        }
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).unwrap();
    wire.extend_from_slice(&payload);
    (header, wire, payload)
}

/// The plain text of a frame from the server: inflated through Tether's own rewriter when
/// compressed (the interop matrix checks the same frames against other inflaters).
fn text_of(header: &FrameHeader, wire: &[u8], payload: &[u8]) -> String {
    if !header.rsv1 {
        return String::from_utf8(payload.to_vec()).unwrap();
    }
    let mut out = Vec::new();
    Inflating::new(1 << 20).feed(wire, &mut out);
    let mut cursor = std::io::Cursor::new(&out[..]);
    let (_, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
    let start = cursor.position() as usize;
    String::from_utf8(out[start..start + len as usize].to_vec()).unwrap()
}

/// A masked client frame.
fn client_frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let header =
        FrameHeader { is_final: fin, rsv1, opcode, mask: Some(mask), ..Default::default() };
    let mut wire = Vec::new();
    header.format(payload.len() as u64, &mut wire).unwrap();
    wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    wire
}

/// Read frames until the close; its code.
fn close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (header, _, payload) = read_frame(s);
        if header.opcode == OpCode::Control(Control::Close) {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn each_publication_is_compressed_once_for_every_subscriber_that_agreed() {
    let server = Server::start(&[]);
    let offered = RawWs { headers: OFFER, ..Default::default() };
    let mut deflating: Vec<TcpStream> = (0..3)
        .map(|_| {
            let (head, s) = raw_ws_head(server.addr, "?channel=prices", offered);
            assert!(head.to_lowercase().contains(AGREED), "{head}");
            s
        })
        .collect();
    let (head, mut plain) = raw_ws_head(server.addr, "?channel=prices", RawWs::default());
    assert!(!head.to_lowercase().contains("sec-websocket-extensions"), "not offered: {head}");

    // A realistic JSON publication: a dozen quotes with their order books.
    let quote = |n: u32| {
        let book = "[[101.25,300],[101.2,500],[101.15,800],[101.1,1200]]";
        format!(
            r#"{{"symbol":"ABC","bid":101.25,"ask":101.5,"venue":"XNAS","seq":{n},"book":{book}}}"#
        )
    };
    let data = format!("[{}]", (0..12).map(quote).collect::<Vec<_>>().join(","));
    assert!(data.len() > 1000);
    let receipt = server.publish("prices", &data);
    assert_eq!(receipt["delivered"], 4, "{receipt}");
    let mut sizes = Vec::new();
    for s in &mut deflating {
        let (header, wire, payload) = read_frame(s);
        assert!(header.rsv1, "compressed for a subscriber that agreed");
        assert_eq!(text_of(&header, &wire, &payload), data);
        sizes.push(wire.len());
    }
    let (header, wire, payload) = read_frame(&mut plain);
    assert!(!header.rsv1);
    assert_eq!(payload, data.as_bytes());
    assert!(
        sizes.iter().all(|&n| n * 3 < wire.len()),
        "compressed {sizes:?} vs plain {}",
        wire.len()
    );
    // One compression for the three of them.
    assert_eq!(server.metric("tether_publications_compressed_total"), 1.0);

    // Under the minimum size (64 B) it is not worth it: plain for everyone.
    server.publish("prices", r#""short""#);
    for s in &mut deflating {
        let (header, _, payload) = read_frame(s);
        assert!(!header.rsv1);
        assert_eq!(payload, b"short");
    }
    assert_eq!(server.metric("tether_publications_compressed_total"), 1.0);
}

#[test]
fn compressed_messages_from_clients_are_inflated_and_bombs_and_garbage_are_refused() {
    let server = Server::start(&[]);
    let json = RawWs { headers: &format!("{OFFER}{JSON_MODE}"), ..Default::default() };
    let (head, mut s) = raw_ws_head(server.addr, "", json);
    assert!(head.to_lowercase().contains(AGREED), "{head}");
    // A compressed command, then one compressed in two fragments with a ping between them.
    let command = |id: u32| format!(r#"{{"id":{id},"cmd":"subscribe","channel":"room:{id}"}}"#);
    s.write_all(&client_frame(
        OpCode::Data(Data::Text),
        true,
        true,
        &compress(command(1).as_bytes()),
    ))
    .unwrap();
    let (_, _, reply) = read_frame(&mut s);
    assert!(
        String::from_utf8_lossy(&reply).contains(r#""id":1"#),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let two = compress(command(2).as_bytes());
    let (a, b) = two.split_at(two.len() / 2);
    s.write_all(&client_frame(OpCode::Data(Data::Text), false, true, a)).unwrap();
    s.write_all(&client_frame(OpCode::Control(Control::Ping), true, false, b"mid")).unwrap();
    s.write_all(&client_frame(OpCode::Data(Data::Continue), true, false, b)).unwrap();
    let (pong, _, payload) = read_frame(&mut s);
    assert_eq!((pong.opcode, &payload[..]), (OpCode::Control(Control::Pong), &b"mid"[..]));
    let (_, _, reply) = read_frame(&mut s);
    assert!(
        String::from_utf8_lossy(&reply).contains(r#""id":2"#),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    // A megabyte of one letter compresses to about a kilobyte; past max_message_size (64 KiB)
    // it is refused with 1009 before it is ever held whole.
    let (_, mut bomb) = raw_ws_head(server.addr, "", json);
    let payload = compress(&vec![b'a'; 1 << 20]);
    assert!(payload.len() < 2000, "{}", payload.len());
    bomb.write_all(&client_frame(OpCode::Data(Data::Text), true, true, &payload)).unwrap();
    assert_eq!(close_code(&mut bomb), 1009);

    // A compressed message whose frames inflate to nothing (empty stored blocks): bounded by
    // its bytes on the wire too, so it is refused with 1009 once past max_message_size (64 KiB)
    // instead of streaming without end. Sent in pieces, with a deadline on the whole.
    let (_, mut empty) = raw_ws_head(server.addr, "", json);
    let nothing = [0x00, 0x00, 0x00, 0xff, 0xff];
    empty.write_all(&client_frame(OpCode::Data(Data::Text), false, true, &nothing)).unwrap();
    let more = client_frame(OpCode::Data(Data::Continue), false, false, &nothing).repeat(1000);
    let mut sent = 0;
    while sent < 1 << 20 && empty.write_all(&more).is_ok() {
        sent += more.len();
    }
    assert_eq!(close_code(&mut empty), 1009, "after {sent} bytes");

    // Data that does not inflate: a protocol error.
    let (_, mut garbage) = raw_ws_head(server.addr, "", json);
    garbage.write_all(&client_frame(OpCode::Data(Data::Text), true, true, &[0xff; 16])).unwrap();
    assert_eq!(close_code(&mut garbage), 1002);

    // The first connection is still served.
    s.write_all(&client_frame(
        OpCode::Data(Data::Text),
        true,
        true,
        &compress(br#"{"id":3,"cmd":"ping"}"#),
    ))
    .unwrap();
    let (_, _, reply) = read_frame(&mut s);
    assert!(String::from_utf8_lossy(&reply).contains(r#""id":3"#));
}

#[test]
fn with_compression_off_nothing_is_agreed_and_compressed_frames_are_refused() {
    let server = Server::start(&["--no-compression"]);
    let (head, mut s) =
        raw_ws_head(server.addr, "?channel=x", RawWs { headers: OFFER, ..Default::default() });
    assert!(!head.to_lowercase().contains("sec-websocket-extensions"), "{head}");
    s.write_all(&client_frame(OpCode::Data(Data::Text), true, true, &compress(b"ping"))).unwrap();
    assert_eq!(close_code(&mut s), 1002, "RSV1 without the extension is a protocol error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_offers_it_and_reads_compressed_publications() {
    use tether_client::Event;
    let server = Server::start(&[]);
    let (client, mut events) = tether_client::connect(fast_client(server.ws_url("")));
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    assert_eq!(
        *client.stats().extensions.lock().unwrap(),
        tether_core::permessage_deflate::SERVER_RESPONSE
    );
    client.subscribe("news").await.unwrap();
    next_event(&mut events, T, "subscribed", |e| matches!(e, Event::Subscribed { .. })).await;
    let text = "every subscriber gets the same compressed bytes; ".repeat(40);
    let publish = server.http("/api/publish");
    let body = serde_json::json!({"channel": "news", "data": text}).to_string();
    tokio::task::spawn_blocking(move || http_request("POST", &publish, Some(&body))).await.unwrap();
    let got = publications(&mut events, 1).await;
    assert_eq!(got, [(1, serde_json::json!(text).to_string())]);
    assert_eq!(
        server.metric("tether_publications_compressed_total"),
        1.0,
        "it went out compressed"
    );

    // Opting out: nothing offered, nothing compressed.
    let (plain, mut events) =
        tether_client::connect(fast_client(server.ws_url("")).compression(false));
    next_event(&mut events, T, "open", |e| matches!(e, Event::Open { .. })).await;
    assert_eq!(*plain.stats().extensions.lock().unwrap(), "");
}
