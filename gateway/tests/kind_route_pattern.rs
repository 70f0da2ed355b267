//! `kind-e2e/run.sh`'s ambient step waits for east's gateway to list catalog's HBONE
//! endpoint by matching `/debug/routes` against a bash regex. kind cannot run here, and the
//! script's dry runs never fetch the page, so this checks that pattern against what the
//! gateway really prints (it once expected compact JSON; the page is pretty-printed, and the
//! step would have failed on every real run).

mod common;

use common::{gateway, http_get};

/// The regex `run.sh`'s ambient step passes to `retry_match ... ROUTES '<regex>'`.
fn routes_pattern() -> String {
    let script = include_str!("../../kind-e2e/run.sh");
    let line = script
        .lines()
        .find(|l| l.contains(" ROUTES '") && l.contains("hbone_endpoints"))
        .expect("run.sh matches /debug/routes for an HBONE endpoint");
    let start = line.find(" ROUTES '").unwrap() + " ROUTES '".len();
    let end = line[start..].find('\'').expect("a closing quote") + start;
    line[start..end].to_string()
}

/// Whether bash's `[[ text =~ re ]]` holds, as `retry_match` tests it.
fn bash_matches(text: &str, re: &str) -> bool {
    std::process::Command::new("bash")
        .args(["-c", r#"[[ $1 =~ $2 ]]"#, "bash", text, re])
        .status()
        .expect("bash")
        .success()
}

#[tokio::test]
async fn the_kind_ambient_step_matches_the_gateways_debug_routes() {
    let yaml = "services:\n  - host: catalog.istioinaction.svc.cluster.local\n    ports: [{port: 80, targetPort: 3000}]\n    hbone: {port: 15008}\n    endpoints: [{address: 10.244.1.5}]\n";
    let gw = gateway(yaml).await;
    let (code, body) = http_get(gw.admin, "/debug/routes?host=catalog.istioinaction").await;
    assert_eq!(code, 200, "{body}");
    let re = routes_pattern();
    assert!(
        bash_matches(&body, &re),
        "run.sh's pattern {re} does not match the gateway's /debug/routes:\n{body}"
    );
    // And it needs the HBONE endpoint: a route without one does not match.
    let plain = yaml.replace("    hbone: {port: 15008}\n", "");
    let gw = gateway(&plain).await;
    let (_, body) = http_get(gw.admin, "/debug/routes?host=catalog.istioinaction").await;
    assert!(!bash_matches(&body, &re), "{body}");
}
