//! Brine decoding of arbitrary bytes: must never panic, and whatever decodes
//! must survive a re-encode unchanged. (Decoding accepts a few non-canonical
//! forms — a long-form length of 0, "+5" as int text — so the bytes may
//! differ; the canonical encoding must then be stable.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpyc::wire::brine;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = brine::decode_default(data) {
        let canonical = brine::encode(&v);
        // Compare bytes, not values: NaN != NaN.
        match brine::decode_default(&canonical) {
            Ok(back) => assert_eq!(brine::encode(&back), canonical, "canonical encoding is not stable"),
            Err(e) => panic!("canonical encoding of {v:?} does not decode: {e}"),
        }
    }
});
