//! permessage-deflate (RFC 7692), sans I/O: negotiation, compressing a message once for every
//! subscriber, and inflating compressed frames into plain ones for a WebSocket layer that knows
//! no extensions (tungstenite; decision 0011).
//!
//! Tether always runs the extension **without context takeover, both ways**: each message is
//! compressed and inflated on its own. That is what makes one compressed frame shareable by all
//! subscribers (a context would tie it to one connection), and it means no zlib state outlives a
//! message: an idle connection holds none. DEFLATE itself is flate2's; frame headers are
//! tungstenite's; what lives here is the glue RFC 7692 asks for.

mod deflate;
mod inflate;

pub use deflate::{
    compress, compress_within, compressed_binary_frame, compressed_frame, compressed_text_frame,
};
pub use inflate::{Inflating, MessageInflater, Pending};

/// What Tether's server answers to an acceptable offer, whatever the offer asked: no context
/// takeover either way (RFC 7692 §7.1.1: a server may impose both).
pub const SERVER_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What Tether's client offers: it inflates each message on its own (no server context), and
/// it never compresses, so it can honour any limit on its own window: `client_max_window_bits`
/// without a value says so (RFC 7692 §7.1.2.2). Servers that insist on limiting the client's
/// window (Autobahn's 13.3–13.6 cases ask for 9 bits) then accept the offer instead of
/// declining it.
pub const CLIENT_OFFER: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; client_max_window_bits";

/// The tail a sync flush ends with: removed by the sender, put back by the receiver (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the server agreed to: always no context takeover either way, and the largest window
/// its compressed messages may need on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `server_max_window_bits` as offered (8-15), when the offer had it: the answer must
    /// repeat it (RFC 7692 §7.1.2.1).
    pub server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> String {
        match self.server_max_window_bits {
            Some(bits) => format!("{SERVER_RESPONSE}; server_max_window_bits={bits}"),
            None => SERVER_RESPONSE.to_owned(),
        }
    }

    /// The window the server's compressed messages must fit, in bits: 15 unless limited.
    pub fn window_bits(&self) -> u8 {
        self.server_max_window_bits.unwrap_or(15)
    }
}

/// Whether a message of `len` bytes, compressed on its own by [`compress`] (a 15-bit window),
/// can be sent to a peer that limited the server's window to `window_bits`: without context
/// takeover no back-reference reaches before the message's start, so a message no longer than
/// the window never refers further back than the window allows. Longer ones go out plain.
pub fn fits_window(len: usize, window_bits: u8) -> bool {
    window_bits >= 15 || len <= 1 << window_bits
}

/// The server's answer to a `Sec-WebSocket-Extensions` header (all its values, joined by
/// commas): an [`Agreement`] when one permessage-deflate offer can be accepted, else `None`
/// (the connection then runs uncompressed, which every client accepts).
///
/// An offer is refused when it has an unknown or repeated parameter or a malformed value. An
/// offer that limits the server's window (`server_max_window_bits`, 8-15) is honoured by
/// compressing only the messages that fit that window ([`fits_window`]).
pub fn negotiate(offers: &str) -> Option<Agreement> {
    offers.split(',').find_map(acceptable)
}

fn acceptable(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut agreement = Agreement { server_max_window_bits: None };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits =
            |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // The client's own window: it may announce support without a value.
            "client_max_window_bits" => value.is_none() || bits(value).is_some(),
            // A limit on the server's window, which must have a value.
            "server_max_window_bits" => {
                agreement.server_max_window_bits = bits(value);
                agreement.server_max_window_bits.is_some()
            }
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    Some(agreement)
}

/// Whether a server's `Sec-WebSocket-Extensions` answer to [`CLIENT_OFFER`] is one the client
/// can live with: `Ok(true)` deflate is on, `Ok(false)` no extension, `Err` anything else (the
/// client must then fail the connection, RFC 7692 §5 and §7.1).
///
/// Accepted: the two `*_no_context_takeover` flags; `client_max_window_bits=8..15` (offered,
/// and trivially honoured by a client that never compresses); `server_max_window_bits=8..15`
/// (a server may always announce a smaller window, §7.1.2.1, and a 15-bit inflater reads any).
/// Refused: other extensions or parameters, a repeated parameter, a missing or bad value, and
/// an answer without `server_no_context_takeover` (without it each message could depend on the
/// ones before, which this client does not keep).
pub fn client_accepts(response: Option<&str>) -> Result<bool, String> {
    let Some(response) = response.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(false);
    };
    let mut parts = response.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") || response.contains(',') {
        return Err(format!("the server answered an extension that was not offered: {response}"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return Err(format!("repeated permessage-deflate parameter `{name}`"));
        }
        seen.push(name);
        let window_bits = value.and_then(|v| v.parse::<u8>().ok()).filter(|b| (8..=15).contains(b));
        let ok = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "server_max_window_bits" | "client_max_window_bits" => window_bits.is_some(),
            _ => false,
        };
        if !ok {
            return Err(format!("unexpected permessage-deflate parameter `{param}`"));
        }
    }
    if !seen.contains(&"server_no_context_takeover") {
        return Err("the server did not agree to server_no_context_takeover".into());
    }
    Ok(true)
}

/// The `client_max_window_bits` of an answer [`client_accepts`] took: the window the client
/// must compress within, 15 when the server set none.
pub fn client_window_bits(response: &str) -> u8 {
    response
        .split(';')
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim() == "client_max_window_bits")
        .and_then(|(_, value)| value.trim().trim_matches('"').parse::<u8>().ok())
        .filter(|bits| (8..=15).contains(bits))
        .unwrap_or(15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn negotiation_accepts_what_browsers_node_and_python_offer() {
        for offer in [
            "permessage-deflate; client_max_window_bits", // Chromium, ws, websockets
            "permessage-deflate",                         // Firefox
            "permessage-deflate; client_max_window_bits=12; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate", // first one unknown
            "permessage-deflate; server_max_window_bits=15",
        ] {
            assert_eq!(negotiate(offer).map(|a| a.window_bits()), Some(15), "{offer}");
        }
        assert_eq!(negotiate("permessage-deflate").unwrap().response(), SERVER_RESPONSE);
        // A limit on the server's window is repeated in the answer, and honoured.
        let limited = negotiate("permessage-deflate; server_max_window_bits=9").unwrap();
        assert_eq!(limited.response(), format!("{SERVER_RESPONSE}; server_max_window_bits=9"));
        assert_eq!(limited.window_bits(), 9);
        assert!(fits_window(512, 9) && !fits_window(513, 9) && fits_window(1 << 20, 15));
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=7", // out of range
            "permessage-deflate; server_max_window_bits",   // a value is required
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert_eq!(negotiate(offer), None, "{offer}");
        }
    }

    #[test]
    fn the_client_checks_the_answer() {
        assert_eq!(client_accepts(None), Ok(false));
        assert_eq!(client_accepts(Some(SERVER_RESPONSE)), Ok(true));
        assert!(client_accepts(Some("permessage-deflate")).is_err(), "context takeover kept");
        assert!(client_accepts(Some("x-foo")).is_err());
        assert!(
            client_accepts(Some("permessage-deflate; server_no_context_takeover; bar")).is_err()
        );
    }

    #[test]
    fn the_client_takes_window_limits_it_can_honour_and_nothing_malformed() {
        let base = "permessage-deflate; server_no_context_takeover";
        for params in [
            "; client_max_window_bits=9",
            "; client_max_window_bits=15; client_no_context_takeover",
            "; server_max_window_bits=12",
            "; client_max_window_bits=\"10\"",
        ] {
            assert_eq!(client_accepts(Some(&format!("{base}{params}"))), Ok(true), "{params}");
        }
        for params in [
            "; client_max_window_bits",    // a response must give the value
            "; client_max_window_bits=7",  // out of range
            "; server_max_window_bits=16", // out of range
            "; server_max_window_bits=x",
            "; server_no_context_takeover", // repeated
            "; client_no_context_takeover=1",
        ] {
            assert!(client_accepts(Some(&format!("{base}{params}"))).is_err(), "{params}");
        }
        // The offer says what the client can honour: a server may ask to limit its window.
        assert!(CLIENT_OFFER.split(';').any(|p| p.trim() == "client_max_window_bits"));
        let agreed = negotiate(CLIENT_OFFER).map(|a| a.response());
        assert_eq!(agreed.as_deref(), Some(SERVER_RESPONSE), "Tether's server takes it");
    }

    #[test]
    fn compressing_within_a_limited_window_never_refers_past_it() {
        let text = b"a window of nine bits is 512 bytes; ".repeat(100);
        assert_eq!(client_window_bits("permessage-deflate; client_max_window_bits=9"), 9);
        assert_eq!(client_window_bits(SERVER_RESPONSE), 15);
        let mut inflater = MessageInflater::default();
        // Within 15 bits, or short enough for the window: compressed as usual.
        assert_eq!(compress_within(&text, 15), compress(&text));
        assert_eq!(compress_within(&text[..512], 9), compress(&text[..512]));
        // Longer than the window: stored blocks, the text as it is inside them.
        let stored = compress_within(&text, 9);
        assert!(stored.len() > text.len(), "stored, not compressed: {} bytes", stored.len());
        assert!(stored.windows(text.len() / 2).any(|w| w == &text[..text.len() / 2]));
        assert_eq!(inflater.inflate(&stored, 1 << 20).as_deref(), Some(&text[..]));
        let big = vec![7u8; 200_000]; // more than one stored block
        assert_eq!(inflater.inflate(&compress_within(&big, 8), 1 << 20), Some(big));
    }

    /// A client's frame (masked) of a compressed message split in `pieces` fragments.
    fn client_frames(text: &[u8], pieces: usize, mask: [u8; 4]) -> Vec<u8> {
        let payload = compress(text);
        let size = payload.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> =
            if payload.is_empty() { vec![&[][..]] } else { payload.chunks(size).collect() };
        let mut wire = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let header = FrameHeader {
                is_final: i + 1 == chunks.len(),
                rsv1: i == 0,
                opcode: if i == 0 {
                    OpCode::Data(Data::Text)
                } else {
                    OpCode::Data(Data::Continue)
                },
                mask: Some(mask),
                ..FrameHeader::default()
            };
            header.format(chunk.len() as u64, &mut wire).unwrap();
            wire.extend(chunk.iter().enumerate().map(|(j, b)| b ^ mask[j % 4]));
        }
        wire
    }

    /// Parse one frame from `wire`: (header, unmasked payload).
    fn one_frame(wire: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(wire);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        let mut payload = wire[start..start + len as usize].to_vec();
        if let Some(key) = header.mask {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        assert_eq!(wire.len(), start + len as usize, "exactly one frame");
        (header, payload)
    }

    #[test]
    fn a_compressed_message_becomes_one_plain_frame_however_it_arrives() {
        let text = br#"{"id":3,"cmd":"publish","channel":"news","data":"hello hello hello hello"}"#
            .repeat(40);
        for pieces in [1, 2, 5] {
            let wire = client_frames(&text, pieces, [9, 8, 7, 6]);
            for chunk in [1, 3, 7, 64, 100_000] {
                let mut inflating = Inflating::new(1 << 20);
                let mut out = Vec::new();
                for piece in wire.chunks(chunk) {
                    inflating.feed(piece, &mut out);
                }
                assert!(inflating.at_rest());
                let (header, payload) = one_frame(&out);
                assert!(!header.rsv1 && header.is_final && header.mask == Some([9, 8, 7, 6]));
                assert_eq!(payload, text, "{pieces} pieces, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn control_frames_and_plain_messages_pass_through_even_mid_message() {
        let text = b"compress me, compress me, compress me".repeat(10);
        let compressed = client_frames(&text, 2, [1, 2, 3, 4]);
        // Split after the first frame and put a ping between the fragments.
        let (first, _) = {
            let mut c = Cursor::new(&compressed[..]);
            let (_, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
            (c.position() as usize + len as usize, ())
        };
        let mut ping = Vec::new();
        FrameHeader {
            opcode: OpCode::Control(tungstenite::protocol::frame::coding::Control::Ping),
            mask: Some([5; 4]),
            ..Default::default()
        }
        .format(2, &mut ping)
        .unwrap();
        ping.extend([b'h' ^ 5, b'i' ^ 5]);
        let mut plain = Vec::new();
        FrameHeader { opcode: OpCode::Data(Data::Text), mask: Some([0; 4]), ..Default::default() }
            .format(4, &mut plain)
            .unwrap();
        plain.extend(b"ping");
        let mut wire = plain.clone();
        wire.extend(&compressed[..first]);
        wire.extend(&ping);
        wire.extend(&compressed[first..]);
        let mut inflating = Inflating::new(1 << 20);
        let mut out = Vec::new();
        inflating.feed(&wire, &mut out);
        let mut expected = plain;
        expected.extend(&ping);
        assert_eq!(&out[..expected.len()], &expected[..], "plain frame then the ping, untouched");
        assert_eq!(one_frame(&out[expected.len()..]).1, text);
    }

    #[test]
    fn a_bomb_is_stopped_at_the_limit_and_bad_data_is_refused() {
        let bomb = vec![b'a'; 1 << 20];
        let wire = client_frames(&bomb, 1, [1, 1, 1, 1]);
        assert!(wire.len() < 2000, "a megabyte of one letter compresses to {} bytes", wire.len());
        let mut inflating = Inflating::new(64 * 1024);
        let mut out = Vec::new();
        inflating.feed(&wire, &mut out);
        let mut cursor = Cursor::new(&out[..]);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(len > 64 * 1024 && !header.rsv1, "announced {len}: the layer closes with 1009");

        let mut garbage = Vec::new();
        FrameHeader {
            rsv1: true,
            opcode: OpCode::Data(Data::Text),
            mask: Some([0; 4]),
            ..Default::default()
        }
        .format(4, &mut garbage)
        .unwrap();
        garbage.extend([0xff, 0xff, 0xff, 0xff]);
        let mut inflating = Inflating::new(1 << 20);
        let mut out = Vec::new();
        inflating.feed(&garbage, &mut out);
        let (header, _) = FrameHeader::parse(&mut Cursor::new(&out[..])).unwrap().unwrap();
        assert!(header.rsv1, "left with RSV1: the layer closes with 1002");
    }

    #[test]
    fn the_message_inflater_is_reusable_and_bounded() {
        let mut inflater = MessageInflater::default();
        for text in [&b"first message, first message"[..], b"", b"second"] {
            assert_eq!(inflater.inflate(&compress(text), 1 << 20).as_deref(), Some(text));
        }
        assert_eq!(inflater.inflate(&compress(&[b'a'; 10_000]), 1000), None);
        assert_eq!(inflater.inflate(&[0xff; 8], 1000), None);
    }

    #[test]
    fn compressed_frames_are_smaller_and_round_trip() {
        let json = br#"{"type":"publication","channel":"prices","offset":7,"data":{"symbol":"ABC","bid":101.25,"ask":101.5}}"#.repeat(12);
        let frame = compressed_text_frame(&json);
        assert!(frame.len() * 3 < json.len(), "{} → {}", json.len(), frame.len());
        let mut inflating = Inflating::new(1 << 20);
        let mut out = Vec::new();
        inflating.feed(&frame, &mut out);
        let (header, payload) = one_frame(&out);
        assert!(header.mask.is_none() && !header.rsv1);
        assert_eq!(payload, json);
        // The empty message too.
        let mut out = Vec::new();
        Inflating::new(10).feed(&compressed_text_frame(b""), &mut out);
        assert_eq!(one_frame(&out).1, b"");
    }

    /// A compressed message whose frames inflate to nothing (empty stored blocks, empty
    /// frames) is bounded by its bytes on the wire, not only by what it inflates to: it fails
    /// as too big (1009) once past the limit, instead of streaming without end.
    #[test]
    fn frames_that_inflate_to_nothing_cannot_stream_without_end() {
        let max = 1000;
        let frame = |opcode, fin: bool, rsv1: bool, payload: &[u8]| {
            let header = FrameHeader {
                is_final: fin,
                rsv1,
                opcode,
                mask: Some([1, 2, 3, 4]),
                ..FrameHeader::default()
            };
            let mut out = Vec::new();
            header.format(payload.len() as u64, &mut out).unwrap();
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
            out
        };
        // An empty stored block: 5 bytes that inflate to nothing.
        let empty_block = [0x00, 0x00, 0x00, 0xff, 0xff];
        for payload in [&empty_block[..], &[]] {
            let mut inflating = Inflating::new(max);
            let mut out = Vec::new();
            inflating.feed(&frame(OpCode::Data(Data::Text), false, true, payload), &mut out);
            let mut fed = 0;
            for _ in 0..10_000 {
                if !out.is_empty() {
                    break;
                }
                let more = frame(OpCode::Data(Data::Continue), false, false, payload);
                fed += more.len();
                inflating.feed(&more, &mut out);
            }
            assert!(!out.is_empty(), "still streaming after {fed} bytes");
            assert!(fed <= max + max / 128 + 1024, "refused only after {fed} bytes");
            let (header, len) = FrameHeader::parse(&mut Cursor::new(&out[..])).unwrap().unwrap();
            assert!(!header.rsv1 && len > max as u64, "announces more than the limit: 1009");
        }
    }

    /// A message whose compressed form needs more than half its size: compressing it must not
    /// lose its end (the first version grew its buffer from half the message and resumed the
    /// flush, and miniz_oxide then left a 64 KiB message 243 bytes short; Autobahn's 12.2.9
    /// found it).
    #[test]
    fn a_message_that_barely_compresses_comes_back_whole() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut failures = 0;
        for step in [7u64, 13, 33, 255] {
            // Like a grey-scale picture: a random walk, compressing to 50-100 %.
            let mut level = 128u8;
            let data: Vec<u8> = (0..65_536)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    level = level.wrapping_add((x % step) as u8).wrapping_sub((step / 2) as u8);
                    level
                })
                .collect();
            for len in (20_000..=65_536).step_by(997) {
                let compressed = compress(&data[..len]);
                let mut inflater = MessageInflater::default();
                if inflater.inflate(&compressed, 1 << 20).as_deref() != Some(&data[..len]) {
                    failures += 1;
                }
            }
        }
        assert_eq!(failures, 0, "messages that did not come back whole");
    }
}
