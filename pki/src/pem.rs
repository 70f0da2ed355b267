//! PEM and DER helpers: the certificates of a PEM text, parsed X.509.
//!
//! A certificate file (`root-cert.pem`, `cert-chain.pem`, `ca-cert.pem`) is public: istiod
//! copies `root-cert.pem` byte for byte into the `istio-ca-root-cert` ConfigMap of every
//! namespace (istio/istio `security/pkg/pki/util/keycertbundle.go` keeps the raw bytes). So
//! any block other than `CERTIFICATE` (a private key appended by `cat key >> cert`) is
//! refused, and so is a block the parser cannot delimit (a `-----BEGIN` line without its
//! `-----END`), which would otherwise be skipped as text and published with the rest. Text
//! between blocks (comments, `openssl x509 -text` output) is accepted, as Go's
//! `encoding/pem` skips it too. Errors name the block's type and line, never its contents.
//!
//! What is *published* from such a file is its canonical PEM only ([`canonical_certs`],
//! [`canonical_key`]): the local file may carry notes, the `cacerts` Secret (and from it
//! every namespace's `istio-ca-root-cert`) carries the certificates and nothing else.

use x509_parser::certificate::X509Certificate;

/// One delimited block: its label and its text from the `-----BEGIN` line through `-----END`.
struct Block<'a> {
    label: &'a str,
    /// 1-based line of `-----BEGIN`.
    line: usize,
    text: &'a str,
    /// Byte offset of `text` in the whole text.
    start: usize,
}

/// Every block of a PEM text, by its `-----BEGIN`/`-----END` lines. A marker that is not a
/// line of its own, a block without its `-----END`, or an `-----END` for another label is an
/// error: such text must not pass as a comment.
fn blocks(text: &str) -> std::result::Result<Vec<Block<'_>>, String> {
    if text.starts_with('\u{feff}') {
        return Err(
            "starts with a UTF-8 byte order mark (BOM, bytes EF BB BF), which PEM \
                    readers such as Go's encoding/pem (istiod) do not skip: save the file \
                    without it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE"
                .into(),
        );
    }
    let mut out = Vec::new();
    // (label, first line, byte offset of the BEGIN line) of the open block.
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let n = i + 1;
        let start = offset;
        offset += raw.len();
        let line = raw.trim();
        let begin = line.contains("-----BEGIN");
        let end = line.contains("-----END");
        match open {
            None if begin => match marker(line, "-----BEGIN ") {
                Some(label) => open = Some((label, n, start)),
                None => return Err(format!("line {n}: malformed -----BEGIN line")),
            },
            None if end => {
                return Err(format!("line {n}: -----END line without a -----BEGIN line"));
            }
            None => {}
            Some((label, first, _)) if begin => {
                return Err(format!(
                    "{} starting on line {first} has no -----END line (another block begins on \
                     line {n})",
                    describe(label)
                ));
            }
            Some((label, first, from)) if end => {
                if marker(line, "-----END ") != Some(label) {
                    return Err(format!(
                        "{} starting on line {first} ends on line {n} with a different \
                         -----END line",
                        describe(label)
                    ));
                }
                out.push(Block {
                    label,
                    line: first,
                    text: &text[from..offset],
                    start: from,
                });
                open = None;
            }
            Some(_) => {}
        }
    }
    match open {
        Some((label, first, _)) => Err(format!(
            "{} starting on line {first} has no -----END line",
            describe(label)
        )),
        None => Ok(out),
    }
}

/// The label of a `-----BEGIN LABEL-----` (or `-----END LABEL-----`) line.
fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?
        .strip_suffix("-----")
        .filter(|l| !l.is_empty() && !l.contains("-----"))
}

/// "a PRIVATE KEY block": the label only when it looks like one (a mangled line could
/// hold key material, which is never printed).
fn describe(label: &str) -> String {
    let plain = label.len() <= 40
        && label
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ');
    if plain {
        format!("a {label} block")
    } else {
        "a PEM block".to_string()
    }
}

/// Checks that every block of a PEM text is delimited (each `-----BEGIN` has its `-----END`,
/// no byte order mark): the errors name blocks and lines, never quote them. Returns the
/// blocks' labels.
pub(crate) fn block_labels(text: &str) -> std::result::Result<Vec<String>, String> {
    Ok(blocks(text)?.iter().map(|b| b.label.to_string()).collect())
}

/// The `CERTIFICATE` blocks of a PEM text, as DER, and the other blocks (description, line).
type Split = (Vec<Vec<u8>>, Vec<(String, usize)>);

fn split(text: &str) -> std::result::Result<Split, String> {
    let mut ders = Vec::new();
    let mut other = Vec::new();
    for b in blocks(text)? {
        if b.label != "CERTIFICATE" {
            other.push((describe(b.label), b.line));
            continue;
        }
        let n = ders.len() + 1;
        // A certificate block is public: the parser's error may quote it.
        let der = ::pem::parse(b.text)
            .map_err(|e| format!("certificate #{n} (line {}): not valid PEM: {e}", b.line))?
            .into_contents();
        parse_x509(&der).map_err(|e| format!("certificate #{n} (line {}): {e}", b.line))?;
        ders.push(der);
    }
    if ders.is_empty() && other.is_empty() {
        return Err("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok((ders, other))
}

/// All blocks of a certificate file, as DER: each a `CERTIFICATE` holding a valid X.509
/// certificate, at least one. Any other block is refused (see the module docs); errors say
/// what is wrong without quoting the text.
pub(crate) fn cert_ders(text: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let (ders, other) = split(text)?;
    if let Some((what, line)) = other.first() {
        let key = what.contains("PRIVATE KEY");
        return Err(format!(
            "holds {what} (line {line}): a certificate file may hold only CERTIFICATE blocks, \
             as its contents are public (istiod publishes root-cert.pem in every namespace and \
             sends cert-chain.pem to every workload); remove that block{}",
            if key {
                ", and treat the key as exposed if this file was shared"
            } else {
                ""
            }
        ));
    }
    Ok(ders)
}

/// A PEM file as published: its blocks re-encoded, nothing else.
pub struct CanonicalPem {
    /// The blocks kept, each `-----BEGIN`, its DER in 64-column base64, `-----END`, LF line
    /// endings, one after the other with nothing between.
    pub pem: String,
    /// The file held more than formatting besides those blocks: text outside them (comments,
    /// openssl's `Bag Attributes`, subject lines), headers inside one, or (a key file) other
    /// blocks. Whitespace and line endings do not count.
    pub dropped: bool,
}

impl std::fmt::Debug for CanonicalPem {
    // For a key file `pem` is the private key: never printed, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalPem")
            .field("pem", &format_args!("<{} bytes>", self.pem.len()))
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// The canonical PEM of a certificate file: each `CERTIFICATE` block re-encoded. Refuses
/// what [`cert_ders`] refuses, with its errors.
pub(crate) fn canonical_certs(text: &str) -> std::result::Result<CanonicalPem, String> {
    let ders = cert_ders(text)?;
    let blocks = blocks(text)?;
    let pem = ders.iter().map(|d| crate::issue::der_to_pem(d)).collect();
    Ok(CanonicalPem {
        pem,
        dropped: text_outside(text, &blocks) || blocks.iter().any(has_headers),
    })
}

/// The canonical PEM of a private key file: the key block [`crate::load_private_key_pem`]
/// uses (the first `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`), re-encoded under
/// its label. Istio reads only a key file's first block (istio/istio
/// `security/pkg/pki/util/crypto.go`, `ParsePemEncodedKey`), so an `EC PARAMETERS` block
/// before the key, which openssl writes, would stop istiod; it is dropped like any text.
/// Errors name blocks and lines, never quote the file.
pub(crate) fn canonical_key(text: &str) -> std::result::Result<CanonicalPem, String> {
    const KEYS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];
    let blocks = blocks(text)?;
    let Some(key) = blocks.iter().find(|b| KEYS.contains(&b.label)) else {
        return Err(format!(
            "no private key block found (expected one of {})",
            KEYS.join(", ")
        ));
    };
    // pem's errors may quote the line they stop at: never shown for a key.
    let der = ::pem::parse(key.text)
        .map_err(|_| {
            format!(
                "{} (line {}) is not valid PEM",
                describe(key.label),
                key.line
            )
        })?
        .into_contents();
    let pem = encode(key.label, der);
    Ok(CanonicalPem {
        pem,
        dropped: blocks.len() > 1 || text_outside(text, &blocks) || has_headers(key),
    })
}

/// One PEM block: `-----BEGIN label-----`, 64-column base64, `-----END label-----`, LF.
pub(crate) fn encode(label: &str, der: Vec<u8>) -> String {
    ::pem::encode_config(
        &::pem::Pem::new(label, der),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// Whether `text` holds anything but whitespace outside `blocks`.
fn text_outside(text: &str, blocks: &[Block<'_>]) -> bool {
    let mut at = 0;
    let mut outside = Vec::new();
    for b in blocks {
        outside.push(&text[at..b.start]);
        at = b.start + b.text.len();
    }
    outside.push(&text[at..]);
    outside.iter().any(|t| !t.trim().is_empty())
}

/// Whether a block carries RFC 1421 headers (`Proc-Type: ...`) before its base64.
fn has_headers(b: &Block<'_>) -> bool {
    ::pem::parse(b.text).is_ok_and(|p| p.headers().iter().next().is_some())
}

/// The certificates of a PEM text that may hold other blocks too (for display only), and
/// the descriptions of those others.
pub(crate) fn cert_ders_and_others(
    text: &str,
) -> std::result::Result<(Vec<Vec<u8>>, Vec<String>), String> {
    let (ders, other) = split(text)?;
    if ders.is_empty() {
        return Err(format!(
            "no CERTIFICATE block found (saw: {})",
            other
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok((ders, other.into_iter().map(|(w, _)| w).collect()))
}

pub(crate) fn first_cert_der(text: &str) -> std::result::Result<Vec<u8>, String> {
    Ok(cert_ders(text)?.swap_remove(0))
}

pub(crate) fn parse_x509(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the DER certificate".into()),
        Err(e) => Err(format!("not a valid X.509 certificate: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> String {
        crate::RootCa::generate(&crate::RootOptions::default())
            .unwrap()
            .cert_pem()
            .to_string()
    }

    const KEY_BODY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRET";

    fn key() -> String {
        format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n")
    }

    #[test]
    fn certificates_with_comments_pass() {
        let c = cert();
        let text = format!(
            "Subject: root\n{c}# a comment\r\n{}",
            c.replace('\n', "\r\n")
        );
        assert_eq!(cert_ders(&text).unwrap().len(), 2);
    }

    /// Every other block, or a block that cannot be delimited, is refused; the error names
    /// the block's type and never quotes its body.
    #[test]
    fn other_and_undelimited_blocks_are_refused_without_quoting_them() {
        let c = cert();
        let key = key();
        let cases = [
            (format!("{c}{key}"), "a PRIVATE KEY block"),
            (format!("{key}{c}"), "a PRIVATE KEY block"),
            (
                format!("{c}{}", key.replace("PRIVATE KEY", "EC PRIVATE KEY")),
                "a EC PRIVATE KEY block",
            ),
            (
                format!("{c}{}", key.replace("PRIVATE KEY", "EC PARAMETERS")),
                "EC PARAMETERS",
            ),
            // Without its END line the parser would skip it as text.
            (
                format!("{c}-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n"),
                "no -----END line",
            ),
            (
                format!("-----BEGIN CERTIFICATE-----\n{KEY_BODY}\n{key}"),
                "no -----END line",
            ),
            (
                format!("{c}-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END CERTIFICATE-----\n"),
                "different -----END",
            ),
            (
                format!("{c}-----BEGIN {KEY_BODY}\n-----END PRIVATE KEY-----\n"),
                "malformed -----BEGIN",
            ),
            (
                format!(
                    "{c}-----BEGIN SECRET{KEY_BODY}-----\n{KEY_BODY}\n-----END SECRET{KEY_BODY}-----\n"
                ),
                "a PEM block",
            ),
            (
                format!("{c}{KEY_BODY}\n-----END PRIVATE KEY-----\n"),
                "without a -----BEGIN",
            ),
        ];
        for (text, want) in cases {
            let e = cert_ders(&text).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        let e = cert_ders(&format!("{c}{key}")).unwrap_err();
        assert!(
            e.contains("line ") && e.contains("treat the key as exposed"),
            "{e}"
        );
    }

    /// Published text: the blocks re-encoded and nothing else; generated files are already
    /// canonical, so what meshctl wrote is published byte for byte.
    #[test]
    fn canonical_pem_keeps_the_blocks_only() {
        let c = cert();
        let same = crate::canonical_cert_pem(&c).unwrap();
        assert_eq!((same.pem.as_str(), same.dropped), (c.as_str(), false));
        let two = format!("{c}{c}");
        let crlf = crate::canonical_cert_pem(&two.replace('\n', "\r\n")).unwrap();
        assert_eq!((crlf.pem.as_str(), crlf.dropped), (two.as_str(), false));
        let noted = format!(
            "Bag Attributes\n    friendlyName: NOTE\nsubject=/CN=NOTE\n{c}\n# NOTE\n{c}NOTE"
        );
        let out = crate::canonical_cert_pem(&noted).unwrap();
        assert_eq!((out.pem.as_str(), out.dropped), (two.as_str(), true));
        // 76-column base64 (as some tools write) is re-wrapped at 64.
        let body: String = c.lines().filter(|l| !l.starts_with("-----")).collect();
        let wide = body
            .as_bytes()
            .chunks(76)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let wide = format!("-----BEGIN CERTIFICATE-----\n{wide}\n-----END CERTIFICATE-----\n");
        assert_eq!(crate::canonical_cert_pem(&wide).unwrap().pem, c);
        assert!(crate::canonical_cert_pem(&format!("{c}{}", key())).is_err());
    }

    #[test]
    fn canonical_key_is_the_key_block_only_and_never_quoted() {
        let kp = crate::KeyType::EcdsaP256.generate().unwrap();
        let k = kp.serialize_pem();
        let same = crate::canonical_key_pem(&k).unwrap();
        assert_eq!((same.pem.as_str(), same.dropped), (k.as_str(), false));
        let params =
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let noted = format!(
            "Bag Attributes\n    localKeyID: 01\nKey Attributes: NOTE\n{params}{k}# NOTE\n"
        );
        let out = crate::canonical_key_pem(&noted).unwrap();
        assert_eq!((out.pem.as_str(), out.dropped), (k.as_str(), true));
        for bad in [
            format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}*\n-----END PRIVATE KEY-----\n"),
            format!("{params}# SECRET\n"),
            format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n"),
        ] {
            let e = crate::canonical_key_pem(&bad).unwrap_err();
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn display_skips_other_blocks_and_names_them() {
        let (ders, other) = cert_ders_and_others(&format!("{}{}", cert(), key())).unwrap();
        assert_eq!(
            (ders.len(), other),
            (1, vec!["a PRIVATE KEY block".to_string()])
        );
        let e = cert_ders_and_others(&key()).unwrap_err();
        assert!(
            e.contains("no CERTIFICATE block found (saw: a PRIVATE KEY block)"),
            "{e}"
        );
        assert!(
            cert_ders("just text")
                .unwrap_err()
                .contains("no PEM certificate")
        );
    }

    #[test]
    fn a_byte_order_mark_is_named() {
        let e = cert_ders(&format!("\u{feff}{}", cert())).unwrap_err();
        assert!(e.contains("byte order mark"), "{e}");
        let e = crate::load_private_key_pem(&format!("\u{feff}{}", key()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("byte order mark"), "{e}");
    }
}
