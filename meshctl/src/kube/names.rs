//! The name formats meshctl checks before it sends anything: Kubernetes object names and
//! label parts, and DNS names a server or certificate may carry. Predicates only: each caller
//! words its own error, naming the flag.

/// A DNS-1123 subdomain (most object names, an annotation key's prefix): 1 to 253
/// characters (`pki::validate_dns_subdomain`).
pub fn is_dns_subdomain(s: &str) -> bool {
    pki::validate_dns_subdomain(s).is_ok()
}

/// A label value, or the name part of a label or annotation key: 1 to 63 letters, digits,
/// `-`, `_` and `.`, a letter or digit at both ends.
pub fn is_qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || "-_.".contains(c))
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// A DNS name as a server name may be: labels of 1 to 63 letters, digits, '-' and '_' (not at
/// a label's ends), 253 characters in all, an optional final dot.
pub fn is_dns_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("Bad SA") && !is_dns_subdomain("") && !is_dns_subdomain("a/b"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        // No 63-character limit per part, unlike a label: a 100-character account name is valid.
        assert!(is_dns_subdomain(&"a".repeat(100)));
        assert!(is_qualified_name_part("My_value.1"));
        assert!(!is_qualified_name_part("-x") && !is_qualified_name_part(&"a".repeat(64)));
        assert!(is_dns_name("kubernetes.default.svc.") && is_dns_name("a_b.example"));
        assert!(!is_dns_name("a b") && !is_dns_name("a..b") && !is_dns_name("-a"));
    }
}
