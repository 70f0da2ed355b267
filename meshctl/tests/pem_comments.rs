//! Text around PEM blocks in a bundle (comments, openssl's `Bag Attributes`, subject lines,
//! an `EC PARAMETERS` block before a key) stays in the local files and is never published:
//! istiod copies `root-cert.pem` from `cacerts` byte for byte into every namespace, so the
//! Secret holds canonical PEM only. One line names each file whose text was left out; the
//! text itself is printed nowhere.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::runs::{says, succeeds};
use common::*;
use serde_json::Value;

const SENTINEL: &str = "SENTINEL-4b1f-never-published";

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

/// `certs init` writes canonical PEM: BEGIN, 64-column base64, END, LF, nothing else.
fn is_canonical(text: &str) -> bool {
    let mut in_block = false;
    text.ends_with('\n')
        && text.lines().all(|l| {
            if l.starts_with("-----BEGIN ") && l.ends_with("-----") {
                in_block = true;
            } else if l.starts_with("-----END ") && l.ends_with("-----") {
                in_block = false;
            } else if !in_block
                || l.is_empty()
                || l.len() > 64
                || !l
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            {
                return false;
            }
            true
        })
}

/// The bundle of `dir` with notes around and between its blocks, each holding the sentinel.
fn decorate(dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let root = read("root-cert.pem");
    let root = format!(
        "Bag Attributes\n    friendlyName: {SENTINEL}\n    localKeyID: 01 02 03\n\
         subject=/O=Istio/CN=Root CA {SENTINEL}\nissuer=/O=Istio/CN=Root CA\n{root}\n\
         # {SENTINEL} trailing comment\n"
    );
    let ca = format!("# issued for west {SENTINEL}\r\n{}", read("ca-cert.pem"));
    let chain = read("cert-chain.pem").replacen(
        "-----END CERTIFICATE-----\n",
        &format!("-----END CERTIFICATE-----\n{SENTINEL} between blocks\n"),
        1,
    );
    // openssl's `ecparam -genkey` writes EC PARAMETERS first; istiod reads only the first
    // block of ca-key.pem, so that would stop it.
    let key = format!(
        "Bag Attributes\n    friendlyName: {SENTINEL}\nKey Attributes: <No Attributes>\n\
         -----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        read("ca-key.pem")
    );
    for (f, text) in [
        ("root-cert.pem", root),
        ("ca-cert.pem", ca),
        ("cert-chain.pem", chain),
        ("ca-key.pem", key),
    ] {
        std::fs::write(dir.join(f), text).unwrap();
    }
}

/// Every string in `v`, and the base64-decoded form of those that decode.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s) {
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
            out.push(s.clone());
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every object the cluster stores, its strings decoded where they are base64.
fn everything(s: &k8s_test_server::TestApiServer) -> Vec<String> {
    let mut out = Vec::new();
    for rt in s.store().resource_types() {
        let av = rt.api_version(rt.preferred_version());
        for o in s.store().list(&av, &rt.kind, None) {
            strings(&o, &mut out);
        }
    }
    out
}

fn data(secret: &Value, name: &str) -> String {
    let b64 = secret["data"][name].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

/// `cacerts apply` and `cacerts DIR --show-secrets` of a bundle whose files carry notes: the
/// Secret holds exactly the canonical PEM (what `certs init` wrote before the notes were
/// added), the EC PARAMETERS block is gone from the key, the local files keep their notes,
/// and the sentinel in the notes is in no stored object and no output.
#[tokio::test]
async fn text_around_pem_blocks_is_never_published() {
    let m = mesh().await;
    let west = m.certs.join("west");
    let canonical: Vec<String> = FILES
        .iter()
        .map(|f| std::fs::read_to_string(west.join(f)).unwrap())
        .collect();
    for (f, text) in FILES.iter().zip(&canonical) {
        assert!(is_canonical(text), "{f} is not canonical as written");
    }
    decorate(&west);
    let decorated: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(west.join(f)).unwrap())
        .collect();

    let out = succeeds(&cacerts_apply_args(m.kc(), p(&west), "west", &[])).await;
    let secret = secret(&m.west, "cacerts").expect("cacerts applied");
    for (f, want) in FILES.iter().zip(&canonical) {
        assert!(
            data(&secret, f) == *want,
            "{f}: the Secret does not hold the canonical PEM"
        );
    }
    for f in FILES {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("{}: ", west.join(f).display())))
            .unwrap_or_else(|| panic!("no note names {f}:\n{out}"));
        assert!(line.contains("not published"), "{line}");
    }
    says(&out, &["cacerts applied in context \"west\""]);
    let printed = meshctl(&["cacerts", p(&west), "--show-secrets"]).await;
    assert!(printed.status.success(), "{}", text(&printed));
    let printed_yaml: Value = serde_yaml::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed_yaml["data"], secret["data"]);
    let out = format!("{out}{}", text(&printed));

    // The notes are nowhere but in the local files, which are unchanged.
    for text in everything(&m.west).iter().chain([&out]) {
        assert!(!text.contains(SENTINEL), "published: {text}");
    }
    for (f, before) in FILES.iter().zip(&decorated) {
        assert!(
            std::fs::read(west.join(f)).unwrap() == *before,
            "{f} was changed"
        );
    }
    // No line of the key in any output.
    let key_lines: Vec<&str> = canonical[1]
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for l in key_lines {
        assert!(!out.contains(l), "a key line was printed:\n{out}");
    }
}

/// `certs renew --apply` publishes through the same canonical form: notes in the root
/// certificate files (the root directory's and the bundle's) reach no stored object.
#[tokio::test]
async fn renew_apply_publishes_canonical_pem_only() {
    let m = mesh().await;
    let west = m.certs.join("west");
    let canonical_root = std::fs::read_to_string(west.join("root-cert.pem")).unwrap();
    for f in [m.certs.join("root-cert.pem"), west.join("root-cert.pem")] {
        let text = std::fs::read_to_string(&f).unwrap();
        std::fs::write(&f, format!("# {SENTINEL} root notes\n{text}")).unwrap();
    }
    let args = renew_west_args(&m, &m.certs, &[]);
    let out = succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let secret = secret(&m.west, "cacerts").expect("cacerts applied");
    assert_eq!(data(&secret, "root-cert.pem"), canonical_root);
    for f in FILES {
        assert!(is_canonical(&data(&secret, f)), "{f} is not canonical");
    }
    for text in everything(&m.west).iter().chain([&out]) {
        assert!(!text.contains(SENTINEL), "published: {text}");
    }
}
