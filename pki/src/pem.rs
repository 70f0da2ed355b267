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

use x509_parser::certificate::X509Certificate;

/// One delimited block: its label and its text from the `-----BEGIN` line through `-----END`.
struct Block<'a> {
    label: &'a str,
    /// 1-based line of `-----BEGIN`.
    line: usize,
    text: &'a str,
}

/// Every block of a PEM text, by its `-----BEGIN`/`-----END` lines. A marker that is not a
/// line of its own, a block without its `-----END`, or an `-----END` for another label is an
/// error: such text must not pass as a comment.
fn blocks(text: &str) -> std::result::Result<Vec<Block<'_>>, String> {
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
}
