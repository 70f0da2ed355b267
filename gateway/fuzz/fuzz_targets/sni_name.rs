//! Any string: SNI name and host pattern parsing must not panic, and what
//! parses formats back to the same (lower-cased) text.
#![no_main]

use gateway::sni_name::{HostPattern, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(name) = parse(s) {
        assert_eq!(name.to_string(), s.to_ascii_lowercase());
    }
    if let Ok(pattern) = HostPattern::parse(s) {
        assert_eq!(
            HostPattern::parse(&pattern.to_string()),
            Ok(pattern.clone())
        );
        pattern.matches(s);
    }
});
