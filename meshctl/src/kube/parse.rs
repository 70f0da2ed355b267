//! Reading and parsing kubeconfigs without ever printing their text.
//!
//! A kubeconfig holds tokens and keys. kube's YAML parser (serde-saphyr) renders its errors
//! with the source lines around the fault (`18 |     token: …`), so its `Display` must never
//! reach the user: [`parse_error`] keeps only the location (line, column) and the parser's
//! short reason, with quoted values and any word taken from the text removed. Every
//! kubeconfig meshctl parses (local files, `KUBECONFIG`, remote secrets stored in a cluster)
//! goes through [`parse_kubeconfig`] or [`read_kubeconfig`].

use std::path::Path;

use anyhow::{Result, anyhow};
use kube::config::{Kubeconfig, KubeconfigError};

/// Parses kubeconfig text (all its documents, merged as kube does). The error is safe to
/// print: see [`parse_error`].
pub fn parse_kubeconfig(text: &str) -> std::result::Result<Kubeconfig, String> {
    Kubeconfig::from_yaml(text).map_err(|e| parse_error(&e, text))
}

/// Reads the kubeconfig file at `path`, bounded (`pki::read_input`: a regular file of at
/// most 4 MiB), as kube's `Kubeconfig::read_from` does: UTF-8 or UTF-16 with a BOM, all
/// documents merged, relative file paths made relative to the file's directory.
pub fn read_kubeconfig(path: &Path) -> Result<Kubeconfig> {
    let bytes = pki::files::read_input(path)
        .map_err(|e| anyhow!("reading kubeconfig {}: {e}", path.display()))?;
    let text = decode(&bytes).ok_or_else(|| {
        anyhow!(
            "reading kubeconfig {}: it is not UTF-8 (or UTF-16 with a byte-order mark) text",
            path.display()
        )
    })?;
    let mut config = parse_kubeconfig(&text)
        .map_err(|e| anyhow!("reading kubeconfig {}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        absolute_paths(&mut config, dir);
    }
    referenced_files_bounded(&mut config)
        .map_err(|e| anyhow!("reading kubeconfig {}: {e}", path.display()))?;
    Ok(config)
}

/// The files a kubeconfig names (CA, client certificate and key, token file) are read by kube
/// without a bound: one that exists must be a regular file within the input cap, so that a
/// link to `/dev/zero` is refused here instead of filling the memory. A missing one is left
/// to kube, which fails only if its context is used.
fn referenced_files_bounded(config: &mut Kubeconfig) -> std::result::Result<(), String> {
    for file in named_files(config).flatten() {
        let Ok(meta) = std::fs::metadata(&*file) else {
            continue;
        };
        if !meta.is_file() || meta.len() > pki::files::MAX_INPUT_BYTES {
            return Err(format!(
                "it names {file}, which is not a regular file of at most {} MiB",
                pki::files::MAX_INPUT_BYTES >> 20
            ));
        }
    }
    Ok(())
}

/// The file paths a kubeconfig names: each cluster's CA, each user's client certificate, key
/// and token file.
fn named_files(config: &mut Kubeconfig) -> impl Iterator<Item = &mut Option<String>> {
    let clusters = config
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
        .map(|c| &mut c.certificate_authority);
    let users = config
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
        .flat_map(|a| {
            [
                &mut a.client_certificate,
                &mut a.client_key,
                &mut a.token_file,
            ]
        });
    clusters.chain(users)
}

/// Parses YAML that may hold a secret (a stored kubeconfig, a Secret) into a generic value.
/// The error is only serde_yaml's short reason and location, with quoted values and words of
/// the text removed, as in [`parse_error`]. For `mesh::credentials`' stored kubeconfigs.
pub fn parse_secret_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> std::result::Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| {
        let mut reason = redact(e.to_string().lines().next().unwrap_or_default(), text);
        if let Some(loc) = e.location()
            && !reason.contains("line ")
        {
            reason = format!("{reason} at line {} column {}", loc.line(), loc.column());
        }
        format!("the YAML does not parse: {reason}")
    })
}

/// The message of a kubeconfig error with no text of the kubeconfig in it.
fn parse_error(e: &KubeconfigError, text: &str) -> String {
    match e {
        KubeconfigError::Parse(inner) => {
            let plain = inner.without_snippet().to_string();
            let first = plain.lines().next().unwrap_or_default().trim();
            let first = first.strip_prefix("error:").unwrap_or(first).trim();
            let mut reason = redact(first, text);
            if let Some(loc) = inner.location()
                && !reason.contains("line ")
            {
                reason = format!("line {} column {}: {reason}", loc.line(), loc.column());
            }
            format!("failed to parse kubeconfig YAML: {reason}")
        }
        other => redact(&other.to_string(), text),
    }
}

/// `msg` without quoted values (`"…"`, `` `…` ``, `'…'` longer than one character) and
/// without any word of 8 or more characters that appears in `text`. A field name serde
/// reports as missing or duplicate is kept (``missing field `cluster` ``): serde takes it from
/// the schema, not from the text.
fn redact(msg: &str, text: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '"' | '`' | '\'')
            && let Some(len) = msg[i + 1..].find(c)
            && (c != '\'' || msg[i + 1..i + 1 + len].chars().count() > 1)
            && !(c == '`' && schema_field(&msg[..i], &msg[i + 1..i + 1 + len]))
        {
            out.push(c);
            out.push('…');
            out.push(c);
            while chars.peek().is_some_and(|(j, _)| *j <= i + 1 + len) {
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out.split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| matches!(c, ',' | ':' | ';' | '.' | '(' | ')'));
            if core.chars().count() >= 8 && text.contains(core) {
                w.replace(core, "…")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `` `name` `` after `before` is a field name from serde's derived schema: "missing
/// field" and "duplicate field" name only the struct's own fields ("unknown field" and
/// "unknown variant" quote the text, and stay redacted).
fn schema_field(before: &str, name: &str) -> bool {
    (before.ends_with("missing field ") || before.ends_with("duplicate field "))
        && (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn decode(bytes: &[u8]) -> Option<String> {
    let utf16 = |rest: &[u8], be: bool| {
        let units: Vec<u16> = rest
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                if be {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            })
            .collect();
        String::from_utf16(&units).ok()
    };
    match bytes {
        [0xFF, 0xFE, rest @ ..] => utf16(rest, false),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, true),
        [0xEF, 0xBB, 0xBF, rest @ ..] => String::from_utf8(rest.to_vec()).ok(),
        _ => String::from_utf8(bytes.to_vec()).ok(),
    }
}

/// kube's `read_from` remapping: relative CA, client certificate/key and token files, and
/// exec commands containing a path separator, are relative to the kubeconfig's directory.
fn absolute_paths(config: &mut Kubeconfig, dir: &Path) {
    let abs = |p: &mut Option<String>| {
        if let Some(s) = p.as_deref()
            && Path::new(s).is_relative()
            && let Some(joined) = dir.join(s).to_str()
        {
            *p = Some(joined.to_string());
        }
    };
    named_files(config).for_each(abs);
    for named in &mut config.auth_infos {
        if let Some(exec) = named.auth_info.as_mut().and_then(|a| a.exec.as_mut())
            && exec
                .command
                .as_deref()
                .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
        {
            abs(&mut exec.command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "tok-SENTINEL-0123456789abcdef";

    #[test]
    fn a_named_file_that_is_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kc");
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
                    https://10.0.0.1:6443\n    certificate-authority: /dev/zero\n";
        std::fs::write(&path, text).unwrap();
        let e = read_kubeconfig(&path).unwrap_err().to_string();
        assert!(e.contains("/dev/zero, which is not a regular file"), "{e}");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        std::fs::write(&path, text.replace("/dev/zero", "ca.pem")).unwrap();
        read_kubeconfig(&path).unwrap();
        std::fs::write(&path, text.replace("/dev/zero", "missing.pem")).unwrap();
        read_kubeconfig(&path).unwrap();
    }

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://10.0.0.1:6443\ncontexts:\n- name: c\n  context:\n    cluster: c\n    \
             user: c\ncurrent-context: c\nusers:\n- name: c\n{user}"
        )
    }

    #[test]
    fn parse_errors_carry_the_location_and_no_text() {
        for (user, want) in [
            // Syntax error right after the token line (the audit's case).
            (
                format!("  user:\n    token: {SENTINEL}\n    bogus: [\n"),
                "line 17",
            ),
            (format!("  user:\n    token: [{SENTINEL}]\n"), "line 16"),
            (format!("  user: {SENTINEL}\n    token: x\n"), "line 15"),
            // Wrong types: serde's messages quote the value.
            (format!("  user:\n    token: {{a: {SENTINEL}}}\n"), "line"),
            (format!("  user: \"{SENTINEL}\"\n"), "line"),
            (format!("  user:\n    exec: \"{SENTINEL}\"\n"), "line"),
        ] {
            let text = kubeconfig(&user);
            let e = parse_kubeconfig(&text).map(|_| ()).unwrap_err();
            assert!(!e.contains("SENTINEL"), "{e}");
            assert!(!e.contains(" | "), "snippet: {e}");
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn generic_yaml_errors_carry_no_text() {
        for text in [
            format!("users:\n- user:\n    token: {SENTINEL}\n    bogus: [\n"),
            format!("a: {SENTINEL}\n  b: c\n"),
            format!("[{SENTINEL}: 1\n"),
        ] {
            let e = parse_secret_yaml::<serde_yaml::Value>(&text).unwrap_err();
            assert!(!e.contains("SENTINEL"), "{e}");
            assert!(e.contains("line"), "{e}");
        }
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
                    https://10.0.0.1:6443\ncontexts:\n- name: c\n  context: {}\n";
        let e = parse_kubeconfig(text).map(|_| ()).unwrap_err();
        assert!(e.contains("missing field `cluster`"), "{e}");
        // A field name taken from the text is not kept.
        assert_eq!(
            redact(&format!("unknown field `{SENTINEL}`, expected `x`"), ""),
            "unknown field `…`, expected `…`"
        );
        assert_eq!(
            redact("duplicate field `token` at line 3", ""),
            "duplicate field `token` at line 3"
        );
        assert_eq!(redact("missing field `a b`", ""), "missing field `…`");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("unclosed bracket '[' here", ""),
            "unclosed bracket '[' here"
        );
        assert_eq!(
            redact("invalid type: string \"abc\", expected `x y`, 'zz'", ""),
            "invalid type: string \"…\", expected `…`, '…'"
        );
        assert_eq!(
            redact("unknown thing supersecretword, here", "a: supersecretword"),
            "unknown thing …, here"
        );
    }

    #[test]
    fn files_are_read_bounded_and_paths_made_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("kc");
        std::fs::write(
            &p,
            kubeconfig("  user:\n    token-file: tok\n")
                .replace("server:", "certificate-authority: ca.pem\n    server:"),
        )
        .unwrap();
        let k = read_kubeconfig(&p).unwrap();
        let ca = k.clusters[0]
            .cluster
            .as_ref()
            .unwrap()
            .certificate_authority
            .clone();
        assert_eq!(ca.unwrap(), tmp.path().join("ca.pem").to_str().unwrap());
        #[cfg(unix)]
        {
            let e = read_kubeconfig(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("character device"), "{e}");
        }
    }
}
