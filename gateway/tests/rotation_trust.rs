//! Trust across a root rotation, through the gateway (issue 14): workloads with certificates
//! from an old and a new root call each other over real mTLS through the gateway's
//! auto-passthrough listener, with the trust bundles of each stage of `meshctl rotate`
//! (before, prepared, activated, finished). The gateway never terminates TLS, so it forwards
//! every one of these connections; whether the call works is decided by the workloads'
//! handshake alone, and it fails exactly where a peer does not trust the other's root.

mod common;

use common::*;
use rustls::{AlertDescription, CertificateError};
use testkit::mesh;
use testkit::mtls::{self, Identity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// An old root and a new one (same subject, new key, as `meshctl rotate prepare` makes it),
/// an east and a west intermediate under each, and the catalog (east) and webapp (west)
/// workloads issued by each root's intermediates.
struct Rotation {
    /// Both roots have the same subject.
    same_subject: bool,
    old_root: String,
    new_root: String,
    catalog: [pki::WorkloadCert; 2],
    webapp: [pki::WorkloadCert; 2],
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Root {
    Old = 0,
    New = 1,
}

/// A workload's trust bundle (`root-cert.pem` as istiod publishes it).
#[derive(Clone, Copy, Debug)]
enum Bundle {
    Old,
    Both,
    New,
}

/// How one call ends, as the client sees it.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Handshake, greeting from the catalog naming the webapp's identity, bytes echoed.
    Called,
    /// The catalog refused the webapp's certificate (its issuer is not in the catalog's
    /// bundle): the client receives the catalog's `unknown_ca` alert.
    CatalogRefusesWebapp,
    /// The webapp refused the catalog's certificate (its issuer is not in the webapp's bundle).
    WebappRefusesCatalog,
}

/// `new_cn`: the new root's subject CN; `meshctl rotate prepare` keeps the old one
/// (`pki::DEFAULT_ROOT_CN`) unless given `--common-name`.
fn rotation(new_cn: &str) -> Rotation {
    let old = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
    let new = pki::RootCa::generate(&pki::RootOptions {
        common_name: new_cn.into(),
        ..Default::default()
    })
    .unwrap();
    let issue = |root: &pki::RootCa, cluster: &str, sa: &str| {
        root.issue_intermediate(&pki::IntermediateOptions::new(cluster))
            .unwrap()
            .issue_workload(&pki::WorkloadOptions::new(mesh::NAMESPACE, sa))
            .unwrap()
    };
    Rotation {
        catalog: [&old, &new].map(|r| issue(r, mesh::EAST_CLUSTER, mesh::CATALOG)),
        webapp: [&old, &new].map(|r| issue(r, mesh::WEST_CLUSTER, mesh::WEBAPP)),
        same_subject: new_cn == pki::DEFAULT_ROOT_CN,
        old_root: old.cert_pem().to_string(),
        new_root: new.cert_pem().to_string(),
    }
}

impl Rotation {
    fn bundle(&self, b: Bundle) -> String {
        match b {
            Bundle::Old => self.old_root.clone(),
            Bundle::Both => format!("{}{}", self.old_root, self.new_root),
            Bundle::New => self.new_root.clone(),
        }
    }

    fn identity(&self, w: &pki::WorkloadCert, trusts: Bundle) -> Identity {
        Identity::from_pems(&w.chain_pem, &w.key_pem, &self.bundle(trusts)).unwrap()
    }
}

/// One call: the webapp (client cert from `client.0`'s root, trusting `client.1`) calls the
/// catalog (server cert from `server.0`'s root, trusting `server.1`) through its own gateway.
struct Case {
    stage: &'static str,
    client: (Root, Bundle),
    server: (Root, Bundle),
    want: Outcome,
}

const fn case(
    stage: &'static str,
    client: (Root, Bundle),
    server: (Root, Bundle),
    want: Outcome,
) -> Case {
    Case {
        stage,
        client,
        server,
        want,
    }
}

/// The matrix: every pair that must work at each stage, and the ones that must fail.
fn matrix() -> Vec<Case> {
    use Bundle::*;
    use Outcome::*;
    use Root::{New as NewCert, Old as OldCert};
    vec![
        // before: one root everywhere.
        case("before", (OldCert, Old), (OldCert, Old), Called),
        // A new-root certificate before its root is in the bundles (activated too early).
        case(
            "before",
            (NewCert, Old),
            (OldCert, Old),
            CatalogRefusesWebapp,
        ),
        // prepared: bundles old + new, the old intermediates keep signing; a workload that has
        // not picked up the new bundle yet still talks both ways.
        case("prepared", (OldCert, Both), (OldCert, Both), Called),
        case("prepared", (OldCert, Old), (OldCert, Both), Called),
        case("prepared", (OldCert, Both), (OldCert, Old), Called),
        // activated: bundles old + new, some workloads re-issued from the new intermediates.
        case("activated", (OldCert, Both), (OldCert, Both), Called),
        case("activated", (OldCert, Both), (NewCert, Both), Called),
        case("activated", (NewCert, Both), (OldCert, Both), Called),
        case("activated", (NewCert, Both), (NewCert, Both), Called),
        // A new-root certificate against a peer that still trusts only the old root.
        case(
            "activated",
            (NewCert, Both),
            (OldCert, Old),
            CatalogRefusesWebapp,
        ),
        case(
            "activated",
            (OldCert, Old),
            (NewCert, Both),
            WebappRefusesCatalog,
        ),
        // finished: the new root alone; an old-root certificate still around is refused.
        case("finished", (NewCert, New), (NewCert, New), Called),
        case(
            "finished",
            (OldCert, Both),
            (NewCert, New),
            CatalogRefusesWebapp,
        ),
        case(
            "finished",
            (NewCert, New),
            (OldCert, Both),
            WebappRefusesCatalog,
        ),
    ]
}

/// Runs one case: a catalog backend with its certificate and bundle, a gateway routing the
/// catalog to it, and one webapp call through the gateway. Returns the outcome after checking
/// that the gateway forwarded the connection to the catalog either way.
async fn run(r: &Rotation, c: &Case) -> Outcome {
    let catalog = r.identity(&r.catalog[c.server.0 as usize], c.server.1);
    let server_tls = mtls::server_config(&catalog, rustls::DEFAULT_VERSIONS).unwrap();
    let backend = Backend::start_with("catalog", [127, 0, 0, 2].into(), 0, server_tls)
        .await
        .unwrap();
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        backend.addr.port(),
        &[(backend.addr.ip(), "v1", true)],
    ))
    .await;

    let webapp = r.identity(&r.webapp[c.client.0 as usize], c.client.1);
    let client_tls = mtls::client_config(
        &webapp,
        Some(&mesh::spiffe_id(mesh::CATALOG)),
        rustls::DEFAULT_VERSIONS,
    )
    .unwrap();
    let key = sni(80, "", CATALOG);
    let outcome = match open(gw.listen, &key, client_tls).await {
        Ok((mut stream, greeting)) => {
            assert_eq!(
                greeting,
                format!("catalog peer={}", mesh::spiffe_id(mesh::WEBAPP))
            );
            // The workloads negotiated Istio's ALPN end to end; the gateway only read the SNI.
            assert_eq!(
                stream.get_ref().get_ref().1.alpn_protocol(),
                Some(&b"istio-peer-exchange"[..])
            );
            let data = format!("{} call\n", c.stage);
            stream.write_all(data.as_bytes()).await.unwrap();
            let mut echoed = String::new();
            tokio::time::timeout(TIMEOUT, stream.read_line(&mut echoed))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(echoed, data);
            stream.get_mut().shutdown().await.unwrap();
            let mut tail = String::new();
            tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut tail))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(tail, format!("eof after {} bytes\n", data.len()));
            Outcome::Called
        }
        Err(e) => classify(&e, r.same_subject),
    };

    // The gateway passed the connection on in every case: it never looks past the SNI.
    assert_eq!(backend.accepted(), 1, "the catalog saw no connection");
    let (_, text) = http_get(gw.admin, "/metrics").await;
    let m = testkit::prom::Metrics::parse(&text);
    assert_eq!(
        m.value("gateway_connections_opened_total", &[("sni", &key)]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m.sum("gateway_connections_rejected_total", &[]),
        0.0,
        "{text}"
    );
    outcome
}

/// Which side's certificate check failed, from the client's error. With roots of distinct
/// subjects the issuer is unknown (`unknown_ca`); with the same subject webpki finds the
/// trusted root by name and the signature does not verify (`decrypt_error` on the wire).
fn classify(e: &std::io::Error, same_subject: bool) -> Outcome {
    let (alert, cert_error) = if same_subject {
        (
            AlertDescription::DecryptError,
            CertificateError::BadSignature,
        )
    } else {
        (AlertDescription::UnknownCA, CertificateError::UnknownIssuer)
    };
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(a)) if *a == alert => Outcome::CatalogRefusesWebapp,
        Some(rustls::Error::InvalidCertificate(c)) if *c == cert_error => {
            Outcome::WebappRefusesCatalog
        }
        _ => panic!("call failed for another reason than trust: {e:?}"),
    }
}

/// Every case of [`matrix`], each through a gateway of its own; all mismatches reported.
async fn check_matrix(r: &Rotation) {
    init();
    let mut wrong = Vec::new();
    for c in matrix() {
        let got = run(r, &c).await;
        if got != c.want {
            wrong.push(format!(
                "{}: webapp {:?} cert trusting {:?} -> catalog {:?} cert trusting {:?}: got {got:?}, want {:?}",
                c.stage, c.client.0, c.client.1, c.server.0, c.server.1, c.want
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The new root as `meshctl rotate prepare` makes it by default: the old root's subject.
#[tokio::test]
async fn trust_matrix_through_the_gateway_with_a_same_subject_root() {
    check_matrix(&rotation(pki::DEFAULT_ROOT_CN)).await;
}

/// The new root with `--common-name` set to another subject.
#[tokio::test]
async fn trust_matrix_through_the_gateway_with_a_renamed_root() {
    check_matrix(&rotation("Root CA 2027")).await;
}
