//! stdout is one document a script can parse: with `-o json` exactly one JSON value, with
//! `-o yaml` a YAML stream of objects, for real runs and dry runs of `create-remote-secret`,
//! `label-network` and `gateway install|manifest`; progress goes to stderr. Multiple objects
//! in JSON are one `List` (kubectl's form); a dry run is one `{"clusters": [...]}` plan
//! (`create-remote-secret` adds the Secret for the other clusters as `remoteSecret`).
//! Without `-o`, a real run prints nothing on stdout.

mod common;

use common::runs::*;
use common::*;
use serde_json::Value;

/// `stdout` as a YAML stream: each non-empty document, each an object with a kind.
fn yaml_docs(what: &str, stdout: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(stdout)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}:\n{stdout}")))
        .filter(|v| !v.is_null())
        .collect();
    for d in &docs {
        assert!(
            d["kind"].is_string(),
            "{what}: a document without a kind:\n{stdout}"
        );
    }
    docs
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{} {}", d["kind"].as_str().unwrap(), d["metadata"]["name"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_remote_secret_prints_one_document() {
    let m = mesh().await;
    let dry = remote_secret_args(m.kc(), &["--dry-run", "-o", "json"]);
    let (out, _) = stdout_of(&dry).await;
    let v = one_json("create-remote-secret --dry-run -o json", &out);
    let plan = v["clusters"].as_array().unwrap();
    assert_eq!(plan.len(), 1, "{v}");
    assert_eq!(plan[0]["context"], "west");
    let objects = plan[0]["objects"].as_array().unwrap();
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["namespace"] == "istio-system"),
        "{v}"
    );
    assert_eq!(v["remoteSecret"]["kind"], "Secret", "{v}");
    assert_eq!(
        v["remoteSecret"]["metadata"]["name"],
        "istio-remote-secret-west"
    );

    // YAML: the token Secret of the plan and the remote secret are separate documents.
    let (out, _) = stdout_of(&remote_secret_args(m.kc(), &["--dry-run"])).await;
    let docs = kinds(&yaml_docs("create-remote-secret --dry-run", &out));
    for want in [
        "Secret \"istio-reader-service-account-istio-remote-secret-token\"",
        "Secret \"istio-remote-secret-west\"",
    ] {
        assert!(docs.iter().any(|d| d == want), "{want} in {docs:?}");
    }

    let (out, _) = stdout_of(&remote_secret_args(m.kc(), &["-o", "json"])).await;
    let v = one_json("create-remote-secret -o json", &out);
    assert_eq!(v["kind"], "Secret");
    let (out, _) = stdout_of(&remote_secret_args(m.kc(), &[])).await;
    assert_eq!(yaml_docs("create-remote-secret", &out).len(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_network_prints_one_document_and_reports_on_stderr() {
    let m = mesh().await;
    let label = |extra: &[&'static str]| {
        let mut a = vec![
            "label-network",
            "west-network",
            "--kubeconfig",
            m.kc(),
            "--context",
            "west",
        ];
        a.extend_from_slice(extra);
        a
    };
    let (out, _) = stdout_of(&label(&["--dry-run", "-o", "json"])).await;
    let v = one_json("label-network --dry-run -o json", &out);
    assert_eq!(v["clusters"][0]["objects"][0]["kind"], "Namespace");

    let (out, err) = stdout_of(&label(&["-o", "json"])).await;
    let v = one_json("label-network -o json", &out);
    assert_eq!(v["kind"], "Namespace", "{v}");
    assert_eq!(
        v["metadata"]["labels"]["topology.istio.io/network"],
        "west-network"
    );
    assert!(
        err.contains("labelled topology.istio.io/network=west-network"),
        "{err}"
    );

    let (out, _) = stdout_of(&label(&["-o", "yaml"])).await;
    assert_eq!(
        kinds(&yaml_docs("label-network -o yaml", &out)),
        ["Namespace \"istio-system\""]
    );

    let (out, err) = stdout_of(&label(&[])).await;
    assert_eq!(out, "", "stdout without -o");
    assert!(err.contains("labelled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_install_and_manifest_print_one_document() {
    let m = mesh().await;
    let install = |extra: &[&'static str]| gateway_install_args(m.kc(), extra);
    let (out, _) = stdout_of(&install(&["--dry-run", "-o", "json"])).await;
    let v = one_json("gateway install --dry-run -o json", &out);
    assert!(!v["clusters"][0]["objects"].as_array().unwrap().is_empty());

    let (out, err) = stdout_of(&install(&["-o", "json"])).await;
    let v = one_json("gateway install -o json", &out);
    assert_eq!(v["kind"], "List", "{v}");
    let items = v["items"].as_array().unwrap();
    assert!(items.iter().any(|o| o["kind"] == "Deployment"), "{v}");
    assert!(err.contains("applied in context \"west\""), "{err}");

    let (out, _) = stdout_of(&install(&["-o", "yaml"])).await;
    assert_eq!(
        yaml_docs("gateway install -o yaml", &out).len(),
        items.len()
    );

    let (out, err) = stdout_of(&install(&[])).await;
    assert_eq!(out, "", "stdout without -o");
    assert!(err.contains("applied in context"), "{err}");

    let manifest = [
        "gateway",
        "manifest",
        "--network",
        "west-network",
        "-o",
        "json",
    ];
    let (out, _) = stdout_of(&manifest).await;
    assert_eq!(one_json("gateway manifest -o json", &out)["kind"], "List");
}
