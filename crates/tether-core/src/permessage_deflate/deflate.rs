//! Compressing one message on its own (no context takeover), and framing it.

use super::{fits_window, TAIL};
use flate2::{Compress, Compression, FlushCompress, Status};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// `payload` compressed on its own (no context), as one message's payload: deflate with a
/// sync flush, its 4-byte tail removed.
pub fn compress(payload: &[u8]) -> Vec<u8> {
    thread_local! {
        static DEFLATE: Compressor = Compressor::new(Compress::new(Compression::default(), false));
    }
    compress_on(&DEFLATE, payload)
}

/// `payload` compressed as one message by a sender whose window the peer limited to
/// `window_bits` (the `client_max_window_bits` of an answer, RFC 7692 §7.1.2.2). This
/// compressor's LZ77 window is 15 bits: a message no longer than the limit cannot refer further
/// back than it allows ([`fits_window`]), and a longer one goes out as stored blocks, which
/// refer back to nothing (5 bytes bigger per 64 KiB, and still a message a window-limited peer
/// inflates).
pub fn compress_within(payload: &[u8], window_bits: u8) -> Vec<u8> {
    if fits_window(payload.len(), window_bits) {
        return compress(payload);
    }
    thread_local! {
        static STORED: Compressor = Compressor::new(Compress::new(Compression::none(), false));
    }
    compress_on(&STORED, payload)
}

/// One compressor per thread, reset per message: its state is hundreds of KB, too much to
/// allocate and zero for every publication.
type Compressor = std::cell::RefCell<Compress>;

fn compress_on(compressor: &'static std::thread::LocalKey<Compressor>, payload: &[u8]) -> Vec<u8> {
    compressor.with(|deflate| {
        let mut deflate = deflate.borrow_mut();
        deflate.reset();
        compress_with(&mut deflate, payload)
    })
}

fn compress_with(deflate: &mut Compress, payload: &[u8]) -> Vec<u8> {
    // One call with room for the worst case (DEFLATE adds 5 bytes per 64 KiB stored block, plus
    // the flush marker). A sync flush interrupted by a full buffer is not resumed reliably
    // (miniz_oxide left a 64 KiB message 243 bytes short when asked to go on), so a buffer that
    // does fill starts the message over in a bigger one.
    let mut room = payload.len() + payload.len() / 64 + 64;
    loop {
        let mut out = Vec::with_capacity(room);
        let status = deflate
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .expect("deflate into a Vec cannot fail");
        let done = deflate.total_in() as usize == payload.len();
        if done && out.len() < out.capacity() && status != Status::BufError {
            if out.ends_with(&TAIL) {
                out.truncate(out.len() - TAIL.len());
            }
            return out;
        }
        deflate.reset();
        room *= 2;
    }
}

/// A complete, unmasked, compressed text frame (RSV1 set) for `text`: built once per
/// publication, the same bytes for every subscriber that negotiated the extension.
pub fn compressed_text_frame(text: &[u8]) -> Vec<u8> {
    compressed_frame(false, text, 15)
}

/// As [`compressed_text_frame`], for a binary message.
pub fn compressed_binary_frame(payload: &[u8]) -> Vec<u8> {
    compressed_frame(true, payload, 15)
}

/// A complete, unmasked, compressed frame (RSV1 set) for a text or `binary` message that a
/// peer inflates within a window of `window_bits` ([`compress_within`]).
pub fn compressed_frame(binary: bool, message: &[u8], window_bits: u8) -> Vec<u8> {
    let payload = compress_within(message, window_bits);
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        opcode: OpCode::Data(if binary { Data::Binary } else { Data::Text }),
        ..FrameHeader::default()
    };
    let mut frame = Vec::with_capacity(payload.len() + 10);
    header.format(payload.len() as u64, &mut frame).expect("writing to a Vec cannot fail");
    frame.extend_from_slice(&payload);
    frame
}
