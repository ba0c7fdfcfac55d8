//! [`Chunks`]: a stream's received bytes, kept as a queue of buffers, so that a frame body
//! read into its own buffer joins its stream without a copy and a splice takes them all
//! at once.

use std::collections::VecDeque;
use std::io::IoSlice;

use tokio::io::ReadBuf;

/// Bodies smaller than this are copied into the last buffer (or a new one of this size)
/// instead of queued as buffers of their own: a peer that sends one-byte frames cannot
/// make a stream hold an allocation per byte. A stream holds at most about twice its
/// window this way (a small body after each large one).
pub(crate) const SMALL_BODY: usize = 4 * 1024;
/// An empty queue that once held more buffers than this frees its table.
const KEEP_SLOTS: usize = 4;

/// Bytes in order, as a queue of buffers; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of `bufs[0]` already consumed.
    at: usize,
    len: usize,
}

impl Chunks {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `bytes`.
    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(last) = self.bufs.back_mut()
            && last.capacity() - last.len() >= bytes.len()
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut buf = Vec::with_capacity(bytes.len().max(SMALL_BODY));
        buf.extend_from_slice(bytes);
        self.bufs.push_back(buf);
    }

    /// Appends `buf` whole, without a copy; a small one is copied instead (see
    /// [`SMALL_BODY`]).
    pub(crate) fn push(&mut self, buf: Vec<u8>) {
        if buf.len() < SMALL_BODY {
            self.extend_from_slice(&buf);
            return;
        }
        self.len += buf.len();
        self.bufs.push_back(buf);
    }

    /// Moves bytes from the front into `out`; returns how many.
    pub(crate) fn copy_to(&mut self, out: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while out.remaining() > 0 {
            let Some(front) = self.bufs.front() else {
                break;
            };
            let avail = &front[self.at..];
            let k = avail.len().min(out.remaining());
            out.put_slice(&avail[..k]);
            n += k;
            self.consume(k);
        }
        n
    }

    /// Drops `n` bytes (at most [`Chunks::len`]) from the front, freeing the buffers they
    /// emptied.
    pub(crate) fn consume(&mut self, n: usize) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.bufs.front() else {
                break;
            };
            let left = front.len() - self.at;
            if n < left {
                self.at += n;
                break;
            }
            n -= left;
            self.bufs.pop_front();
            self.at = 0;
        }
        if self.bufs.is_empty() && self.bufs.capacity() > KEEP_SLOTS {
            self.bufs = VecDeque::new();
        }
    }

    /// The bytes from the front, as up to `out.len()` slices (for a vectored write);
    /// returns how many it filled.
    pub(crate) fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (i, buf) in self.bufs.iter().enumerate() {
            if filled == out.len() {
                break;
            }
            let from = if i == 0 { self.at } else { 0 };
            if buf.len() > from {
                out[filled] = IoSlice::new(&buf[from..]);
                filled += 1;
            }
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(chunks: &mut Chunks, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut into = vec![0u8; step];
        while !chunks.is_empty() {
            let mut buf = ReadBuf::new(&mut into);
            let n = chunks.copy_to(&mut buf);
            assert!(n > 0);
            got.extend_from_slice(buf.filled());
        }
        got
    }

    #[test]
    fn bytes_come_out_in_order_however_they_were_added_and_read() {
        let mut chunks = Chunks::default();
        let mut want = Vec::new();
        for (i, size) in [1, 4095, 4096, 10_000, 3, 65_524, 7]
            .into_iter()
            .enumerate()
        {
            let body: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            want.extend_from_slice(&body);
            if i % 2 == 0 {
                chunks.push(body);
            } else {
                chunks.extend_from_slice(&body);
            }
        }
        assert_eq!(chunks.len(), want.len());
        assert_eq!(drain(&mut chunks, 1000), want);
        assert_eq!(chunks.len(), 0);
    }

    #[test]
    fn slices_cover_what_is_left_after_a_partial_consume() {
        let mut chunks = Chunks::default();
        chunks.push(vec![1u8; 5000]);
        chunks.push(vec![2u8; 6000]);
        chunks.consume(4999);
        {
            let mut slices = [IoSlice::new(&[]); 4];
            assert_eq!(chunks.slices(&mut slices), 2);
            assert_eq!((slices[0].len(), slices[1].len()), (1, 6000));
        }
        chunks.consume(2);
        assert_eq!(chunks.len(), 5999);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(chunks.slices(&mut slices), 1);
    }

    #[test]
    fn one_byte_bodies_share_a_buffer() {
        let mut chunks = Chunks::default();
        for _ in 0..SMALL_BODY {
            chunks.push(vec![0u8]);
        }
        assert_eq!(chunks.bufs.len(), 1);
        assert_eq!(chunks.len(), SMALL_BODY);
    }
}
