//! PROXY protocol headers (v1 text, v2 binary) on arbitrary bytes: errors
//! are fine; panics, reading past the header and unbounded reads are not.
//! The first byte picks a start (`PROXY `, the v2 signature, or none) so
//! the fuzzer spends its time past the signatures.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpyc::transport::proxy::{read_header, V1_MAX, V2_MAX_BODY};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    let Some((choice, body)) = data.split_first() else {
        return;
    };
    let start: &[u8] = match choice % 3 {
        0 => b"PROXY ",
        1 => V2_SIGNATURE,
        _ => b"",
    };
    let input = [start, body].concat();
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut rest = input.as_slice();
        let ok = read_header(&mut rest).await.is_ok();
        let read = input.len() - rest.len();
        assert!(read <= (16 + V2_MAX_BODY).max(V1_MAX), "read {read} bytes");
        if ok {
            // A header ends at its CRLF (v1) or its announced length (v2).
            let head = &input[..read];
            let v1_end = head.starts_with(b"PROXY") && head.ends_with(b"\r\n");
            let v2_end = head.starts_with(V2_SIGNATURE)
                && head.len() >= 16
                && head.len() == 16 + usize::from(u16::from_be_bytes([head[14], head[15]]));
            assert!(v1_end || v2_end, "{head:?}");
        }
    });
});
