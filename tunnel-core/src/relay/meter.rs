//! Per-session abuse limits at the relay: a pass-through wrapper under yamux that reads the
//! 12-byte yamux frame headers the peer sends and counts stream opens, frames that carry
//! nothing (empty data or zero window updates without a lifecycle flag, pings, anything for
//! a stream the peer never opened or acknowledged) and lifecycle frames (empty ACK, FIN,
//! RST). yamux bounds memory (windows, ACK
//! backlog, one pending frame) but not the *rate* of such frames, which cost CPU and, for
//! opens, a task each. A peer over either rate gets an I/O error on its connection: the
//! session ends, other sessions are untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::warn;

/// Streams a peer may open per second, sustained. An access client opens one stream per
/// connection it forwards, and a busy forward (a load test, a proxy for many short HTTP
/// requests) opens thousands a second; a flood of bare opens runs at hundreds of thousands.
/// (200/s closed the benchmark's own 64-stream client.)
pub(super) const STREAM_OPENS_PER_SEC: u32 = 5000;
/// Stream opens allowed in a burst above the sustained rate (a page load, a reconnect storm
/// of a port forward with 1000 connections).
pub(super) const STREAM_OPEN_BURST: u32 = 10_000;
/// Frames carrying nothing (empty data without flags, window update of 0 without flags,
/// ping) a peer may send per second, sustained. yamux itself sends one ping per 10 s.
pub(super) const EMPTY_FRAMES_PER_SEC: u32 = 100;
/// Empty frames allowed in a burst.
pub(super) const EMPTY_FRAME_BURST: u32 = 1024;
/// Payload-less frames with a lifecycle flag (ACK, FIN, RST) a peer may send per second:
/// a well-behaved stream costs at most three (acknowledge, finish, reset), so three per
/// stream open allowed.
pub(super) const CONTROL_FRAMES_PER_SEC: u32 = 3 * STREAM_OPENS_PER_SEC;
/// Lifecycle frames allowed in a burst.
pub(super) const CONTROL_FRAME_BURST: u32 = 3 * STREAM_OPEN_BURST;
/// Stream IDs remembered as opened or acknowledged by the peer (yamux's own limit on a
/// session is at most 2 × 4096 streams); past this the oldest are forgotten.
const MAX_TRACKED_STREAMS: usize = 8192;

const HEADER_LEN: usize = 12;
const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const FLAG_SYN: u16 = 1;
const FLAG_ACK: u16 = 2;
const FLAG_FIN: u16 = 4;
const FLAG_RST: u16 = 8;

/// A leaky bucket: `rate` per second sustained, `burst` above it.
struct Bucket {
    /// When the bucket is empty again (GCRA theoretical arrival time).
    paid: Instant,
    interval: Duration,
    limit: Duration,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / rate.max(1);
        Self {
            paid: Instant::now(),
            interval,
            limit: interval * burst,
        }
    }
    /// Counts one event; false when over the limit.
    fn take(&mut self, now: Instant) -> bool {
        self.paid = self.paid.max(now) + self.interval;
        self.paid.saturating_duration_since(now) <= self.limit
    }
}

/// The socket under a relay session's yamux, metered on the read side.
pub(super) struct Metered<T> {
    inner: T,
    meter: Meter,
}

impl<T> Metered<T> {
    pub(super) fn new(inner: T) -> Self {
        Self {
            inner,
            meter: Meter::new(),
        }
    }
}

/// Where the peer's byte stream is in the yamux framing, and its rate buckets.
struct Meter {
    header: [u8; HEADER_LEN],
    have: usize,
    /// Data-frame body bytes still to skip before the next header.
    skip: u64,
    opens: Bucket,
    empty: Bucket,
    control: Bucket,
    /// Streams the peer opened (SYN) or acknowledged (ACK), with the frame count when each
    /// was last used: anything else the peer sends for a stream outside this map is a
    /// frame for nothing.
    streams: std::collections::HashMap<u32, u64>,
    /// Frames seen so far; the clock of `streams`.
    frames: u64,
}

impl Meter {
    fn new() -> Self {
        Self {
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
            opens: Bucket::new(STREAM_OPENS_PER_SEC, STREAM_OPEN_BURST),
            empty: Bucket::new(EMPTY_FRAMES_PER_SEC, EMPTY_FRAME_BURST),
            control: Bucket::new(CONTROL_FRAMES_PER_SEC, CONTROL_FRAME_BURST),
            streams: std::collections::HashMap::new(),
            frames: 0,
        }
    }

    /// Remembers `id` as a live stream. Over the cap, the half least recently used is
    /// forgotten at once (amortized constant time): a long-lived busy stream stays.
    fn track(&mut self, id: u32) {
        self.streams.insert(id, self.frames);
        if self.streams.len() > MAX_TRACKED_STREAMS {
            let mut ages: Vec<u64> = self.streams.values().copied().collect();
            let (_, median, _) = ages.select_nth_unstable(MAX_TRACKED_STREAMS / 2);
            let cut = *median;
            self.streams.retain(|_, used| *used > cut);
        }
    }

    /// Whether `id` is a live stream; refreshes it if so.
    fn touch(&mut self, id: u32) -> bool {
        match self.streams.get_mut(&id) {
            Some(used) => {
                *used = self.frames;
                true
            }
            None => false,
        }
    }

    /// Walks the bytes just read; an error when the peer is over a rate.
    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let now = Instant::now();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                bytes = &bytes[n..];
                self.skip -= n as u64;
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let h = self.header;
            let kind = h[1];
            let flags = u16::from_be_bytes([h[2], h[3]]);
            let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            if kind == TYPE_DATA {
                self.skip = u64::from(length);
            }
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            self.frames += 1;
            let stream_frame = kind == TYPE_DATA || kind == TYPE_WINDOW_UPDATE;
            // The relay runs yamux in server mode: the peer opens odd stream IDs and
            // acknowledges the even ones the relay opened. Anything else claims nothing.
            let peer_opened = id % 2 == 1;
            if stream_frame && flags & FLAG_SYN != 0 {
                if !self.opens.take(now) {
                    return Err(abuse("opens streams too fast"));
                }
                if peer_opened {
                    self.track(id);
                }
                continue;
            }
            if stream_frame && flags & FLAG_ACK != 0 && !peer_opened {
                self.track(id);
            }
            let known = self.touch(id);
            if stream_frame && flags & FLAG_RST != 0 {
                self.streams.remove(&id);
            }
            // What the frame costs: nothing when it carries data or credit for a live
            // stream; a lifecycle token when it only acknowledges, finishes or resets one;
            // an empty-frame token when it carries nothing or is for no stream at all.
            let bucket = match kind {
                _ if stream_frame && !known => Some(false),
                TYPE_DATA | TYPE_WINDOW_UPDATE if length == 0 => {
                    Some(flags & (FLAG_ACK | FLAG_FIN | FLAG_RST) != 0)
                }
                TYPE_PING => Some(false),
                _ => None,
            };
            match bucket {
                Some(true) if !self.control.take(now) => {
                    return Err(abuse("floods stream control frames"));
                }
                Some(false) if !self.empty.take(now) => {
                    return Err(abuse("floods empty frames"));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn abuse(what: &str) -> io::Error {
    warn!(
        what,
        "peer over its session rate limit; closing the session"
    );
    io::Error::new(io::ErrorKind::ConnectionAborted, format!("peer {what}"))
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.meter.inspect(&buf.filled()[before..])?;
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Feeds `data` to a fresh meter in uneven chunks; it must never panic.
#[cfg(feature = "fuzzing")]
pub(super) fn fuzz(data: &[u8]) {
    let mut m = Meter::new();
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(split) {
        if m.inspect(chunk).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u16, id: u32, len: u32) -> Vec<u8> {
        let mut f = vec![0, kind];
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&len.to_be_bytes());
        f
    }

    #[tokio::test(start_paused = true)]
    async fn data_bodies_are_skipped_even_when_split_across_reads() {
        let mut m = Meter::new();
        let mut bytes = frame(TYPE_DATA, 0, 1, 5);
        bytes.extend_from_slice(b"hello");
        bytes.extend(frame(TYPE_WINDOW_UPDATE, 0, 1, 1000));
        for chunk in bytes.chunks(3) {
            m.inspect(chunk).unwrap();
        }
        assert_eq!((m.have, m.skip), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_frame_flood_is_cut_off_and_a_steady_trickle_is_not() {
        let mut m = Meter::new();
        let empty = frame(TYPE_DATA, 0, 1, 0);
        for _ in 0..EMPTY_FRAME_BURST {
            m.inspect(&empty).unwrap();
        }
        assert!(m.inspect(&empty).is_err());
        let mut m = Meter::new();
        for _ in 0..5000 {
            tokio::time::advance(Duration::from_millis(20)).await;
            m.inspect(&frame(TYPE_PING, FLAG_SYN, 0, 7)).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_window_updates_with_flags_and_data_for_unknown_streams_are_metered() {
        // RST+ACK window updates of 0 for a stream the peer did open: lifecycle frames.
        let mut m = Meter::new();
        m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
            .unwrap();
        let err = (0..=CONTROL_FRAME_BURST).find_map(|_| {
            m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_ACK | FLAG_FIN, 1, 0))
                .err()
        });
        assert!(err.is_some_and(|e| e.to_string().contains("control")));
        // One-byte data frames for a stream nobody opened: frames for nothing.
        let mut m = Meter::new();
        let mut one = frame(TYPE_DATA, 0, 99, 1);
        one.push(b'x');
        let err = (0..=EMPTY_FRAME_BURST).find_map(|_| m.inspect(&one).err());
        assert!(err.is_some_and(|e| e.to_string().contains("empty")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_well_behaved_session_is_never_cut() {
        // 1000 streams/s for 10 s, each opened, fed, acknowledged, finished and reset.
        let mut m = Meter::new();
        for second in 0..10u32 {
            for i in 0..1000u32 {
                let id = 2 * (second * 1000 + i) + 1;
                let mut data = frame(TYPE_DATA, FLAG_SYN, id, 3);
                data.extend_from_slice(b"abc");
                m.inspect(&data).unwrap();
                m.inspect(&frame(TYPE_WINDOW_UPDATE, 0, id, 4096)).unwrap();
                m.inspect(&frame(TYPE_DATA, FLAG_FIN, id, 0)).unwrap();
                m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0))
                    .unwrap();
                // Our own stream towards the peer, acknowledged by it.
                m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_ACK, id + 1, 0))
                    .unwrap();
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_lived_busy_stream_outlives_thousands_of_short_ones() {
        let mut m = Meter::new();
        m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
            .unwrap();
        for i in 0..(3 * MAX_TRACKED_STREAMS as u32) {
            m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 3, 0))
                .unwrap();
            m.inspect(&frame(TYPE_WINDOW_UPDATE, 0, 1, 100)).unwrap();
            if i % 1000 == 0 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        assert!(m.streams.contains_key(&1));
        assert!(m.streams.len() <= MAX_TRACKED_STREAMS + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_flood_is_cut_off() {
        let mut m = Meter::new();
        let mut err = None;
        for id in 0..(STREAM_OPEN_BURST + 10) {
            if let Err(e) = m.inspect(&frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * id + 1, 0)) {
                err = Some(e);
                break;
            }
        }
        assert!(err.is_some_and(|e| e.to_string().contains("opens")));
    }
}
