//! ClientHello detection on real hellos (rustls, openssl captures) and on
//! inputs that are not TLS.

#[path = "fixtures/hello.rs"]
mod hello;

use gateway::client_hello::{ClientHello, Detect, MAX_RECORDS, NotTls, detect};
use hello::{ALPN, FIXTURES, MAX, SNI};

fn found(buf: &[u8]) -> ClientHello {
    match detect(buf, MAX) {
        Detect::Found(h) => h,
        other => panic!("expected Found, got {other:?}"),
    }
}

/// Every strict prefix needs more; the whole hello and any longer input give
/// the same answer.
fn assert_segmentation(hello: &[u8]) -> ClientHello {
    for n in 0..hello.len() {
        assert_eq!(
            detect(&hello[..n], MAX),
            Detect::NeedMore,
            "prefix of {n} bytes"
        );
    }
    let want = found(hello);
    assert_eq!(want.hello_len, hello.len());
    let mut longer = hello.to_vec();
    // The client's next records: a ChangeCipherSpec and application data.
    for next in [&[0x14, 3, 3, 0, 1, 1][..], &[0x17, 3, 3, 0, 2, 0xaa, 0xbb]] {
        longer.extend_from_slice(next);
        for n in hello.len()..=longer.len() {
            assert_eq!(found(&longer[..n]), want);
        }
    }
    want
}

fn strings(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn rustls_tls12_and_tls13_hellos() {
    for hello in [hello::tls12(), hello::tls13()] {
        let h = assert_segmentation(&hello);
        assert_eq!(h.sni.as_deref(), Some(SNI));
        assert_eq!(h.alpn, strings(&ALPN));
    }
}

#[test]
fn rustls_hello_without_sni_or_alpn() {
    let hello = hello::rustls_hello(&[&rustls::version::TLS13], None, &[]);
    let h = assert_segmentation(&hello);
    assert_eq!((h.sni, h.alpn), (None, vec![]));
}

#[test]
fn openssl_fixtures() {
    for (file, sni, alpn) in FIXTURES {
        let hello = hello::fixture(file);
        let h = assert_segmentation(&hello);
        assert_eq!(h.sni.as_deref(), sni, "{file}");
        if !alpn.is_empty() {
            assert_eq!(h.alpn, strings(alpn), "{file}");
        }
    }
}

#[test]
fn openssl_multi_record_fixture_spans_records() {
    let hello = hello::fixture("openssl_multi_record.bin");
    let msg = hello::handshake_bytes(&hello);
    assert!(hello.len() - msg.len() >= 15, "expected 3+ records");
    let h = found(&hello);
    assert_eq!(h.alpn.len(), 42);
    assert_eq!(h.alpn[..2], strings(&ALPN));
    assert_eq!(h.alpn[41], b"proto-40-padding");
}

#[test]
fn hello_reframed_into_records() {
    let len = hello::tls13().len();
    assert!(len > MAX_RECORDS + 5, "a hello that can hit the cap: {len}");
    for hello in [hello::tls12(), hello::tls13()] {
        let want = found(&hello);
        let msg = hello::handshake_bytes(&hello);
        let n = msg.len();
        // Cuts inside the handshake header, the session id, the SNI, at the end.
        let splits: [&[usize]; 5] = [&[1], &[2, 3], &[40, 41, 200], &[n / 2], &[n - 1]];
        for cuts in splits {
            let framed = hello::reframe(&msg, cuts);
            let h = assert_segmentation(&framed);
            assert_eq!((h.sni, h.alpn), (want.sni.clone(), want.alpn.clone()));
            assert_eq!(h.hello_len, framed.len());
        }
        if n <= MAX_RECORDS {
            continue; // The TLS 1.2 hello is too short to span that many records.
        }
        let most: Vec<usize> = (1..MAX_RECORDS).collect();
        assert_eq!(found(&hello::reframe(&msg, &most)).sni, want.sni);
        let too_many: Vec<usize> = (1..=MAX_RECORDS).collect();
        let framed = hello::reframe(&msg, &too_many);
        let tail = framed.len() - (n - MAX_RECORDS) - 5;
        assert_eq!(
            detect(&framed[..tail], MAX),
            Detect::NotTls(NotTls::TooManyRecords)
        );
    }
}

#[test]
fn non_tls_inputs() {
    let inputs: [(&[u8], NotTls); 6] = [
        (
            b"GET / HTTP/1.1\r\nHost: catalog\r\n\r\n",
            NotTls::NotHandshakeRecord,
        ),
        (b"PRI * HTTP/2.0\r\n", NotTls::NotHandshakeRecord),
        // SSLv2-compatible ClientHello.
        (
            &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15],
            NotTls::NotHandshakeRecord,
        ),
        (&[0; 64], NotTls::NotHandshakeRecord),
        // TLS alert and application data records.
        (&[0x15, 3, 3, 0, 2, 2, 40], NotTls::NotHandshakeRecord),
        (&[0x16, 0x7f, 0x01], NotTls::BadVersion),
    ];
    for (buf, want) in inputs {
        assert_eq!(detect(buf, MAX), Detect::NotTls(want), "{buf:?}");
        // Decided on the first bytes.
        assert_eq!(detect(&buf[..3], MAX), Detect::NotTls(want), "{buf:?}");
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..1000 {
        let buf: Vec<u8> = (0..32)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        if buf[0] != 0x16 {
            assert!(matches!(detect(&buf, MAX), Detect::NotTls(_)));
        }
    }
}

#[test]
fn server_hello_is_not_a_client_hello() {
    let mut hello = hello::tls13();
    hello[5] = 2;
    assert_eq!(
        detect(&hello[..6], MAX),
        Detect::NotTls(NotTls::NotClientHello)
    );
}

#[test]
fn oversized_lengths() {
    // Record longer than 2^14 + 2048.
    let rec = [0x16, 3, 1, 0x48, 0x01, 1];
    assert_eq!(detect(&rec, MAX), Detect::NotTls(NotTls::BadLength));
    // Handshake message announcing more than max_len.
    let big = [0x16, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x01];
    assert_eq!(detect(&big, MAX), Detect::NotTls(NotTls::TooLarge));
    // A valid hello that cannot fit a smaller buffer, at any prefix length that
    // reaches the cap.
    let hello = hello::tls13();
    let cap = hello.len() - 1;
    assert_eq!(detect(&hello, cap), Detect::NotTls(NotTls::TooLarge));
    assert_eq!(detect(&hello[..cap], cap), Detect::NotTls(NotTls::TooLarge));
    assert_eq!(found(&hello).hello_len, hello.len());
    // Re-framing adds 5 bytes per record: the same hello no longer fits exactly.
    let msg = hello::handshake_bytes(&hello);
    let framed = hello::reframe(&msg, &[100]);
    assert_eq!(
        detect(&framed, hello.len()),
        Detect::NotTls(NotTls::TooLarge)
    );
    assert!(matches!(detect(&framed, framed.len()), Detect::Found(_)));
}

#[test]
fn truncated_length_fields_are_malformed() {
    // A handshake length 10 bytes short cuts the message inside its extensions.
    let mut msg = hello::handshake_bytes(&hello::tls12());
    msg.truncate(msg.len() - 10);
    let body = u32::try_from(msg.len() - 4).unwrap().to_be_bytes();
    msg[1..4].copy_from_slice(&body[1..]);
    let framed = hello::reframe(&msg, &[]);
    assert!(matches!(detect(&framed, MAX), Detect::Malformed(_)));
}
