//! Deterministic payloads and the exchanges that check every byte against them.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{CHUNK, WAIT, within};

/// A deterministic pseudo-random byte stream (xorshift64), byte-exact whatever the chunking.
pub struct Payload {
    state: u64,
    cur: [u8; 8],
    used: usize,
}

impl Payload {
    /// The stream of seed `seed`; two payloads with the same seed yield the same bytes.
    pub fn new(seed: u64) -> Self {
        let state = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Self {
            state,
            cur: [0; 8],
            used: 8,
        }
    }
    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.used == 8 {
                self.cur = self.next_word().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.cur[self.used..self.used + n]);
            self.used += n;
            i += n;
        }
    }
    /// The first `len` bytes of seed `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Self::new(seed).fill(&mut v);
        v
    }
    /// SHA-256 of the first `len` bytes of seed `seed`.
    pub fn digest(seed: u64, len: u64) -> [u8; 32] {
        let mut g = Self::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            g.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        hash.finalize().into()
    }
}

/// Writes the first `len` bytes of seed `seed` in chunks.
pub async fn write_payload<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut g = Payload::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        g.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads to end of stream; returns the byte count and SHA-256.
pub async fn read_digest<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((count, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        count += n as u64;
    }
}

/// Sends `data` and half-closes while reading everything back (for an echo service).
pub async fn echo_exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut out = Vec::with_capacity(data.len());
        r.read_to_end(&mut out).await.map(|_| out)
    };
    let (written, read) = within("echo exchange", WAIT, async { tokio::join!(write, read) }).await;
    written.expect("echo exchange: write");
    read.expect("echo exchange: read")
}

/// Sends `len` bytes of seed `seed` to a sink service, half-closes and returns the sink's
/// answer (count, SHA-256); checks the stream then ends cleanly.
pub async fn sink_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seed: u64,
    len: u64,
    limit: Duration,
) -> (u64, [u8; 32]) {
    within("sink exchange", limit, async {
        write_payload(&mut stream, seed, len)
            .await
            .expect("sink: write payload");
        stream.shutdown().await.expect("sink: shutdown");
        let mut reply = [0u8; 40];
        stream
            .read_exact(&mut reply)
            .await
            .expect("sink: read reply");
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .await
            .expect("sink: clean end after reply");
        assert!(
            rest.is_empty(),
            "sink sent {} unexpected bytes after its reply",
            rest.len()
        );
        let count = u64::from_be_bytes(reply[..8].try_into().unwrap());
        (count, reply[8..].try_into().unwrap())
    })
    .await
}

/// Sends a request to a reply-after-EOF service asking for `len` bytes of seed `seed`
/// (plus `padding` extra request bytes), half-closes, and reads the reply in full.
/// Returns (whether the service saw the exact request, reply byte count, reply SHA-256).
pub async fn request_reply<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seed: u64,
    len: u64,
    padding: usize,
    limit: Duration,
) -> (bool, u64, [u8; 32]) {
    within("request/reply exchange", limit, async {
        let mut request = seed.to_be_bytes().to_vec();
        request.extend_from_slice(&len.to_be_bytes());
        request.extend(Payload::bytes(seed ^ 0x5555, padding));
        stream.write_all(&request).await.expect("request: write");
        stream.shutdown().await.expect("request: shutdown");
        let mut seen = [0u8; 32];
        stream
            .read_exact(&mut seen)
            .await
            .expect("reply: read request digest");
        let request_ok = seen[..] == Sha256::digest(&request)[..];
        let (count, digest) = read_digest(&mut stream)
            .await
            .expect("reply: read body to a clean end");
        (request_ok, count, digest)
    })
    .await
}

/// Reads until the stream fails; panics if it ends cleanly (`Ok(0)`) or if no error comes
/// within `limit`. Returns the error.
///
/// The deadline is checked *before* the read is polled again (a biased `select!`), so a read
/// that is never woken is reported as a hang: a plain `tokio::time::timeout` would poll the
/// read once more when the timer fires and could hide a missing wake-up.
pub async fn expect_read_error<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> std::io::Error {
    let mut buf = vec![0u8; CHUNK];
    let reads = async {
        // Bounded: the services used here send a few bytes at most.
        for _ in 0..10_000 {
            match r.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
        panic!("stream kept delivering data instead of failing");
    };
    let deadline = tokio::time::sleep(limit);
    let outcome = tokio::select! {
        biased;
        () = deadline => None,
        r = reads => Some(r),
    };
    match outcome {
        Some(Err(e)) => e,
        Some(Ok(())) => panic!("an abrupt failure read as a clean end of stream (Ok(0))"),
        None => {
            panic!("read neither failed nor ended within {limit:?} (the reader was never woken)")
        }
    }
}
