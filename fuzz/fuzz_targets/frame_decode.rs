//! Frame decoding (header, limits, zlib) plus message decoding in both
//! dialects, on arbitrary bytes: errors are fine, panics and unbounded
//! allocation are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpyc::channel::{ChannelConfig, FrameReader};
use rpyc::wire::message::{decode_message, Dialect};
use rpyc::wire::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut cfg = ChannelConfig::default();
        cfg.max_frame = 1 << 20;
        cfg.max_inflated = 1 << 20;
        let mut reader = FrameReader::new(data, cfg);
        for _ in 0..64 {
            match reader.read_frame().await {
                Ok(Some(payload)) => {
                    let _ = Dialect::detect(&payload);
                    let _ = decode_message(Dialect::V6, &payload, &DecodeLimits::default());
                    let _ = decode_message(Dialect::V5, &payload, &DecodeLimits::default());
                }
                _ => break,
            }
        }
    });
});
