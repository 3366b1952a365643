//! Arbitrary bytes through the MQTT decoder.
//!
//! Input layout: byte 0 picks the connection's protocol (none yet = before
//! CONNECT, 3.1, 3.1.1, 5.0), byte 1 the maximum packet size, byte 2 the
//! chunk size for the streaming pass; the rest is what arrives on the wire.
//!
//! Checked, for every input:
//! - no panic;
//! - `Ok(None)` never consumes bytes; a decoded frame never exceeds the
//!   maximum packet size;
//! - every decoded packet encodes (`encoded_len` agrees with `encode`) and
//!   decodes back to an equal packet, consuming exactly the encoded bytes
//!   (the round trip of `codec/tests.rs`), to the same bytes again, and
//!   never to more bytes than the frame it came from;
//! - feeding the same bytes in chunks gives the same packets and the same
//!   error as feeding them at once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raftmq::codec::{decode, encode, encoded_len, DecodeError, Packet, Protocol};

const MAX_SIZES: [u32; 8] = [0, 2, 5, 16, 64, 300, 4096, 268_435_460];

fn protocol_of(b: u8) -> Option<Protocol> {
    match b % 4 {
        0 => None,
        1 => Some(Protocol::V31),
        2 => Some(Protocol::V311),
        _ => Some(Protocol::V5),
    }
}

/// What decoding a stream gave: the packets, then how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Each packet with the number of bytes its frame took.
    packets: Vec<(Packet, usize)>,
    error: Option<DecodeError>,
}

/// Decodes packets the way a connection does: before CONNECT the protocol
/// is unknown, a CONNECT fixes it.
fn step(buf: &mut BytesMut, protocol: &mut Option<Protocol>, max: u32, out: &mut Outcome) -> bool {
    loop {
        let before = buf.len();
        match decode(buf, *protocol, max) {
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return true;
            }
            Ok(Some(p)) => {
                let used = before - buf.len();
                assert!(used >= 2, "a frame is at least 2 bytes");
                if max != 0 {
                    assert!(used <= max as usize, "{used} byte frame over max {max}");
                }
                if let Packet::Connect(c) = &p {
                    if protocol.is_none() {
                        *protocol = Some(c.protocol);
                    }
                }
                out.packets.push((p, used));
            }
            Err(e) => {
                let _ = e.reason_code();
                let _ = e.to_string();
                out.error = Some(e);
                return false;
            }
        }
    }
}

/// The round trip of `codec/tests.rs`: encode as the connection's protocol
/// (a CONNECT as its own), decode again (no size limit), get the same.
fn round_trip(p: &Packet, protocol: Protocol, used: usize) {
    let protocol = match p {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    let mut buf = BytesMut::new();
    if let Err(e) = encode(p, protocol, &mut buf) {
        panic!("decoded packet does not encode: {e}: {p:?}");
    }
    assert_eq!(buf.len(), encoded_len(p, protocol), "encoded_len disagrees");
    let wire = buf.clone();
    // The encoding is canonical (shortest forms, minimal lengths): never
    // longer than the frame it was decoded from.
    assert!(
        wire.len() <= used,
        "{} byte frame re-encodes to {} bytes: {p:?}",
        used,
        wire.len()
    );
    let decoder_protocol = match p {
        Packet::Connect(_) => None,
        _ => Some(protocol),
    };
    let again = match decode(&mut buf, decoder_protocol, 0) {
        Ok(Some(again)) => again,
        Ok(None) => panic!("re-encoded packet is incomplete: {wire:02x?}"),
        Err(e) => panic!("re-encoded packet does not decode: {e}: {p:?} as {wire:02x?}"),
    };
    assert!(buf.is_empty(), "decoder left bytes of {wire:02x?}");
    assert_eq!(&again, p, "round trip changed the packet ({wire:02x?})");
    // And the canonical encoding is a fixed point.
    let mut twice = BytesMut::new();
    encode(&again, protocol, &mut twice).expect("encodes twice");
    assert_eq!(twice, wire, "encoding is not deterministic");
}

fuzz_target!(|data: &[u8]| {
    let [proto, size, chunk, wire @ ..] = data else {
        return;
    };
    let start = protocol_of(*proto);
    let max = MAX_SIZES[usize::from(size % 8)];

    // All at once.
    let mut whole = Outcome {
        packets: Vec::new(),
        error: None,
    };
    let mut protocol = start;
    let mut buf = BytesMut::from(wire);
    step(&mut buf, &mut protocol, max, &mut whole);

    // Round trip, in the protocol the connection had when each arrived.
    let mut protocol = start;
    for (p, used) in &whole.packets {
        let current = protocol.unwrap_or(Protocol::V5);
        round_trip(p, current, *used);
        if let Packet::Connect(c) = p {
            if protocol.is_none() {
                protocol = Some(c.protocol);
            }
        }
    }

    // In chunks, as reads arrive.
    let chunk = usize::from(*chunk).max(1);
    let mut streamed = Outcome {
        packets: Vec::new(),
        error: None,
    };
    let mut protocol = start;
    let mut buf = BytesMut::new();
    for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        if !step(&mut buf, &mut protocol, max, &mut streamed) {
            break;
        }
    }
    assert_eq!(streamed, whole, "chunks of {chunk} decode differently");
});
