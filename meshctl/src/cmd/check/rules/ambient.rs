//! Ambient multi-network checks, run only when the mesh uses ambient (an `istio-remote`
//! Gateway exists, or a gateway serves HBONE):
//! - istiod runs with `AMBIENT_ENABLE_MULTI_NETWORK=true` (without it istiod builds no
//!   cross-network workloads for ztunnels);
//! - the gateway's HBONE certificate names the identity peers expect;
//! - every peer network is announced by an `istio-remote` Gateway with an address, whose
//!   expected identity (`gateway.istio.io/service-account`, istio's `GatewaySA`) is the
//!   peer gateway's;
//! - global services (`istio.io/global=true`) that exist in only some clusters (a warning).

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

use super::super::facts::{AmbientFacts, CanaryBinding, Seen, WaypointBinding};
use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::istio::{
    AMBIENT_MULTI_NETWORK_ENV, GATEWAY_NAME, GATEWAY_SA_ANNOTATION, HBONE_CERT_KEYS,
    HBONE_CERTS_SECRET, NETWORK_LABEL, REMOTE_GATEWAY_CLASS, spiffe_id,
};

/// The gateway's container args, if it has a container.
fn gateway_args(d: &Deployment) -> Vec<String> {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

fn arg_value(args: &[String], flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// Whether the gateway serves HBONE (has `--hbone-listen` other than `off`).
fn serves_hbone(d: &Deployment) -> bool {
    arg_value(&gateway_args(d), "--hbone-listen").is_some_and(|v| v != "off")
}

/// The identity a gateway presents on 15008: its trust domain (`--trust-domain`, the
/// gateway's default `cluster.local`), namespace and service account.
pub fn gateway_identity(d: &Deployment) -> String {
    let td = arg_value(&gateway_args(d), "--trust-domain").unwrap_or("cluster.local".into());
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let sa = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    spiffe_id(&td, &ns, &sa)
}

/// The service account istiod expects for an announced gateway: the annotation, else
/// `<name>-istio-remote` (istio `pilot/pkg/serviceregistry/kube/conversion.go` `GatewaySA`).
pub fn announced_sa(gw: &Value) -> String {
    match gw["metadata"]["annotations"][GATEWAY_SA_ANNOTATION].as_str() {
        Some(sa) if !sa.is_empty() => sa.to_string(),
        _ => format!(
            "{}-{REMOTE_GATEWAY_CLASS}",
            gw["metadata"]["name"].as_str().unwrap_or_default()
        ),
    }
}

/// Does any cluster use ambient multi-network?
pub fn in_use(clusters: &[(&Seen, &AmbientFacts)]) -> bool {
    clusters
        .iter()
        .any(|(_, f)| !f.remote_gateways.is_empty() || f.gateway.as_ref().is_some_and(serves_hbone))
}

/// All ambient checks, for the readable clusters; `inv`: the flags the hints repeat.
pub fn checks(r: &mut Report, clusters: &[(&Seen, &AmbientFacts)], inv: &Invocation) {
    if !in_use(clusters) {
        return;
    }
    for (seen, f) in clusters {
        let scope = format!("cluster {}", seen.context);
        istiod_multi_network(r, &scope, f);
        hbone_certificate(r, &scope, (seen, f), inv);
        peers_announced(r, &scope, seen, f, (clusters, inv));
        waypoint_bound(r, &scope, f);
    }
    global_services(r, clusters);
}

/// Global services bound to a waypoint. A ready one (a Gateway with `status.addresses`) is
/// what istiod and the east-west gateway both send these services' tunnels to. One that is
/// not ready is ignored by both, so tunnels reach the service without the waypoint's policy:
/// worth a warning, since the label says someone wanted that policy. A canary that cannot take
/// its share (not ready, an invalid weight, the waypoint itself) leaves every tunnel to the
/// waypoint: a warning too, since the canary was meant to be tried.
fn waypoint_bound(r: &mut Report, scope: &str, f: &AmbientFacts) {
    let check = "waypoints of global services";
    if f.waypoint_bound.is_empty() {
        if !f.global_services.is_empty() {
            r.pass(scope, check, "none is bound to a waypoint");
        }
        return;
    }
    let describe = |b: &WaypointBinding| {
        let whose = if b.from_namespace {
            "its namespace's"
        } else {
            "its own"
        };
        format!(
            "{} ({whose} istio.io/use-waypoint={}, Gateway {})",
            b.service, b.label, b.waypoint
        )
    };
    let (ready, not_ready): (Vec<_>, Vec<_>) = f.waypoint_bound.iter().partition(|b| b.ready);
    let unused: Vec<String> = ready
        .iter()
        .filter_map(|b| {
            let c = b.canary.as_ref()?;
            let why = canary_unused(b, c)?;
            Some(format!(
                "{} (canary Gateway {}: {why})",
                b.service, c.waypoint
            ))
        })
        .collect();
    if not_ready.is_empty() && unused.is_empty() {
        let listed: Vec<String> = ready
            .iter()
            .map(|b| match &b.canary {
                Some(c) => format!(
                    "{}, canary Gateway {} at {}%",
                    describe(b),
                    c.waypoint,
                    c.weight.as_deref().unwrap_or("0")
                ),
                None => describe(b),
            })
            .collect();
        r.pass(
            scope,
            check,
            format!("through their waypoints: {}", listed.join("; ")),
        );
        return;
    }
    let mut detail = Vec::new();
    let mut hint = Vec::new();
    if !not_ready.is_empty() {
        let listed: Vec<String> = not_ready.iter().map(|b| describe(b)).collect();
        detail.push(format!(
            "bound to a waypoint that is not ready (no status.addresses, or no such Gateway): {}",
            listed.join("; ")
        ));
        hint.push("istiod and the east-west gateway both ignore a binding to a waypoint that is not ready, so tunnels from other networks reach these services without the waypoint's policy; deploy the waypoint (istioctl waypoint apply) and wait for its Gateway's status.addresses, or remove the label");
    }
    if !unused.is_empty() {
        detail.push(format!(
            "canary waypoint takes nothing: {}",
            unused.join("; ")
        ));
        hint.push("istiod, ztunnel and the east-west gateway send every tunnel to the waypoint while its canary cannot take its share; deploy the canary waypoint and wait for its Gateway's status.addresses, give istio.io/use-waypoint-canary-weight a whole number from 0 to 100, or remove the istio.io/use-waypoint-canary label");
    }
    r.warn(scope, check, detail.join(". "), hint.join(". "));
}

/// Why canary `c` of the ready binding `b` takes none of its tunnels, if it takes none
/// (istiod's `CanaryInvalidWeight`, `CanarySameAsPrimary`, a canary that is not ready).
fn canary_unused(b: &WaypointBinding, c: &CanaryBinding) -> Option<String> {
    let weight_ok = c
        .weight
        .as_deref()
        .is_none_or(|w| w.parse::<i64>().is_ok_and(|n| (0..=100).contains(&n)));
    if !weight_ok {
        let w = c.weight.as_deref().unwrap_or_default();
        let w: String = w.chars().take(32).collect();
        Some(format!(
            "istio.io/use-waypoint-canary-weight {w:?} is not a whole number from 0 to 100"
        ))
    } else if c.waypoint == b.waypoint {
        Some("the waypoint itself".into())
    } else if !c.ready {
        Some("not ready (no status.addresses, or no such Gateway)".into())
    } else {
        None
    }
}

fn istiod_multi_network(r: &mut Report, scope: &str, f: &AmbientFacts) {
    let check = "istiod ambient multi-network";
    if f.istiods.is_empty() {
        r.fail(scope, check, "no istiod Deployment (label app=istiod) found",
            "install Istio's ambient profile with values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK=true");
        return;
    }
    let off: Vec<String> = f
        .istiods
        .iter()
        .filter(|d| {
            let env = d
                .spec
                .template
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|p| p.containers.iter())
                .flat_map(|c| c.env.iter().flatten())
                .find(|e| e.name == AMBIENT_MULTI_NETWORK_ENV)
                .and_then(|e| e.value.clone());
            env.as_deref() != Some("true")
        })
        .map(|d| d.metadata.name.clone().unwrap_or_default())
        .collect();
    if off.is_empty() {
        r.pass(scope, check, format!("{AMBIENT_MULTI_NETWORK_ENV}=true"));
    } else {
        r.fail(scope, check,
            format!("{AMBIENT_MULTI_NETWORK_ENV} is not true on {}: ztunnels get no cross-network endpoints", off.join(", ")),
            format!("set it (istioctl install --set values.pilot.env.{AMBIENT_MULTI_NETWORK_ENV}=true, or the istiod chart's env) and restart istiod"));
    }
}

fn hbone_certificate(
    r: &mut Report,
    scope: &str,
    (seen, f): (&Seen, &AmbientFacts),
    inv: &Invocation,
) {
    let check = "gateway HBONE identity";
    let Some(d) = f.gateway.as_ref().filter(|d| serves_hbone(d)) else {
        return;
    };
    let want = gateway_identity(d);
    // With --ca-root the certificate comes from istiod, which names the pod's service account
    // (from its token), so the gateway presents `want` by construction: no Secret to read.
    if arg_value(&gateway_args(d), "--ca-root").is_some() {
        r.pass(scope, check, format!("{want} (issued by istiod)"));
        return;
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let hint = format!(
        "issue it with meshctl certs workload --ca certs/<cluster> --namespace {ns} \
         --service-account {GATEWAY_NAME} --out DIR, then kubectl{} --context {} -n {ns} create \
         secret generic {HBONE_CERTS_SECRET} --from-file=DIR/cert-chain.pem \
         --from-file=DIR/key.pem --from-file=DIR/root-cert.pem",
        inv.kubeconfig(),
        shell_word(&seen.context)
    );
    let Some(data) = f.hbone_secret.as_ref().and_then(|s| s.data.as_ref()) else {
        r.fail(
            scope,
            check,
            format!("Secret {ns}/{HBONE_CERTS_SECRET} is missing: the gateway cannot serve 15008"),
            hint,
        );
        return;
    };
    let missing: Vec<&str> = HBONE_CERT_KEYS
        .into_iter()
        .filter(|k| !data.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        r.fail(
            scope,
            check,
            format!(
                "Secret {ns}/{HBONE_CERTS_SECRET} lacks {}",
                missing.join(", ")
            ),
            hint,
        );
        return;
    }
    let chain = String::from_utf8_lossy(&data["cert-chain.pem"].0).to_string();
    let uris: Vec<String> = match pki::inspect_pem(&chain) {
        Ok(certs) => certs
            .first()
            .map(|c| {
                c.sans
                    .iter()
                    .filter_map(|s| s.strip_prefix("URI:"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        Err(e) => {
            r.fail(
                scope,
                check,
                format!("{HBONE_CERTS_SECRET}: cert-chain.pem does not parse: {e}"),
                hint,
            );
            return;
        }
    };
    if uris.contains(&want) {
        r.pass(scope, check, want);
    } else {
        r.fail(
            scope,
            check,
            format!(
                "peers expect {want}, the certificate in {HBONE_CERTS_SECRET} names {}",
                if uris.is_empty() {
                    "no URI".to_string()
                } else {
                    uris.join(", ")
                }
            ),
            hint,
        );
    }
}

fn peers_announced(
    r: &mut Report,
    scope: &str,
    seen: &Seen,
    f: &AmbientFacts,
    (clusters, inv): (&[(&Seen, &AmbientFacts)], &Invocation),
) {
    let check = "peer networks announced";
    // ztunnels here expect the peer in this mesh's trust domain: istiod puts it on the
    // gateway workload it builds (`workloads.go` `convertGateway`). This cluster's gateway
    // states it (`--trust-domain`).
    let td = f
        .gateway
        .as_ref()
        .and_then(|d| arg_value(&gateway_args(d), "--trust-domain"))
        .unwrap_or("cluster.local".into());
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (peer, pf) in clusters {
        if peer.context == seen.context {
            continue;
        }
        let Some(net) = &peer.network else { continue };
        let gws: Vec<&Value> = f
            .remote_gateways
            .iter()
            .filter(|g| g["metadata"]["labels"][NETWORK_LABEL].as_str() == Some(net))
            .filter(|g| {
                g["spec"]["listeners"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().any(|l| l["protocol"] == "HBONE"))
            })
            .collect();
        let Some(gw) = gws.first() else {
            bad.push(format!(
                "network {net}: no {REMOTE_GATEWAY_CLASS} Gateway with an HBONE listener"
            ));
            continue;
        };
        let name = gw["metadata"]["name"].as_str().unwrap_or_default();
        let addrs: Vec<&str> = gw["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["value"].as_str())
            .collect();
        if addrs.is_empty() {
            bad.push(format!(
                "network {net}: Gateway {name} has no status.addresses"
            ));
            continue;
        }
        let gw_ns = gw["metadata"]["namespace"].as_str().unwrap_or_default();
        if let Some(pd) = pf.gateway.as_ref().filter(|d| serves_hbone(d)) {
            let expected = spiffe_id(&td, gw_ns, &announced_sa(gw));
            let presented = gateway_identity(pd);
            if expected != presented {
                bad.push(format!(
                    "network {net}: Gateway {name} makes ztunnels expect {expected}, the gateway in {} presents {presented}",
                    peer.context
                ));
                continue;
            }
        } else {
            bad.push(format!(
                "network {net}: the gateway in {} does not serve HBONE (15008)",
                peer.context
            ));
            continue;
        }
        ok.push(format!("{net} at {}", addrs.join(", ")));
    }
    if bad.is_empty() {
        if !ok.is_empty() {
            r.pass(scope, check, ok.join("; "));
        }
    } else {
        r.fail(scope, check, bad.join("; "),
            format!("run meshctl join --ambient{} with every cluster (and --gateway-address CONTEXT=ADDRESS where a gateway has no load-balancer address); the peer gateway needs --protocols both or ambient", inv.meshctl()));
    }
}

fn global_services(r: &mut Report, clusters: &[(&Seen, &AmbientFacts)]) {
    let check = "global services on every side";
    let mut all: Vec<&String> = clusters
        .iter()
        .flat_map(|(_, f)| &f.global_services)
        .collect();
    all.sort();
    all.dedup();
    let mut one_sided = Vec::new();
    for svc in &all {
        let missing: Vec<&str> = clusters
            .iter()
            .filter(|(_, f)| !f.global_services.contains(svc))
            .map(|(s, _)| s.context.as_str())
            .collect();
        if !missing.is_empty() {
            one_sided.push(format!("{svc} (missing in {})", missing.join(", ")));
        }
    }
    if one_sided.is_empty() {
        r.pass("mesh", check, format!("{} global service(s)", all.len()));
    } else {
        r.warn("mesh", check, format!("global on one side only: {}", one_sided.join("; ")),
            "label the Service istio.io/global=true in each cluster that should serve it (clusters import only global services), or remove the label where it is not meant to be shared");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::check::facts::WaypointBinding;
    use serde_json::json;

    fn seen(ctx: &str, net: &str) -> Seen {
        Seen {
            context: ctx.into(),
            name: ctx.into(),
            name_known: true,
            name_guessed: false,
            unread: None,
            network: Some(net.into()),
            root: None,
            uid: None,
        }
    }

    fn deployment(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn gateway(td: &str, sa: &str) -> Deployment {
        deployment(
            json!({"metadata": {"name": GATEWAY_NAME, "namespace": "istio-system"},
            "spec": {"selector": {}, "template": {"spec": {"serviceAccountName": sa, "containers": [{"name": "gateway",
                "args": ["--hbone-listen", ":15008", "--trust-domain", td]}]}}}}),
        )
    }

    fn istiod(env: Option<&str>) -> Deployment {
        let env: Vec<_> = env
            .map(|v| json!({"name": AMBIENT_MULTI_NETWORK_ENV, "value": v}))
            .into_iter()
            .collect();
        deployment(
            json!({"metadata": {"name": "istiod", "namespace": "istio-system"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "discovery", "env": env}]}}}}),
        )
    }

    fn announce(net: &str, sa: Option<&str>, addr: Option<&str>) -> Value {
        let mut g = json!({"metadata": {"name": format!("meshctl-remote-{net}"), "namespace": "istio-system",
                "labels": {NETWORK_LABEL: net}},
            "spec": {"gatewayClassName": REMOTE_GATEWAY_CLASS, "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}});
        if let Some(sa) = sa {
            g["metadata"]["annotations"] = json!({GATEWAY_SA_ANNOTATION: sa});
        }
        if let Some(a) = addr {
            g["status"] = json!({"addresses": [{"type": "IPAddress", "value": a}]});
        }
        g
    }

    fn status_of<'a>(
        r: &'a Report,
        scope: &str,
        check: &str,
    ) -> &'a crate::cmd::check::report::Item {
        r.items
            .iter()
            .find(|i| i.scope == scope && i.check == check)
            .unwrap_or_else(|| panic!("no {scope}/{check}: {:?}", r.items))
    }

    #[test]
    fn announced_sa_follows_istio() {
        assert_eq!(announced_sa(&announce("n", Some("gw"), None)), "gw");
        assert_eq!(
            announced_sa(&announce("n", None, None)),
            "meshctl-remote-n-istio-remote"
        );
    }

    #[test]
    fn nothing_is_checked_without_ambient() {
        let (w, e) = (seen("west", "w"), seen("east", "e"));
        let f = AmbientFacts {
            istiods: vec![istiod(None)],
            ..Default::default()
        };
        let mut r = Report::default();
        checks(&mut r, &[(&w, &f), (&e, &f)], &Default::default());
        assert!(r.items.is_empty(), "{:?}", r.items);
    }

    /// A ready canary is listed with its share; one that cannot take it is named with the
    /// reason istiod would report, and every tunnel goes to the waypoint.
    #[test]
    fn a_canary_that_cannot_take_its_share_is_named() {
        use crate::cmd::check::facts::CanaryBinding;
        use crate::cmd::check::report::Status;
        let w = seen("west", "w");
        let bound =
            |service: &str, canary: &str, weight: Option<&str>, ready: bool| WaypointBinding {
                service: service.into(),
                label: "wp".into(),
                waypoint: "default/wp".into(),
                from_namespace: false,
                ready: true,
                canary: Some(CanaryBinding {
                    waypoint: canary.into(),
                    weight: weight.map(str::to_owned),
                    ready,
                }),
            };
        let check = |bindings: Vec<WaypointBinding>| {
            let f = AmbientFacts {
                istiods: vec![istiod(Some("true"))],
                gateway: Some(gateway("cluster.local", GATEWAY_NAME)),
                global_services: vec!["default/a".into()],
                waypoint_bound: bindings,
                ..Default::default()
            };
            let mut r = Report::default();
            checks(&mut r, &[(&w, &f)], &Default::default());
            let i = status_of(&r, "cluster west", "waypoints of global services");
            (
                i.status,
                i.detail.clone(),
                i.hint.clone().unwrap_or_default(),
            )
        };
        let (status, detail, _) = check(vec![bound("default/a", "default/wp2", Some("5"), true)]);
        assert_eq!(status, Status::Pass);
        assert!(
            detail.ends_with(", canary Gateway default/wp2 at 5%"),
            "{detail}"
        );
        for (canary, weight, ready, why) in [
            ("default/wp2", Some("5"), false, "not ready"),
            (
                "default/wp2",
                Some("101"),
                true,
                "\"101\" is not a whole number",
            ),
            (
                "default/wp2",
                Some("5%"),
                true,
                "\"5%\" is not a whole number",
            ),
            ("default/wp", Some("5"), true, "the waypoint itself"),
        ] {
            let (status, detail, hint) = check(vec![bound("default/a", canary, weight, ready)]);
            assert_eq!(status, Status::Warn, "{detail}");
            assert!(
                detail.starts_with(&format!(
                    "canary waypoint takes nothing: default/a (canary Gateway {canary}: "
                )) && detail.contains(why),
                "{detail}"
            );
            assert!(hint.contains("send every tunnel to the waypoint"), "{hint}");
        }
    }

    #[test]
    fn each_rule_names_what_is_wrong() {
        let (w, e) = (seen("west", "w"), seen("east", "e"));
        let fw = AmbientFacts {
            istiods: vec![istiod(None)],
            gateway: Some(gateway("cluster.local", GATEWAY_NAME)),
            remote_gateways: vec![announce("e", Some(GATEWAY_NAME), None)],
            global_services: vec!["default/a".into(), "default/b".into()],
            waypoint_bound: vec![
                WaypointBinding {
                    service: "default/a".into(),
                    label: "wp".into(),
                    waypoint: "default/wp".into(),
                    from_namespace: false,
                    ready: true,
                    canary: None,
                },
                WaypointBinding {
                    service: "default/b".into(),
                    label: "shared".into(),
                    waypoint: "mesh/shared".into(),
                    from_namespace: true,
                    ready: false,
                    canary: None,
                },
            ],
            ..Default::default()
        };
        let fe = AmbientFacts {
            istiods: vec![istiod(Some("true"))],
            gateway: Some(gateway("example.org", GATEWAY_NAME)),
            remote_gateways: vec![announce("w", Some(GATEWAY_NAME), Some("1.2.3.4"))],
            global_services: vec!["default/a".into()],
            ..Default::default()
        };
        let mut r = Report::default();
        checks(&mut r, &[(&w, &fw), (&e, &fe)], &Default::default());
        use crate::cmd::check::report::Status;
        let i = status_of(&r, "cluster west", "istiod ambient multi-network");
        assert_eq!(i.status, Status::Fail);
        assert_eq!(
            status_of(&r, "cluster east", "istiod ambient multi-network").status,
            Status::Pass
        );
        let i = status_of(&r, "cluster west", "gateway HBONE identity");
        assert!(i.detail.contains("is missing"), "{}", i.detail);
        let i = status_of(&r, "cluster west", "peer networks announced");
        assert!(i.detail.contains("no status.addresses"), "{}", i.detail);
        // East's Gateway expects west's gateway in east's trust domain; west's presents its own.
        let i = status_of(&r, "cluster east", "peer networks announced");
        assert_eq!(i.status, Status::Fail);
        assert!(
            i.detail.contains("expect spiffe://example.org/")
                && i.detail.contains("presents spiffe://cluster.local/"),
            "{}",
            i.detail
        );
        // Only the binding to a waypoint that is not ready is named: the ready one is used.
        let i = status_of(&r, "cluster west", "waypoints of global services");
        assert_eq!(i.status, Status::Warn);
        assert_eq!(
            i.detail,
            "bound to a waypoint that is not ready (no status.addresses, or no such Gateway): \
             default/b (its namespace's istio.io/use-waypoint=shared, Gateway mesh/shared)"
        );
        assert!(
            i.hint
                .as_deref()
                .unwrap_or_default()
                .contains("without the waypoint's policy"),
            "{:?}",
            i.hint
        );
        assert_eq!(
            status_of(&r, "cluster east", "waypoints of global services").status,
            Status::Pass
        );
        let i = status_of(&r, "mesh", "global services on every side");
        assert_eq!(i.status, Status::Warn);
        assert_eq!(
            i.detail,
            "global on one side only: default/b (missing in east)"
        );
    }

    /// A gateway whose certificate comes from istiod needs no Secret: it presents its pod's
    /// service account.
    #[test]
    fn an_istiod_certificate_needs_no_secret() {
        let w = seen("west", "w");
        let d = deployment(
            json!({"metadata": {"name": GATEWAY_NAME, "namespace": "istio-system"},
            "spec": {"selector": {}, "template": {"spec": {"serviceAccountName": GATEWAY_NAME, "containers": [{"name": "gateway",
                "args": ["--hbone-listen", ":15008", "--ca-root", "/var/run/secrets/istio/root-cert.pem"]}]}}}}),
        );
        let f = AmbientFacts {
            istiods: vec![istiod(Some("true"))],
            gateway: Some(d),
            ..Default::default()
        };
        let mut r = Report::default();
        checks(&mut r, &[(&w, &f)], &Default::default());
        use crate::cmd::check::report::Status;
        let i = status_of(&r, "cluster west", "gateway HBONE identity");
        assert_eq!(i.status, Status::Pass, "{}", i.detail);
        assert!(i.detail.contains("issued by istiod"), "{}", i.detail);
    }
}
