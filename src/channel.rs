//! Layer 1: frames on a byte stream (mirrors `rpyc/core/channel.py`).
//!
//! A frame is `!LB` (u32 payload length, u8 "compressed" flag), the payload,
//! then one `\n` that line-buffered transports use as a flush hint. Python
//! trusts the length and inflates without bound; we bound both, and a peer
//! claiming more than the limit is cut off at once — which is also how an
//! HTTP request or a TLS ClientHello sent to a plain listener is recognised
//! (their first four bytes read as a length of hundreds of megabytes).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the `!LB` header.
pub const HEADER_LEN: usize = 5;
/// Python's `Channel.COMPRESSION_THRESHOLD`.
pub const PYTHON_COMPRESSION_THRESHOLD: usize = 3000;

/// Framing limits and the compression choice for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Largest payload accepted on the wire. Default: 64 MiB — room for a
    /// 16 MiB `bytes` argument with plenty to spare, small enough that a
    /// hostile length claim cannot make us reserve gigabytes.
    pub max_frame: usize,
    /// Largest payload after zlib inflation. Default: 64 MiB (a zlib bomb
    /// stops here).
    pub max_inflated: usize,
    /// Compress payloads larger than this many bytes, or never when `None`.
    /// Default: `Some(3000)`, what Python does. zlib level 1 runs at roughly
    /// 100–300 MB/s, so on loopback or a LAN compression costs more than it
    /// saves; see [`ChannelConfig::compress_up_to`].
    pub compression_threshold: Option<usize>,
    /// Payloads larger than this are sent uncompressed even above the
    /// threshold. Default: 256 KiB: small and medium messages are compressed
    /// as Python does; bulk transfers go out at memory speed.
    pub compress_up_to: usize,
    /// zlib level (0–9). Default: 1, Python's `COMPRESSION_LEVEL`.
    pub compression_level: u32,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_frame: 64 << 20,
            max_inflated: 64 << 20,
            compression_threshold: Some(PYTHON_COMPRESSION_THRESHOLD),
            compress_up_to: 256 << 10,
            compression_level: 1,
        }
    }
}

/// What went wrong reading or writing frames.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed by peer in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame announced.
        expected: usize,
    },
    /// A frame longer than [`ChannelConfig::max_frame`].
    #[error(
        "frame of {len} bytes exceeds the {limit}-byte limit (is the peer speaking RPyC? \
         raise max_frame if it is)"
    )]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Configured limit.
        limit: usize,
    },
    /// A compressed frame that inflates beyond [`ChannelConfig::max_inflated`].
    #[error("compressed frame inflates beyond the {limit}-byte limit")]
    InflatedTooLarge {
        /// Configured limit.
        limit: usize,
    },
    /// A compressed frame that is not valid zlib data.
    #[error("compressed frame is not valid zlib data: {0}")]
    BadCompression(String),
    /// The compressed flag is neither 0 nor 1.
    #[error("frame header has compression flag {0} (expected 0 or 1)")]
    BadFlag(u8),
}

/// Builds a complete frame around a payload that was written after
/// [`HEADER_LEN`] reserved bytes at the start of `buf`.
///
/// The caller encodes the message directly into `buf[HEADER_LEN..]`, so the
/// common uncompressed path never copies the payload.
pub fn finish_frame(mut buf: Vec<u8>, cfg: &ChannelConfig) -> Vec<u8> {
    let payload_len = buf.len().saturating_sub(HEADER_LEN);
    let compress = match cfg.compression_threshold {
        Some(t) => payload_len > t && payload_len <= cfg.compress_up_to,
        None => false,
    };
    if compress && compressible(&buf[HEADER_LEN..], cfg.compression_level) {
        if let Some(packed) = deflate(&buf[HEADER_LEN..], cfg.compression_level).filter(|p| p.len() < payload_len) {
            let mut out = Vec::with_capacity(packed.len() + HEADER_LEN + 1);
            out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
            out.push(1);
            out.extend_from_slice(&packed);
            out.push(b'\n');
            return out;
        }
    }
    let len = (payload_len as u32).to_be_bytes();
    if buf.len() < HEADER_LEN {
        buf.resize(HEADER_LEN, 0);
    }
    buf[..4].copy_from_slice(&len);
    buf[4] = 0;
    buf.push(b'\n');
    buf
}

/// [`finish_frame`] for a payload in pieces (the first starting with
/// [`HEADER_LEN`] reserved bytes): returns the frame as pieces to write in
/// order. Large bodies are never copied unless the frame is to be
/// compressed (at most [`ChannelConfig::compress_up_to`] bytes).
pub fn finish_frame_pieces(mut pieces: Vec<Vec<u8>>, cfg: &ChannelConfig) -> Vec<Vec<u8>> {
    if pieces.len() <= 1 {
        let first = pieces.pop().unwrap_or_default();
        return vec![finish_frame(first, cfg)];
    }
    let total: usize = pieces.iter().map(Vec::len).sum();
    let payload_len = total.saturating_sub(HEADER_LEN);
    let compress = cfg.compression_threshold.is_some_and(|t| payload_len > t && payload_len <= cfg.compress_up_to);
    if compress || pieces.first().is_none_or(|p| p.len() < HEADER_LEN) {
        let mut flat = Vec::with_capacity(total + 1);
        for p in &pieces {
            flat.extend_from_slice(p);
        }
        return vec![finish_frame(flat, cfg)];
    }
    if let Some(first) = pieces.first_mut() {
        first[..4].copy_from_slice(&(payload_len as u32).to_be_bytes());
        first[4] = 0;
    }
    if let Some(last) = pieces.last_mut() {
        last.push(b'\n');
    }
    pieces
}

/// Frames a payload (copying it); see [`finish_frame`] for the zero-copy path.
pub fn encode_frame(payload: &[u8], cfg: &ChannelConfig) -> Vec<u8> {
    let mut buf = Vec::with_capacity(payload.len() + HEADER_LEN + 1);
    buf.extend_from_slice(&[0; HEADER_LEN]);
    buf.extend_from_slice(payload);
    finish_frame(buf, cfg)
}

/// Whether compressing `data` looks worth it: payloads over 16 KiB are
/// judged by compressing their first 4 KiB, so that random, encrypted or
/// already compressed data (which zlib cannot shrink) is not run through
/// zlib in full for nothing. The receiver accepts either form.
fn compressible(data: &[u8], level: u32) -> bool {
    const PROBE: usize = 4 << 10;
    if data.len() <= 4 * PROBE {
        return true;
    }
    match deflate(data.get(..PROBE).unwrap_or(data), level) {
        Some(p) => p.len() * 10 < PROBE * 9,
        None => false,
    }
}

fn deflate(data: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut c = Compress::new(Compression::new(level.min(9)), true);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        match c.compress_vec(&data[consumed..], &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Some(out),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Inflates `data`, refusing to produce more than `limit` bytes.
pub fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, ChannelError> {
    let mut d = Decompress::new(true);
    let mut out: Vec<u8> = Vec::with_capacity((data.len() * 4).min(limit).max(64));
    loop {
        let consumed = d.total_in() as usize;
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(ChannelError::InflatedTooLarge { limit });
            }
            let grow = out.capacity().min(limit - out.len()).max(64);
            out.reserve_exact(grow);
        }
        let before_out = d.total_out();
        let status = d
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::None)
            .map_err(|e| ChannelError::BadCompression(e.to_string()))?;
        if out.len() > limit {
            return Err(ChannelError::InflatedTooLarge { limit });
        }
        match status {
            Status::StreamEnd => return Ok(out),
            Status::Ok | Status::BufError => {
                let progressed = d.total_in() as usize != consumed || d.total_out() != before_out;
                if !progressed && out.len() < out.capacity() {
                    return Err(ChannelError::BadCompression("zlib stream is truncated".into()));
                }
            }
        }
    }
}

/// True if `buffered` (bytes read ahead) starts with a complete frame.
pub fn frame_complete(buffered: &[u8]) -> bool {
    match buffered.get(..4) {
        Some(h) => {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            buffered.len() >= HEADER_LEN.saturating_add(len).saturating_add(1)
        }
        None => false,
    }
}

/// Reads frames from a byte stream, enforcing the configured limits.
pub struct FrameReader<R> {
    inner: R,
    cfg: ChannelConfig,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a (preferably buffered) reader.
    pub fn new(inner: R, cfg: ChannelConfig) -> Self {
        FrameReader { inner, cfg }
    }

    /// The wrapped reader (e.g. to look at what a `BufReader` holds).
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next frame's payload, inflated. `Ok(None)` means the peer
    /// closed the stream cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.inner.read(&mut header[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(ChannelError::Truncated { got, expected: HEADER_LEN });
            }
            got += n;
            // Judge the length as soon as it is known, before waiting for more.
            if got >= 4 {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                if len > self.cfg.max_frame {
                    return Err(ChannelError::FrameTooLarge { len: len as u64, limit: self.cfg.max_frame });
                }
            }
        }
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let flag = header[4];
        if flag > 1 {
            return Err(ChannelError::BadFlag(flag));
        }
        // Grow with the bytes that actually arrive: a lying length costs the
        // liar nothing but the 64 KiB first chunk.
        // Doubling, and exact at the end: a 16 MiB frame is read with one
        // large allocation of its own size and no over-allocation.
        let want = len + 1;
        let mut buf: Vec<u8> = Vec::with_capacity(want.min(64 << 10));
        while buf.len() < want {
            if buf.len() == buf.capacity() {
                buf.reserve_exact(buf.len().min(want - buf.len()));
            }
            let room = (buf.capacity() - buf.len()).min(want - buf.len());
            let n = (&mut self.inner).take(room as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(ChannelError::Truncated { got: buf.len() + HEADER_LEN, expected: want + HEADER_LEN });
            }
        }
        // The trailing byte is a flush hint; Python ignores its value and so do we.
        buf.truncate(len);
        if flag == 1 {
            return inflate(&buf, self.cfg.max_inflated).map(Some);
        }
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_and_without_compression() {
        let cfg = ChannelConfig::default();
        let small = b"hello".to_vec();
        let big = vec![7u8; 10_000];
        let mut wire = encode_frame(&small, &cfg);
        wire.extend(encode_frame(&big, &cfg));
        assert_eq!(wire[4], 0);
        let mut r = FrameReader::new(&wire[..], cfg);
        assert_eq!(r.read_frame().await.ok().flatten(), Some(small));
        assert_eq!(r.read_frame().await.ok().flatten(), Some(big));
        assert!(matches!(r.read_frame().await, Ok(None)));
    }

    #[tokio::test]
    async fn hostile_frames_fail_cleanly() {
        let cfg = ChannelConfig::default();
        let mut r = FrameReader::new(&b"GET / HTTP/1.1\r\n"[..], cfg.clone());
        assert!(matches!(r.read_frame().await, Err(ChannelError::FrameTooLarge { .. })));
        let mut r = FrameReader::new(&[0u8, 0, 0, 9, 0, 1, 2][..], cfg.clone());
        assert!(matches!(r.read_frame().await, Err(ChannelError::Truncated { .. })));
        // A zlib bomb: 100 MB of zeros compresses to ~100 KB.
        let bomb = deflate(&vec![0u8; 100 << 20], 9).unwrap_or_default();
        let mut frame = (bomb.len() as u32).to_be_bytes().to_vec();
        frame.push(1);
        frame.extend(&bomb);
        frame.push(b'\n');
        let mut r = FrameReader::new(&frame[..], cfg);
        assert!(matches!(r.read_frame().await, Err(ChannelError::InflatedTooLarge { .. })));
    }

    #[test]
    fn inflate_rejects_garbage() {
        assert!(matches!(inflate(b"not zlib", 1000), Err(ChannelError::BadCompression(_))));
    }
}
