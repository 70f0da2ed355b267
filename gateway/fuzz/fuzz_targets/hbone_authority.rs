//! Any bytes as an HBONE CONNECT `:authority`: parsing must not panic, and what parses
//! prints back to an equal authority with a non-zero port.
#![no_main]

use gateway::hbone::authority::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse(data) {
        assert_ne!(a.port, 0);
        assert_eq!(parse(a.to_string().as_bytes()), Ok(a.clone()));
    }
});
