//! Property tests: the detector never panics, its answers are final, and any
//! record split of a real hello parses to the same answer.

#[path = "fixtures/hello.rs"]
mod hello;

use std::sync::LazyLock;

use gateway::client_hello::{Detect, detect};
use proptest::prelude::*;

static TLS12: LazyLock<Vec<u8>> = LazyLock::new(hello::tls12);
static TLS13: LazyLock<Vec<u8>> = LazyLock::new(hello::tls13);

fn real_hello() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        Just(TLS12.as_slice()),
        Just(TLS13.as_slice()),
        Just(&*Box::leak(
            hello::fixture("openssl_multi_record.bin").into_boxed_slice()
        )),
    ]
}

/// Checks what holds for any input: no panic, `NeedMore` only below the cap,
/// `hello_len` within the input.
fn check_any(buf: &[u8], max_len: usize) -> Detect {
    let d = detect(buf, max_len);
    match &d {
        Detect::NeedMore => assert!(buf.len() < max_len),
        Detect::Found(h) => assert!(h.hello_len <= buf.len() && h.hello_len <= max_len),
        Detect::NotTls(_) | Detect::Malformed(_) => {}
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..4096), max in 0usize..70_000) {
        check_any(&buf, max);
    }

    #[test]
    fn tls_looking_bytes_never_panic(
        minor in 0u8..=4,
        len in any::<u16>(),
        typ in prop_oneof![Just(1u8), any::<u8>()],
        rest in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut buf = vec![0x16, 3, minor];
        buf.extend(len.to_be_bytes());
        buf.push(typ);
        buf.extend(rest);
        check_any(&buf, 64 * 1024);
    }

    /// Flipped bytes in a real hello never panic, and answers are final.
    #[test]
    fn mutated_hello_answers_are_final(
        hello in real_hello(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = hello.to_vec();
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let n = cut.index(buf.len() + 1);
        let early = check_any(&buf[..n], 64 * 1024);
        let full = check_any(&buf, 64 * 1024);
        match early {
            Detect::NeedMore => {}
            Detect::NotTls(_) => prop_assert!(matches!(full, Detect::NotTls(_))),
            Detect::Malformed(_) => prop_assert!(matches!(full, Detect::Malformed(_))),
            found => prop_assert_eq!(found, full),
        }
    }

    #[test]
    fn any_record_split_parses_the_same(
        hello in real_hello(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        segment in any::<prop::sample::Index>(),
    ) {
        let Detect::Found(want) = detect(hello, 64 * 1024) else { panic!("fixture") };
        let msg = hello::handshake_bytes(hello);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| 1 + i.index(msg.len() - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let framed = hello::reframe(&msg, &cuts);
        let Detect::Found(got) = check_any(&framed, 64 * 1024) else {
            panic!("split at {cuts:?} not found")
        };
        prop_assert_eq!((&got.sni, &got.alpn), (&want.sni, &want.alpn));
        prop_assert_eq!(got.hello_len, framed.len());
        // Any TCP segment boundary short of the end still needs more.
        let n = segment.index(framed.len());
        prop_assert_eq!(detect(&framed[..n], 64 * 1024), Detect::NeedMore);
    }
}
