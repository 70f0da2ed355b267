//! Any bytes: `detect` must not panic, and its answer must be final.
#![no_main]

use gateway::client_hello::{Detect, detect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the cap, so small caps get exercised too.
    let (max, buf) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])) + 1, rest),
        _ => (64 * 1024, data),
    };
    let full = detect(buf, max);
    match &full {
        Detect::NeedMore => assert!(buf.len() < max),
        Detect::Found(h) => assert!(h.hello_len <= buf.len() && h.hello_len <= max),
        Detect::NotTls(_) | Detect::Malformed(_) => {}
    }
    // Answers are final: Found stays the same; NotTls stays NotTls, though
    // more bytes may give a more specific reason; Malformed stays Malformed.
    match detect(&buf[..buf.len() / 2], max) {
        Detect::NeedMore => {}
        Detect::NotTls(_) => assert!(matches!(full, Detect::NotTls(_))),
        Detect::Malformed(_) => assert!(matches!(full, Detect::Malformed(_))),
        found => assert_eq!(found, full),
    }
});
