//! A re-run that no longer sets a field removes it, as a fresh run would not have it. meshctl
//! creates an object with a POST, which records it as an `Update` owner, and an Update owner
//! keeps every field it set for ever: before, a classic join after `--protocols both` left the
//! Service's 15008 port (istiod pairs a gateway Service's 15008 as its HBONE port, so other
//! networks' ztunnels would dial a port nothing listens on) and a dropped Service annotation
//! stayed (found by an audit session, 2026-12-06).

mod common;

use common::*;
use serde_json::Value;

fn port_names(svc: &Value) -> Vec<String> {
    let ports = svc["spec"]["ports"].as_array().unwrap();
    ports
        .iter()
        .map(|p| format!("{}:{}", p["name"].as_str().unwrap(), p["port"]))
        .collect()
}

fn update_owners(obj: &Value) -> Vec<String> {
    let entries = obj["metadata"]["managedFields"].as_array();
    entries
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == "meshctl" && e["operation"] == "Update")
        .map(|e| e["apiVersion"].to_string())
        .collect()
}

#[tokio::test]
async fn a_rerun_without_a_field_removes_it() {
    init();
    let m = mesh().await;
    let internal = "service.beta.kubernetes.io/aws-load-balancer-internal";
    let annotation = format!("{internal}=true");
    let both = ["--protocols", "both", "--service-annotation", &annotation];
    m.ok(&m.join_args(&both)).await;
    let svc = gateway_service(&m.west);
    assert!(port_names(&svc).contains(&"mesh:15008".to_string()));
    assert_eq!(svc["metadata"]["annotations"][internal], "true");
    assert!(update_owners(&svc).is_empty(), "{svc:#}");

    // Classic, no annotation: what a fresh classic join makes.
    m.ok(&m.join_args(&[])).await;
    for s in [&m.west, &m.east] {
        let svc = gateway_service(s);
        assert_eq!(port_names(&svc), ["status-port:15021", "tls:15443"]);
        assert!(
            svc["metadata"]["annotations"].get(internal).is_none(),
            "{svc:#}"
        );
        let d = gateway_deployment(s);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let args = c["args"].to_string();
        assert!(!args.contains("--hbone-listen"), "{args}");
        let ports = c["ports"].to_string();
        assert!(!ports.contains("15008"), "{ports}");
    }
    // And a third run changes nothing.
    let before = snapshot(&m.west);
    m.ok(&m.join_args(&[])).await;
    assert_eq!(snapshot(&m.west), before);
}
