//! Hostile or broken frames on a raw TCP socket, written byte by byte: each gets the close code
//! RFC 6455 asks for (1002 protocol error, 1007 invalid data) or a clean drop, and the server
//! keeps serving a bystander throughout.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A raw-mode WebSocket on a plain TCP socket: the handshake by hand, nothing read past it.
fn raw_socket(server: &Server, query: &str) -> TcpStream {
    let (status, s) = raw_ws(server.addr, query, RawWs::default());
    assert_eq!(status, 101);
    s
}

/// A frame as a client would send it: `first` byte (FIN, RSV, opcode), masked payload.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// Read server frames until a close frame: its code, or `None` if the socket ended first.
fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        // Skip complete non-close frames (a ping the heartbeat may send).
        while buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            if len >= 126 || buf.len() < 2 + len {
                break;
            }
            if buf[0] & 0x0f == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([buf[2], buf[3]]));
            }
            buf.drain(..2 + len);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn malformed_frames_get_the_rfc_close_code_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let mut bystander = raw_socket(&server, "?channel=news");
    let mut published = 0;
    let mut bystander_check = |server: &Server| {
        published += 1;
        let text = format!("\"still here {published}\"");
        server.publish("news", &text);
        let expected = format!("still here {published}");
        let mut got = vec![0u8; 2 + expected.len()];
        bystander.read_exact(&mut got).unwrap();
        assert_eq!(&got[2..], expected.as_bytes(), "the bystander's delivery");
    };
    bystander_check(&server);

    let text = 0x81; // FIN + text
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked client frame", vec![text, 0x04, b'p', b'i', b'n', b'g'], 1002),
        ("reserved bits set (no extension agreed)", frame(0xC1, b"ping"), 1002),
        ("a control frame over 125 bytes", frame(0x89, &[b'x'; 126]), 1002),
        ("a fragmented control frame", frame(0x09, b""), 1002),
        ("a continuation without a start", frame(0x80, b"x"), 1002),
        ("an unknown opcode", frame(0x83, b"x"), 1002),
        ("close code 1005 on the wire", frame(0x88, &1005u16.to_be_bytes()), 1002),
        ("close code 999", frame(0x88, &999u16.to_be_bytes()), 1002),
        ("a one-byte close payload", frame(0x88, &[3]), 1002),
        ("invalid UTF-8 in a close reason", frame(0x88, &[0x03, 0xE8, 0xFF, 0xFE]), 1007),
        ("invalid UTF-8 in a text message", frame(text, &[b'a', 0xFF]), 1007),
    ];
    for (what, bytes, expected) in cases {
        let mut s = raw_socket(&server, "");
        s.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut s), Some(expected), "{what}");
        bystander_check(&server);
    }

    // A frame cut short, then the peer leaves: dropped quietly, nothing else disturbed.
    let mut s = raw_socket(&server, "");
    s.write_all(&frame(text, b"hello")[..5]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(close_code(&mut s), None, "a truncated frame then EOF");
    bystander_check(&server);

    assert!(
        wait_until(Duration::from_secs(10), || server.metric("tether_connections_open") == 1.0),
        "every broken connection was closed: {}",
        server.metrics()
    );
    let m = server.metrics();
    assert_eq!(closed_total(&m, "1002", "server"), 7.0, "{m}");
    // The two closes with a code not allowed on the wire began a closing handshake from the
    // peer's side: they are counted as the client's, with the 1002 they were answered with.
    assert_eq!(closed_total(&m, "1002", "client"), 2.0, "{m}");
    assert_eq!(closed_total(&m, "1006", "network"), 1.0, "{m}");
    assert_eq!(closed_total(&m, "1007", "server"), 2.0, "{m}");
}
