//! Property tests for Istio SNI names and host patterns.

use gateway::sni_name::{HostPattern, SniName, parse};
use proptest::prelude::*;

const LABEL: &str = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";

fn host() -> impl Strategy<Value = String> {
    prop::collection::vec(LABEL, 1..6)
        .prop_map(|labels| labels.join("."))
        .prop_filter("at most 253 bytes", |h| h.len() <= 253)
}

fn sni_name() -> impl Strategy<Value = SniName> {
    (
        1u16..,
        prop_oneof![Just(String::new()), LABEL.prop_map(String::from)],
        host(),
    )
        .prop_map(|(port, subset, host)| SniName { port, subset, host })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_names_round_trip(name in sni_name()) {
        let text = name.to_string();
        prop_assert_eq!(parse(&text), Ok(name.clone()));
        prop_assert_eq!(parse(&text.to_ascii_uppercase()), Ok(name));
    }

    #[test]
    fn garbage_names_never_panic(s in ".{0,300}") {
        if let Ok(name) = parse(&s) {
            prop_assert_eq!(name.to_string(), s.to_ascii_lowercase());
        }
    }

    #[test]
    fn near_miss_names_never_panic(
        s in "(outbound|inbound|OUTBOUND|x)?(_\\.)?[0-9+-]{0,7}(_\\.)?[a-zA-Z0-9_.-]{0,12}(_\\.)?[ -~]{0,80}"
    ) {
        if let Ok(name) = parse(&s) {
            prop_assert_eq!(parse(&name.to_string()), Ok(name.clone()));
            prop_assert_eq!(name.to_string(), s.to_ascii_lowercase());
        }
    }

    #[test]
    fn suffix_patterns_match_their_subdomains(head in host(), suffix in host()) {
        let pattern = HostPattern::parse(&format!("*.{suffix}")).unwrap();
        let sub = format!("{head}.{suffix}");
        prop_assert!(pattern.matches(&sub));
        prop_assert!(pattern.matches(&sub.to_ascii_uppercase()));
        prop_assert!(!pattern.matches(&suffix));
        prop_assert!(HostPattern::parse(&head).unwrap().matches(&head));
    }

    #[test]
    fn garbage_patterns_never_panic(p in "[*.a-zA-Z0-9/_-]{0,40}|.{0,40}", host in ".{0,60}") {
        if let Ok(pattern) = HostPattern::parse(&p) {
            prop_assert_eq!(HostPattern::parse(&pattern.to_string()), Ok(pattern.clone()));
            pattern.matches(&host);
        }
    }
}
