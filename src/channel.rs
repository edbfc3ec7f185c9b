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
    /// stops here). What the payload may then decode to is bounded
    /// separately ([`DecodeLimits::max_decoded_bytes`](crate::wire::DecodeLimits::max_decoded_bytes));
    /// raise both together.
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
    /// The peer speaks another protocol (its first bytes are a TLS record,
    /// an SSH or HTTP banner, the challenge–response greeting…).
    #[error("the peer does not speak plain RPyC: {0}")]
    ForeignProtocol(&'static str),
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

/// What a frame header that is not one says about the peer: the first
/// bytes of a TLS record, an SSH or HTTP banner, or the challenge–response
/// greeting read as a length would be hundreds of megabytes; naming the
/// protocol tells the user what to change instead of "raise max_frame".
fn foreign_protocol(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x16, 0x03, ..] => Some(
            "it sent a TLS handshake record: it speaks TLS, so use TLS on both ends \
             (tls://host:port, with the CA and a client certificate)",
        ),
        [0x15, 0x03, ..] => Some(
            "it sent a TLS alert: it speaks TLS, so use TLS on both ends \
             (tls://host:port, with the CA and a client certificate)",
        ),
        [b'S', b'S', b'H', b'-'] => {
            Some("it sent an SSH banner: it is an SSH server; tunnel through it with ssh://user@host/target:port")
        }
        [b'H', b'T', b'T', b'P'] => Some("it sent HTTP; check the port"),
        [b'R', b'P', b'Y', b'C'] => Some(
            "it sent the challenge-response greeting: the server wants an identity and a shared secret \
             before RPyC",
        ),
        _ => None,
    }
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
    if compress && compressible(&buf[HEADER_LEN..]) {
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
    let compress = cfg.compression_threshold.is_some_and(|t| payload_len > t && payload_len <= cfg.compress_up_to)
        // Judge the big body on its own before copying everything into one
        // buffer: random or packed data then goes out without a copy.
        && pieces.iter().max_by_key(|p| p.len()).is_none_or(|body| compressible(body));
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
/// judged by their first 4 KiB, so that random, encrypted or already
/// compressed data (which zlib cannot shrink) is not run through zlib in
/// full for nothing. The judgement is a byte histogram (can Huffman coding
/// save 10%?) and a count of repeated 4-byte sequences (can LZ77?), a few
/// microseconds where trial-compressing the sample cost far more than the
/// rest of a 64 KiB call. The receiver accepts either form.
fn compressible(data: &[u8]) -> bool {
    const PROBE: usize = 4 << 10;
    match data.get(..PROBE) {
        Some(sample) if data.len() > 4 * PROBE => low_entropy(sample) || repetitive(sample),
        _ => true,
    }
}

/// Order-0 entropy below 7.2 bits per byte.
fn low_entropy(sample: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    bits < 7.2
}

/// More than one position in ten repeats a 4-byte sequence seen before.
fn repetitive(sample: &[u8]) -> bool {
    let mut last = vec![usize::MAX; 1 << 12];
    let mut matches = 0usize;
    for (i, w) in sample.windows(4).enumerate() {
        let word = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let slot = (word.wrapping_mul(0x9E37_79B1) >> 20) as usize;
        if let Some(prev) = last.get_mut(slot) {
            if sample.get(*prev..prev.saturating_add(4)) == Some(w) {
                matches += 1;
            }
            *prev = i;
        }
    }
    matches * 10 > sample.len()
}

thread_local! {
    /// One compressor per thread, reset between frames. A fresh one costs
    /// a ~300 KiB allocation that is zeroed (and page-faulted) every time,
    /// which used to dominate sending a 64 KiB frame.
    static DEFLATE: std::cell::RefCell<Option<(u32, Compress)>> = const { std::cell::RefCell::new(None) };
}

fn deflate(data: &[u8], level: u32) -> Option<Vec<u8>> {
    let level = level.min(9);
    DEFLATE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let c = match slot.as_mut() {
                Some((l, c)) if *l == level => {
                    c.reset();
                    c
                }
                _ => &mut slot.insert((level, Compress::new(Compression::new(level), true))).1,
            };
            deflate_with(c, data)
        }
        // Not reentrant in practice; a fresh compressor keeps it correct anyway.
        Err(_) => deflate_with(&mut Compress::new(Compression::new(level), true), data),
    })
}

fn deflate_with(c: &mut Compress, data: &[u8]) -> Option<Vec<u8>> {
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
        let Some((len, flag)) = self.read_header().await? else {
            return Ok(None);
        };
        let mut buf = self.read_body(Vec::new(), len).await?;
        // The trailing byte is a flush hint; Python ignores its value and so do we.
        buf.truncate(len);
        if flag == 1 {
            return inflate(&buf, self.cfg.max_inflated).map(Some);
        }
        Ok(Some(buf))
    }

    /// Reads the next frame with the same checks as [`read_frame`](Self::read_frame),
    /// keeping its exact bytes (header and trailing byte included) for
    /// relaying; the second value is the inflated payload if the frame was
    /// compressed.
    pub async fn read_raw_frame(&mut self) -> Result<Option<(Vec<u8>, Option<Vec<u8>>)>, ChannelError> {
        let Some((len, flag)) = self.read_header().await? else {
            return Ok(None);
        };
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head.push(flag);
        let raw = self.read_body(head, len).await?;
        let inflated = match flag {
            1 => Some(inflate(raw.get(HEADER_LEN..HEADER_LEN + len).unwrap_or_default(), self.cfg.max_inflated)?),
            _ => None,
        };
        Ok(Some((raw, inflated)))
    }

    /// Reads and checks a header: `(payload length, flag)`, or `None` at a
    /// clean end of stream.
    async fn read_header(&mut self) -> Result<Option<(usize, u8)>, ChannelError> {
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
                if let Some(what) = foreign_protocol(&header[..4]) {
                    return Err(ChannelError::ForeignProtocol(what));
                }
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
        Ok(Some((len, flag)))
    }

    /// Appends the `len`-byte payload and its trailing byte to `buf`.
    ///
    /// Grows with the bytes that actually arrive: a lying length costs the
    /// liar nothing but the 64 KiB first chunk. Doubling, and exact at the
    /// end: a 16 MiB frame is read with one large allocation of its own
    /// size and no over-allocation.
    async fn read_body(&mut self, mut buf: Vec<u8>, len: usize) -> Result<Vec<u8>, ChannelError> {
        let start = buf.len();
        let end = start + len + 1;
        buf.reserve_exact((end - start).min(64 << 10));
        while buf.len() < end {
            if buf.len() == buf.capacity() {
                buf.reserve_exact(buf.len().min(end - buf.len()));
            }
            let room = (buf.capacity() - buf.len()).min(end - buf.len());
            let n = (&mut self.inner).take(room as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(ChannelError::Truncated {
                    got: buf.len() - start + HEADER_LEN,
                    expected: len + 1 + HEADER_LEN,
                });
            }
        }
        Ok(buf)
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

    fn noise(n: usize, mut state: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn the_compression_probe_tells_what_zlib_can_shrink() {
        let shrinks = |d: &[u8]| deflate(d, 1).unwrap().len() * 10 < d.len() * 9;
        let random = noise(64 << 10, 7);
        let text: Vec<u8> = (0..20_000u32).flat_map(|i| format!("key{i}=value{};", i * 7).into_bytes()).collect();
        let block = noise(1024, 11).repeat(64);
        let small_alphabet: Vec<u8> = noise(64 << 10, 13).iter().map(|b| b % 16).collect();
        for (name, data) in
            [("random", &random), ("text", &text), ("repeated block", &block), ("4-bit", &small_alphabet)]
        {
            assert_eq!(compressible(data), shrinks(data), "{name}");
        }
        assert!(!compressible(&random));
        assert!(compressible(&random[..16 << 10]), "small payloads are always tried");
    }

    #[tokio::test]
    async fn large_bodies_in_pieces_are_compressed_only_when_it_pays() {
        let cfg = ChannelConfig::default();
        let noise = noise(64 << 10, 0x9e37_79b9_7f4a_7c15);
        let text: Vec<u8> = (0..8000u32).flat_map(|i| format!("row {i};").into_bytes()).collect();
        for (body, compressed) in [(noise, false), (text, true)] {
            let mut head = vec![0u8; HEADER_LEN];
            head.extend_from_slice(b"msg");
            let pieces = finish_frame_pieces(vec![head, body.clone(), b"tail".to_vec()], &cfg);
            // Incompressible: three pieces, the body untouched; text: one compressed frame.
            assert_eq!(pieces.len(), if compressed { 1 } else { 3 });
            let wire = pieces.concat();
            assert_eq!(wire[4], u8::from(compressed));
            let mut expected = b"msg".to_vec();
            expected.extend(&body);
            expected.extend(b"tail");
            let mut r = FrameReader::new(&wire[..], cfg.clone());
            assert_eq!(r.read_frame().await.ok().flatten(), Some(expected));
        }
    }

    #[tokio::test]
    async fn hostile_frames_fail_cleanly() {
        let cfg = ChannelConfig::default();
        let mut r = FrameReader::new(&b"GET / HTTP/1.1\r\n"[..], cfg.clone());
        assert!(matches!(r.read_frame().await, Err(ChannelError::FrameTooLarge { .. })));
        // Other protocols are named, not reported as huge frames.
        for (bytes, says) in [
            (&[0x15u8, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28][..], "TLS alert"),
            (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "SSH server"),
            (&b"HTTP/1.1 400 Bad Request\r\n"[..], "HTTP"),
            (&b"RPYC-CHAL-2\n0123456789abcdef"[..], "challenge-response"),
        ] {
            let mut r = FrameReader::new(bytes, ChannelConfig::default());
            let e = r.read_frame().await.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(says), "{e}");
        }
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
    fn the_reused_compressor_gives_what_a_fresh_one_gives() {
        let text: Vec<u8> = (0..100_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let other: Vec<u8> = (0..50_000u32).flat_map(|i| format!("{} ", i % 97).into_bytes()).collect();
        for level in [1, 6, 1] {
            for data in [&text, &other, &text] {
                let reused = deflate(data, level).unwrap();
                let fresh = deflate_with(&mut Compress::new(Compression::new(level), true), data).unwrap();
                assert_eq!(reused, fresh, "level {level}");
                assert_eq!(inflate(&reused, usize::MAX).unwrap(), *data);
            }
        }
    }

    #[test]
    fn inflate_rejects_garbage() {
        assert!(matches!(inflate(b"not zlib", 1000), Err(ChannelError::BadCompression(_))));
    }
}
