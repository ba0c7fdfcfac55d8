//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a stable API: each
//! function runs one decoder on arbitrary bytes exactly as the relay or a client would, and
//! must never panic or allocate past the frame limit it checks.

use crate::auth::{Grants, Pattern};
use crate::protocol::{MAX_FRAME_LEN, MAX_HEADER_LEN, MAX_HELLO_LEN, Message};

/// Reads one frame the way `read_frame` does (length prefix checked against `max` before
/// anything is allocated), then decodes it; a decoded message must re-encode and decode to
/// the same message.
fn frame(data: &[u8], max: usize) -> Option<Message> {
    let (len, body) = data.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len > max || body.len() < len {
        return None;
    }
    let msg = Message::decode(&body[..len]).ok()?;
    let again = msg.encode().expect("a decoded message encodes");
    assert_eq!(Message::decode(&again[2..]).expect("re-decodes"), msg);
    Some(msg)
}

/// The relay's first read: the hello frame (4 KiB cap), then the relay's validation of it.
pub fn handshake(data: &[u8]) {
    if let Some(msg) = frame(data, MAX_HELLO_LEN) {
        let _ = crate::relay::validate_hello(msg);
    }
}

/// A per-stream header or answer (1 KiB cap), and the device list (64 KiB cap).
pub fn header(data: &[u8]) {
    let _ = frame(data, MAX_HEADER_LEN);
    let _ = frame(data, MAX_FRAME_LEN);
}

/// Grant patterns: the first line is a list of `device/service` grants separated by `,`,
/// each following line a `device/service` request; matching must agree with a naive check.
pub fn grants(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let mut grants = Grants::new();
    let mut pairs = Vec::new();
    for grant in lines.next().unwrap_or("").split(',') {
        let Some((d, s)) = grant.split_once('/') else {
            continue;
        };
        if let (Ok(dp), Ok(sp)) = (Pattern::new(d), Pattern::new(s)) {
            grants = grants.access(dp, sp);
            pairs.push((d, s));
        }
    }
    let naive = |p: &str, n: &str| match p.strip_suffix('*') {
        Some(prefix) => n.starts_with(prefix),
        None => p == n,
    };
    for request in lines {
        let (device, service) = request.split_once('/').unwrap_or((request, ""));
        let expected = pairs
            .iter()
            .any(|(d, s)| naive(d, device) && naive(s, service));
        assert_eq!(grants.may_access(device, service), expected);
    }
}

/// The relay's per-session meter over the yamux bytes a peer sends.
pub fn yamux_meter(data: &[u8]) {
    crate::relay::meter_bytes(data);
}

/// The multiplexer's session state on arbitrary peer bytes, fed in chunks, with the local
/// side reading, writing (both as a stream handle does and as a splice does: take and
/// release, reserve and submit), shutting down, dropping and opening streams in between
/// (the first byte picks the side and the chunk size). It must never panic, and every stream
/// must stay within the window it was granted.
pub fn mux_frames(data: &[u8]) {
    use std::collections::{HashMap, VecDeque};
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use crate::mux::{Conn, HEADER_LEN, Side};

    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let side = if first & 1 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    // The top bit picks a window above the spec's initial one, so that an acknowledgement
    // grants more (and the unacknowledged window is checked apart).
    let window = if first & 0x80 == 0 { 0 } else { 4 * 256 * 1024 };
    let mut conn = Conn::new(side, window, 8);
    let mut held: HashMap<u32, VecDeque<u8>> = HashMap::new();
    let mut reserved: HashMap<u32, usize> = HashMap::new();
    let (mut buf, mut accepted, mut open) = (Vec::new(), Vec::new(), Vec::new());
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    for piece in rest.chunks(1 + usize::from((first >> 1) & 0x3f)) {
        buf.extend_from_slice(piece);
        match conn.input(&buf, &mut accepted) {
            Ok(parsed) => {
                assert!(parsed.need >= 12 && parsed.consumed <= buf.len());
                buf.drain(..parsed.consumed);
            }
            Err(_) => return,
        }
        open.append(&mut accepted);
        let op = piece[0];
        for &id in &open {
            // The application accepts a peer's stream (and so acknowledges it) some time
            // after it arrived.
            if op & 0x08 != 0 {
                conn.acknowledge(id);
            }
            if op & 0x20 == 0 {
                let mut into = [0u8; 64];
                let _ = conn.read(id, &mut cx, &mut ReadBuf::new(&mut into));
            } else {
                // The splice's read: take the buffer whole, deliver part, release that.
                let held = held.entry(id).or_default();
                if held.is_empty() {
                    let _ = conn.take(id, &mut cx, held);
                }
                let n = held.len().min(usize::from(op));
                held.drain(..n);
                conn.release(id, n);
            }
            if op & 0x40 == 0 {
                let _ = conn.write(id, &mut cx, piece);
            } else {
                // The splice's write: reserve window, and (at the stream's next turn, with
                // the peer's frames in between) queue a frame filled behind header room.
                let reserved = reserved.entry(id).or_default();
                if *reserved == 0 {
                    if let Poll::Ready(Ok(n)) = conn.reserve(id, &mut cx, piece.len()) {
                        *reserved = n;
                    }
                } else {
                    let mut frame = vec![0u8; HEADER_LEN];
                    frame.extend_from_slice(&piece[..piece.len().min(*reserved)]);
                    if conn.submit(id, &mut cx, &mut frame, *reserved).is_pending() {
                        // Gives the reservation back, as a splice that ends does.
                        frame.clear();
                        let _ = conn.submit(id, &mut cx, &mut frame, *reserved);
                    }
                    *reserved = 0;
                }
            }
            if op & 0x10 != 0 {
                let _ = conn.shutdown(id);
            }
        }
        if op % 5 == 0
            && let Some(id) = open.pop()
        {
            held.remove(&id);
            reserved.remove(&id);
            conn.drop_stream(id);
        }
        if op % 7 == 0
            && let Ok(id) = conn.open()
        {
            open.push(id);
        }
        if op % 3 == 0 {
            conn.take_out(&mut Vec::new());
        }
        conn.wake.clear();
        conn.check_invariants();
    }
}
