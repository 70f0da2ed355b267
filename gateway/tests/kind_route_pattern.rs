//! `kind-e2e/run.sh`'s ambient step waits for east's gateway to list catalog's HBONE
//! endpoint by matching `/debug/routes` against a bash regex. kind cannot run here, and the
//! script's dry runs never fetch the page, so this checks that pattern against what the
//! gateway really prints (it once expected compact JSON; the page is pretty-printed, and the
//! step would have failed on every real run).

mod common;
mod hbone_support;

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

/// A bash double-quoted argument of `run.sh` (after `marker`, on the line that contains
/// `needle`), expanded as bash would with `NS=istioinaction`.
fn expanded_pattern(marker: &str, needle: &str) -> String {
    let script = include_str!("../../kind-e2e/run.sh");
    let line = script
        .lines()
        .find(|l| l.contains(marker) && l.contains(needle))
        .unwrap_or_else(|| panic!("run.sh has a {marker} line with {needle}"));
    // From the opening quote, which `marker` ends with, to the closing one.
    let start = line.find(marker).unwrap() + marker.len() - 1;
    let raw = line[start..].trim_end().trim_end_matches('\\').trim_end();
    let out = std::process::Command::new("bash")
        .args(["-c", r#"NS=istioinaction; eval "printf '%s' $RAW""#])
        .env("RAW", raw)
        .output()
        .expect("bash");
    assert!(out.status.success(), "{raw}");
    String::from_utf8(out.stdout).unwrap()
}

/// `run.sh --waypoint` waits for `/debug/routes` to name catalog's waypoint and for an access
/// line naming it: both patterns checked against what the real binary prints (JSON logs, as
/// `meshctl gateway install` deploys it) for a tunnel it sent to a waypoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kind_waypoint_step_matches_the_gateways_routes_and_access_line() {
    let wp = hbone_support::App::start(
        "waypoint-1",
        [127, 0, 0, 61].into(),
        0,
        hbone_support::AppMode::Echo,
    )
    .await
    .unwrap();
    let yaml = format!(
        "services:\n  - host: catalog.istioinaction.svc.cluster.local\n    ports: [{{port: 80, targetPort: 3000}}]\n    \
         waypoint: waypoint.istioinaction.svc.cluster.local\n    hbone: true\n    endpoints: [{{address: 10.244.1.5}}]\n  \
         - host: waypoint.istioinaction.svc.cluster.local\n    ports: [{{port: 15008, targetPort: {}}}]\n    \
         endpoints: [{{address: {}}}]\n",
        wp.addr.port(),
        wp.addr.ip()
    );
    let h = hbone_support::hbone_process(&yaml, &[], "info").await;
    let (_, routes) = http_get(h.gw.admin, "/debug/routes?host=catalog.istioinaction").await;
    let re = expanded_pattern(" ROUTES \"", "waypoint");
    assert!(bash_matches(&routes, &re), "{re} against:\n{routes}");
    let unbound = yaml.replace(
        "    waypoint: waypoint.istioinaction.svc.cluster.local\n",
        "",
    );
    let plain = gateway(&unbound).await;
    let (_, body) = http_get(plain.admin, "/debug/routes?host=catalog.istioinaction").await;
    assert!(!bash_matches(&body, &re), "{body}");

    let mut o = hbone_support::outer(h.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let authority = "catalog.istioinaction.svc.cluster.local:80";
    let (status, io) = hbone_support::connect(&mut o, authority).await.unwrap();
    assert_eq!(status, http::StatusCode::OK);
    drop(io);
    drop(o);
    let gw = std::sync::Arc::new(h.gw);
    let line = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || gw.wait_line(&|v| v["message"] == "HBONE tunnel closed")
    })
    .await
    .unwrap();
    let text = serde_json::to_string(&line).unwrap();
    let re = expanded_pattern(" ACCESS \"", "waypoint");
    assert!(bash_matches(&text, &re), "{re} against:\n{text}");
    assert!(!bash_matches(&text.replace("waypoint\":", "other\":"), &re));
}
