//! The chain from `ca-cert.pem` to a root of `root-cert.pem`, link by link: `cert-chain.pem`
//! is `ca-cert.pem`, any intermediate CAs above it (an offline intermediate, say), then the
//! root. Each link must be signed by the next certificate, which must be a valid CA with
//! keyCertSign and a pathlen that allows the CAs below it; the top must be (or be signed by)
//! one of the roots, which may be several during a root rotation.

use x509_parser::certificate::X509Certificate;

use super::Ctx;
use crate::files::{CA_CERT, CERT_CHAIN, ROOT_CERT};
use crate::pem::{cert_ders, parse_x509};

/// Issued by itself and signed by its own key.
pub(crate) fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok()
}

/// Which root of `roots` signs `top` (or is `top`), or why none does.
fn anchor(top_der: &[u8], roots: &[Vec<u8>]) -> Result<usize, String> {
    if let Some(i) = roots.iter().position(|r| r == top_der) {
        return Ok(i);
    }
    let top = parse_x509(top_der)?;
    let parsed: Vec<X509Certificate<'_>> =
        roots.iter().filter_map(|r| parse_x509(r).ok()).collect();
    let same_name: Vec<usize> = (0..parsed.len())
        .filter(|&i| parsed[i].subject().as_raw() == top.issuer().as_raw())
        .collect();
    if same_name.is_empty() {
        let subjects: Vec<String> = parsed
            .iter()
            .map(|r| format!("\"{}\"", r.subject()))
            .collect();
        return Err(format!(
            "its issuer \"{}\" is not the root's subject {}",
            top.issuer(),
            subjects.join(" or ")
        ));
    }
    let mut last = String::new();
    for i in same_name {
        match top.verify_signature(Some(parsed[i].public_key())) {
            Ok(()) => return Ok(i),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "the signature does not verify with the root's key (signed by a different root with the \
         same name): {last}"
    ))
}

/// Which root of `roots` signs `top` (or is `top`): [`anchor`] without its reasons.
pub(crate) fn anchor_of(top: &[u8], roots: &[Vec<u8>]) -> Option<usize> {
    anchor(top, roots).ok()
}

/// The path from ca-cert.pem upwards, without the root: `cert-chain.pem` minus its root when it
/// is well-formed, else `ca-cert.pem` alone.
fn path<'c>(ca: &'c [u8], chain: Option<&'c [Vec<u8>]>, roots: &[Vec<u8>]) -> Vec<&'c [u8]> {
    match chain {
        Some(chain) if chain.first().map(Vec::as_slice) == Some(ca) => {
            let end = if chain.len() > 1 && roots.contains(&chain[chain.len() - 1]) {
                chain.len() - 1
            } else {
                chain.len()
            };
            chain[..end].iter().map(Vec::as_slice).collect()
        }
        _ => vec![ca],
    }
}

/// The root (DER) that `ca-cert.pem` chains to through `cert-chain.pem`, when the bundle's
/// texts parse and the chain reaches one of `root-cert.pem`'s roots. During a rotation this
/// says which root the cluster signs with.
pub fn signing_root(ca_cert: &str, cert_chain: &str, root_cert: &str) -> Option<Vec<u8>> {
    let ca = cert_ders(ca_cert).ok()?.swap_remove(0);
    let chain = cert_ders(cert_chain).ok();
    let roots = cert_ders(root_cert).ok()?;
    let path = path(&ca, chain.as_deref(), &roots);
    for pair in path.windows(2) {
        let (child, parent) = (parse_x509(pair[0]).ok()?, parse_x509(pair[1]).ok()?);
        child.verify_signature(Some(parent.public_key())).ok()?;
    }
    let top = path.last()?;
    anchor(top, &roots).ok().map(|i| roots[i].clone())
}

impl Ctx<'_> {
    /// `cert-chain.pem`'s shape, each link of the path, and the anchor in `root-cert.pem`.
    pub(super) fn chain(&mut self, ca: &[u8], chain: Option<&[Vec<u8>]>, roots: &[Vec<u8>]) {
        let shape_ok = chain.is_none_or(|c| self.chain_shape(c, ca, roots));
        let path = path(ca, chain.filter(|_| shape_ok), roots);
        let parsed: Vec<X509Certificate<'_>> =
            path.iter().filter_map(|d| parse_x509(d).ok()).collect();
        for k in 1..parsed.len() {
            self.link(&parsed[k - 1], &parsed[k], k);
        }
        let Some(top) = parsed.last() else { return };
        let top_n = parsed.len();
        match anchor(path[top_n - 1], roots) {
            Ok(i) => {
                let Ok(root) = parse_x509(&roots[i]) else {
                    return;
                };
                if !path_len_allows(&root, top_n) {
                    self.error(
                        ROOT_CERT,
                        format!(
                            "the root \"{}\" has pathlen {}, but {top_n} CA(s) sit below it \
                             (the chain needs pathlen:{top_n} or none)",
                            root.subject(),
                            path_len(&root).unwrap_or_default()
                        ),
                    );
                }
                let ca_x = &parsed[0];
                if ca_x.validity().not_after.to_datetime() > root.validity().not_after.to_datetime()
                {
                    self.warn(
                        CA_CERT,
                        format!(
                            "outlives {ROOT_CERT} (notAfter {} > {})",
                            ca_x.validity().not_after,
                            root.validity().not_after
                        ),
                    );
                }
            }
            Err(why) if top_n == 1 => {
                self.error(CA_CERT, format!("does not chain to {ROOT_CERT}: {why}"));
            }
            Err(why) => self.error(
                CERT_CHAIN,
                format!(
                    "certificate {top_n} (\"{}\", the top of the chain) does not chain to \
                     {ROOT_CERT}: {why}",
                    top.subject()
                ),
            ),
        }
    }

    /// `cert-chain.pem` starts with `ca-cert.pem`, has no root in the middle and ends with a
    /// root of `root-cert.pem`. Returns whether the links can be walked.
    fn chain_shape(&mut self, chain: &[Vec<u8>], ca: &[u8], roots: &[Vec<u8>]) -> bool {
        let expect = format!("expected {CA_CERT}, any intermediate CAs, then the root");
        if chain.len() == 1 && chain[0] != ca && roots.contains(&chain[0]) {
            self.error(
                CERT_CHAIN,
                format!(
                    "holds only the root, without {CA_CERT}; {expect} (for one level: cat \
                     {CA_CERT} {ROOT_CERT} > {CERT_CHAIN})"
                ),
            );
            return false;
        }
        let mut ok = true;
        if chain[0] != ca {
            self.error(
                CERT_CHAIN,
                format!("its first certificate is not {CA_CERT}; {expect}"),
            );
            ok = false;
        }
        let n = chain.len();
        if let Some(k) = (0..n - 1).find(|&k| parse_x509(&chain[k]).is_ok_and(|c| self_signed(&c)))
        {
            self.error(
                CERT_CHAIN,
                format!(
                    "holds {n} certificate(s) but certificate {} is a root (self-signed), which can \
                     only come last; {expect}",
                    k + 1
                ),
            );
            ok = false;
        }
        if n < 2 || !roots.contains(&chain[n - 1]) {
            self.error(
                CERT_CHAIN,
                format!("its last certificate is not {ROOT_CERT} (nor one of its roots); {expect}"),
            );
            ok = false;
        }
        ok
    }

    /// Certificate `k + 1` of `cert-chain.pem` (`parent`) signs certificate `k` (`child`).
    fn link(&mut self, child: &X509Certificate<'_>, parent: &X509Certificate<'_>, k: usize) {
        let at = format!(
            "link {k}→{}: certificate {} (\"{}\") ",
            k + 1,
            k + 1,
            parent.subject()
        );
        if child.issuer().as_raw() != parent.subject().as_raw() {
            self.error(
                CERT_CHAIN,
                format!(
                    "{at}did not issue certificate {k}, whose issuer is \"{}\"; order the file \
                     from {CA_CERT} up to the root",
                    child.issuer()
                ),
            );
            return;
        }
        if let Err(e) = child.verify_signature(Some(parent.public_key())) {
            self.error(
                CERT_CHAIN,
                format!(
                    "{at}has the issuer's name but its key does not verify certificate {k}: {e}"
                ),
            );
        }
        match parent.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => self.error(
                CERT_CHAIN,
                format!("{at}is not a CA certificate (basicConstraints CA:TRUE missing)"),
            ),
        }
        if let Ok(Some(ku)) = parent.key_usage()
            && !ku.value.key_cert_sign()
        {
            self.error(CERT_CHAIN, format!("{at}lacks keyCertSign in keyUsage"));
        }
        if !path_len_allows(parent, k) {
            self.error(
                CERT_CHAIN,
                format!(
                    "{at}has pathlen {}, but {k} CA(s) sit below it (it needs pathlen:{k} or more)",
                    path_len(parent).unwrap_or_default()
                ),
            );
        }
        let file = CERT_CHAIN;
        let before = self.out.len();
        self.validity(file, parent);
        for f in &mut self.out[before..] {
            f.message = format!("{at}{}", f.message);
        }
    }
}

fn path_len(cert: &X509Certificate<'_>) -> Option<u32> {
    cert.basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint)
}

/// A CA with `below` CA certificates under it in the path (each then signs the next, the
/// lowest signs leaves) needs pathlen ≥ `below`, or none.
fn path_len_allows(cert: &X509Certificate<'_>, below: usize) -> bool {
    path_len(cert).is_none_or(|n| n as usize >= below)
}
