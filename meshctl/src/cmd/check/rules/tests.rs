//! The rules called with hand-built facts: no server, no files.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use serde_json::{Value, json};

use super::super::facts::{ClusterFacts, LiveFailure, Seen, StoredRemote, Unread};
use super::super::gather::stored_remotes;
use super::super::hints::Invocation;
use super::super::report::{Item, Report, Status};
use super::cluster::{gateway_address, read_cluster, unread_cluster};
use super::expiry::{DEFAULT_WARN_BEFORE, stored_credential};
use super::pair::{live, reader_account, reissue_of, stored_secret};
use crate::istio::{CLUSTER_NAME_ANNOTATION, NETWORK_LABEL};
use crate::kube::Failure;
use crate::mesh::credentials::credential_of_token;
use crate::mesh::remote_secret::{remote_kubeconfig, remote_secret};

fn typed<K: serde::de::DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn find<'a>(items: &'a [Item], check: &str) -> &'a Item {
    items
        .iter()
        .find(|i| i.check == check)
        .unwrap_or_else(|| panic!("no {check:?} in {items:?}"))
}

/// A valid cluster bundle as the cacerts Secret carries it (generated in memory).
fn cacerts_secret() -> Secret {
    let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&pki::IntermediateOptions::new("west"))
        .unwrap();
    let data: BTreeMap<String, ByteString> = ca
        .files(std::path::Path::new("b"))
        .into_iter()
        .map(|f| {
            let name = f.path.file_name().unwrap().to_string_lossy().into_owned();
            (name, ByteString(f.contents.into_bytes()))
        })
        .collect();
    Secret {
        data: Some(data),
        ..Default::default()
    }
}

fn pod(ready: bool) -> Pod {
    let status = if ready { "True" } else { "False" };
    typed(json!({"status": {"conditions": [{"type": "Ready", "status": status}]}}))
}

/// A cluster where every check passes.
fn healthy() -> ClusterFacts {
    ClusterFacts {
        context: "west".into(),
        ns: "istio-system".into(),
        namespace: Some(typed(json!({"metadata": {"name": "istio-system",
            "labels": {NETWORK_LABEL: "west-net"},
            "annotations": {CLUSTER_NAME_ANNOTATION: "west-cluster"}}}))),
        cacerts: Some(cacerts_secret()),
        gateway: Some(typed(
            json!({"metadata": {"labels": {NETWORK_LABEL: "west-net"}},
            "spec": {"type": "LoadBalancer",
                "ports": [{"name": "tls", "port": 15443, "targetPort": 15443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.10"}]}}}),
        )),
        pods: vec![pod(true), pod(true)],
        nodes: None,
        gateway_role: Some(Ok(json!({"rules": crate::mesh::gateway::gateway_rules()}))),
        gateway_denied: Some(Ok(vec![])),
        gateway_binding: Some(Ok(json!({
            "roleRef": {"kind": "ClusterRole", "name": "meshctl-eastwestgateway-istio-system"},
            "subjects": [{"kind": "ServiceAccount", "name": "istio-eastwestgateway",
                "namespace": "istio-system"}]}))),
    }
}

fn judge(f: &ClusterFacts, flag: Option<&str>) -> (Vec<Item>, Seen) {
    let mut r = Report::default();
    let inv = Invocation::default();
    let seen = read_cluster(&mut r, f, "https://172.18.0.2:6443", flag, &inv);
    (r.items, seen)
}

#[test]
fn a_healthy_cluster_passes_and_yields_its_name_network_and_root() {
    let (items, seen) = judge(&healthy(), None);
    assert_eq!(items.len(), 7, "{items:?}");
    assert!(items.iter().all(|i| i.status == Status::Pass), "{items:?}");
    assert_eq!(find(&items, "gateway pods ready").detail, "2 of 2 ready");
    assert_eq!(seen.name, "west-cluster");
    assert!(!seen.name_guessed && seen.name_known && seen.unread.is_none());
    assert_eq!(seen.network.as_deref(), Some("west-net"));
    assert_eq!(seen.root.as_ref().map(Vec::len), Some(1));
    // --cluster-name wins over the recorded name; without either the context is a guess.
    assert_eq!(judge(&healthy(), Some("flagged")).1.name, "flagged");
    let mut f = healthy();
    f.namespace = Some(typed(json!({"metadata": {"name": "istio-system"}})));
    let seen = judge(&f, None).1;
    assert!(seen.name == "west" && seen.name_guessed);
}

/// The gateway's reads as the API server answers for its account: all granted passes; the
/// PeerAuthentication reads denied (a role from before them) warn with the patch adding them
/// to the role; a denied core read fails; a missing binding, or one binding another role or
/// account, gets the command that fixes the binding instead; no role, an unreadable role or
/// no answer is skipped with why.
#[test]
fn the_gateway_account_is_judged_by_the_api_servers_answers() {
    use super::super::facts::Ungranted;
    let check = super::gateway_grants::CHECK;
    let denied = |group: &str, resource: &str| {
        Some(Ok(vec![Ungranted {
            group: group.into(),
            resource: resource.into(),
            verbs: vec!["list".into(), "watch".into()],
        }]))
    };
    let judged = |edit: &dyn Fn(&mut ClusterFacts)| {
        let mut f = healthy();
        edit(&mut f);
        judge(&f, None).0
    };
    let items = judged(&|_| {});
    assert_eq!(find(&items, check).status, Status::Pass);
    // The role as an older meshctl wrote it, and the API server's answer for it.
    let older = || {
        let rules = super::gateway_grants::rules_before_peer_authentications();
        Some(Ok(json!({"rules": rules})))
    };
    let items = judged(&|f| {
        f.gateway_role = older();
        f.gateway_denied = denied("security.istio.io", "peerauthentications");
    });
    let i = find(&items, check);
    assert_eq!(i.status, Status::Warn, "{i:?}");
    assert!(
        i.detail.contains(
            "istio-system/istio-eastwestgateway may not list, watch peerauthentications.security.istio.io"
        ),
        "{i:?}"
    );
    let hint = i.hint.as_deref().unwrap();
    assert!(
        hint.contains("kubectl --context west -n istio-system patch clusterrole meshctl-eastwestgateway-istio-system --type=json -p '[{\"op\":\"add\",\"path\":\"/rules/-\",\"value\":{\"apiGroups\":[\"security.istio.io\"],\"resources\":[\"peerauthentications\"],\"verbs\":[\"list\",\"watch\"]}}]'"),
        "{hint}"
    );
    let items = judged(&|f| f.gateway_denied = denied("", "services"));
    let i = find(&items, check);
    assert_eq!(i.status, Status::Fail, "{i:?}");
    assert!(i.detail.contains("may not list, watch services"), "{i:?}");
    // The binding's fixes: made, made again (a roleRef cannot change), or the account added.
    let binding = |edit: &dyn Fn(&mut Value)| {
        let mut b = healthy().gateway_binding.unwrap().unwrap();
        edit(&mut b);
        Some(Ok(b))
    };
    let role = "meshctl-eastwestgateway-istio-system";
    let create = format!(
        "create clusterrolebinding {role} --clusterrole={role} --serviceaccount=istio-system:istio-eastwestgateway"
    );
    // Every command of a hint names the cluster's context.
    let kubectl = "kubectl --context west -n istio-system";
    let cases: [(Option<Result<Value, String>>, String); 3] = [
        (None, format!("{kubectl} {create}")),
        (
            binding(&|b| b["roleRef"]["name"] = json!("view")),
            format!("{kubectl} delete clusterrolebinding {role} && {kubectl} {create}"),
        ),
        (
            binding(&|b| b["subjects"][0]["namespace"] = json!("default")),
            format!(
                "{kubectl} patch clusterrolebinding {role} --type=json -p '[{{\"op\":\"add\",\"path\":\"/subjects/-\""
            ),
        ),
    ];
    for (b, want) in cases {
        let items = judged(&|f| {
            f.gateway_binding = b.clone();
            f.gateway_denied = denied("", "pods");
        });
        let i = find(&items, check);
        assert_eq!(i.status, Status::Fail, "{i:?}");
        assert!(i.hint.as_deref().unwrap().contains(&want), "{want}: {i:?}");
    }
    // A binding to make and a role from before PeerAuthentications: the hint does both.
    let items = judged(&|f| {
        f.gateway_binding = None;
        f.gateway_role = older();
        f.gateway_denied = denied("security.istio.io", "peerauthentications");
    });
    let hint = find(&items, check).hint.clone().unwrap();
    assert!(
        hint.contains(&format!("{kubectl} {create}; then add the rules"))
            && hint.contains(&format!("{kubectl} patch clusterrole {role} --type=json")),
        "{hint}"
    );
    // Another binding granting everything: the answer counts, not this role's rules.
    let items = judged(&|f| f.gateway_role = older());
    assert_eq!(find(&items, check).status, Status::Pass);
    type Edit<'a> = &'a dyn Fn(&mut ClusterFacts);
    let skipped: [(Edit, &str); 3] = [
        (
            &|f| f.gateway_role = None,
            "no ClusterRole meshctl-eastwestgateway-istio-system",
        ),
        (
            &|f| f.gateway_role = Some(Err("403 Forbidden".into())),
            "not readable (403 Forbidden): run check with a context that may get clusterroles",
        ),
        (
            &|f| f.gateway_denied = Some(Err("403".into())),
            "may create subjectaccessreviews.authorization.k8s.io",
        ),
    ];
    for (edit, why) in skipped {
        let items = judged(edit);
        let i = find(&items, check);
        assert_eq!(i.status, Status::Skip, "{i:?}");
        assert!(i.detail.contains(why), "{why}: {i:?}");
    }
}

/// istiod takes a Service for a network's gateway only by its network label, and advertises
/// its port 15443 (or the gatewayPort label's) to the other networks (`getGatewayDetails`).
/// Found by an audit session: each of these passed.
#[test]
fn the_gateway_service_is_labelled_and_forwards_the_gateway_port() {
    let with_service = |svc: Value| {
        let mut f = healthy();
        f.gateway = Some(typed(svc));
        judge(&f, None).0
    };
    let lb = json!({"loadBalancer": {"ingress": [{"ip": "172.18.0.10"}]}});
    let items = with_service(json!({"metadata": {"labels": {}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 15443, "targetPort": "tls"}]},
        "status": lb}));
    let i = find(&items, "network label");
    assert_eq!(i.status, Status::Fail, "{i:?}");
    assert!(
        i.detail.contains("has no topology.istio.io/network label"),
        "{i:?}"
    );
    assert_eq!(
        find(&items, "gateway Service forwards the gateway port").status,
        Status::Pass
    );
    let port = |labels: Value, ports: Value| {
        let items = with_service(json!({"metadata": {"labels": labels},
            "spec": {"type": "LoadBalancer", "ports": ports}, "status": lb}));
        find(&items, "gateway Service forwards the gateway port").clone()
    };
    let net = json!({NETWORK_LABEL: "west-net"});
    let i = port(net.clone(), json!([{"port": 443, "targetPort": 15443}]));
    assert!(
        i.status == Status::Fail && i.detail.contains("advertises port 15443"),
        "{i:?}"
    );
    let i = port(net.clone(), json!([{"port": 15443, "targetPort": 15021}]));
    assert!(
        i.status == Status::Fail && i.detail.contains("target port 15021"),
        "{i:?}"
    );
    let mut labelled = net.clone();
    labelled["networking.istio.io/gatewayPort"] = json!("443");
    let i = port(
        labelled.clone(),
        json!([{"port": 15443, "targetPort": 15443}]),
    );
    assert!(
        i.status == Status::Fail && i.detail.contains("advertises port 443"),
        "{i:?}"
    );
    let i = port(labelled, json!([{"port": 443, "targetPort": "tls"}]));
    assert_eq!(i.status, Status::Pass, "{i:?}");
}

#[test]
fn cacerts_missing_or_broken_fails_with_the_apply_hint() {
    let mut f = healthy();
    f.cacerts = None;
    let (items, seen) = judge(&f, None);
    let i = find(&items, "cacerts present and valid");
    assert_eq!(i.status, Status::Fail);
    assert!(i.detail.contains("no Secret istio-system/cacerts"), "{i:?}");
    let hint = i.hint.as_deref().unwrap();
    assert!(
        hint.contains("meshctl cacerts apply certs/west-cluster --context west"),
        "{hint}"
    );
    assert!(seen.root.is_none());

    let mut s = cacerts_secret();
    s.data.as_mut().unwrap().remove(pki::CA_KEY);
    f.cacerts = Some(s);
    let (items, _) = judge(&f, None);
    let i = find(&items, "cacerts present and valid");
    assert_eq!(i.status, Status::Fail);
    assert!(i.detail.contains("key ca-key.pem missing"), "{i:?}");
    assert!(i.hint.as_deref().unwrap().contains("--force"));
}

/// A private key appended to the stored root-cert.pem (which istiod publishes in every
/// namespace) fails the check, named without quoting the key.
#[test]
fn a_key_in_the_stored_root_cert_fails_without_being_quoted() {
    let mut f = healthy();
    let mut s = cacerts_secret();
    let data = s.data.as_mut().unwrap();
    let key = data[pki::CA_KEY].0.clone();
    let root = &mut data.get_mut(pki::ROOT_CERT).unwrap().0;
    root.extend_from_slice(&key);
    f.cacerts = Some(s);
    let (items, _) = judge(&f, None);
    let i = find(&items, "cacerts present and valid");
    assert_eq!(i.status, Status::Fail);
    assert!(
        i.detail.contains("root-cert.pem") && i.detail.contains("PRIVATE KEY"),
        "{i:?}"
    );
    let key_text = String::from_utf8(key).unwrap();
    let body = key_text.lines().nth(1).unwrap();
    assert!(!i.detail.contains(body), "the key was quoted: {i:?}");
}

#[test]
fn network_labels_must_exist_and_agree() {
    let mut f = healthy();
    f.gateway.as_mut().unwrap().metadata.labels =
        Some([(NETWORK_LABEL.to_string(), "other-net".to_string())].into());
    let i = find(&judge(&f, None).0, "network label").clone();
    assert_eq!(i.status, Status::Fail);
    assert!(
        i.detail.contains("west-net") && i.detail.contains("other-net"),
        "{i:?}"
    );
    // The fix puts the namespace back; never `gateway install` with defaults, which would
    // reset the image, Service type and protocols the join chose.
    let hint = i.hint.as_deref().unwrap();
    assert!(
        hint.starts_with("meshctl label-network other-net --context "),
        "{hint}"
    );
    assert!(!hint.contains("gateway install"), "{hint}");
    f.namespace = Some(typed(json!({"metadata": {"name": "istio-system"}})));
    let (items, seen) = judge(&f, None);
    let i = find(&items, "network label");
    assert!(i.status == Status::Fail && i.hint.as_deref().unwrap().contains("label-network"));
    assert!(seen.network.is_none());
}

#[test]
fn gateway_pods_none_some_or_all_ready() {
    let check = "gateway pods ready";
    for (pods, status, detail) in [
        (
            vec![],
            Status::Fail,
            "no pods with label app=istio-eastwestgateway",
        ),
        (vec![pod(false)], Status::Fail, "0 of 1 ready"),
        (vec![pod(true), pod(false)], Status::Warn, "1 of 2 ready"),
    ] {
        let mut f = healthy();
        f.pods = pods;
        let (items, _) = judge(&f, None);
        let i = find(&items, check);
        assert_eq!((i.status, i.detail.as_str()), (status, detail));
        assert!(
            i.hint
                .as_deref()
                .unwrap()
                .contains("describe pods -l app=istio-eastwestgateway")
        );
    }
    let mut f = healthy();
    f.gateway = None;
    let i = find(
        &judge(&f, None).0,
        "gateway Service has an external address",
    )
    .clone();
    assert!(i.status == Status::Fail && i.hint.unwrap().contains("meshctl gateway install"));
}

#[test]
fn gateway_address_cases() {
    let lb = |status: Value| -> Service {
        typed(json!({"spec": {"type": "LoadBalancer"}, "status": status}))
    };
    assert!(
        gateway_address(&lb(json!({})), None)
            .unwrap_err()
            .contains("pending")
    );
    assert_eq!(
        gateway_address(
            &lb(json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})),
            None
        )
        .unwrap(),
        "1.2.3.4"
    );
    let host = lb(json!({"loadBalancer": {"ingress": [{"hostname": "gw.example.com"}]}}));
    assert!(
        gateway_address(&host, None)
            .unwrap()
            .contains("RESOLVE_HOSTNAME_GATEWAYS")
    );
    // ClusterIP (or no type): no address istiod would advertise, said as such, not "pending".
    let cluster_ip: Service = typed(json!({"spec": {"type": "ClusterIP"},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}));
    let e = gateway_address(&cluster_ip, None).unwrap_err();
    assert!(e.starts_with("Service type ClusterIP"), "{e}");
    let bare: Service =
        typed(json!({"spec": {"type": "NodePort", "ports": [{"port": 15021, "nodePort": 31021}]}}));
    assert!(
        gateway_address(&bare, None)
            .unwrap_err()
            .contains("without a nodePort")
    );
}

/// istiod advertises a NodePort gateway only with `traffic.istio.io/nodeSelector`, at the
/// ExternalIP addresses of the nodes it selects (`isNodePortGatewayService`, `onNodeEvent`).
#[test]
fn a_node_port_gateway_needs_the_annotation_and_external_ips() {
    let np = |annotations: Value| -> Service {
        typed(json!({"metadata": {"annotations": annotations},
            "spec": {"type": "NodePort", "ports": [{"port": 15443, "nodePort": 31443}]}}))
    };
    let node = |name: &str, zone: &str, addrs: Value| -> k8s_openapi::api::core::v1::Node {
        typed(json!({"metadata": {"name": name, "labels": {"zone": zone}},
            "status": {"addresses": addrs}}))
    };
    let kind_node = node(
        "kind",
        "a",
        json!([{"type": "InternalIP", "address": "172.18.0.2"}]),
    );
    let cloud = node(
        "n1",
        "b",
        json!([{"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "ExternalIP", "address": "203.0.113.5"}]),
    );
    let e = gateway_address(&np(json!({})), Some(&Ok(vec![cloud.clone()]))).unwrap_err();
    assert!(
        e.contains("without the traffic.istio.io/nodeSelector annotation"),
        "{e}"
    );
    let annotated = np(json!({"traffic.istio.io/nodeSelector": "{}"}));
    let e = gateway_address(&annotated, Some(&Ok(vec![kind_node.clone()]))).unwrap_err();
    assert!(
        e.contains("none of the 1 node(s)") && e.contains("ExternalIP"),
        "{e}"
    );
    let ok = gateway_address(
        &annotated,
        Some(&Ok(vec![kind_node.clone(), cloud.clone()])),
    );
    assert!(
        ok.unwrap()
            .contains("NodePort 31443 for 15443 on 203.0.113.5")
    );
    // The selector picks nodes; one istiod cannot parse picks every node, as in istiod.
    let zone_a = np(json!({"traffic.istio.io/nodeSelector": "{\"zone\": \"a\"}"}));
    assert!(gateway_address(&zone_a, Some(&Ok(vec![kind_node.clone(), cloud.clone()]))).is_err());
    let junk = np(json!({"traffic.istio.io/nodeSelector": "zone=b"}));
    assert!(gateway_address(&junk, Some(&Ok(vec![kind_node, cloud]))).is_ok());
    // Nodes that cannot be listed: not judged.
    let unread = gateway_address(&annotated, Some(&Err("403".into()))).unwrap();
    assert!(unread.contains("not checked"), "{unread}");
}

#[test]
fn an_unread_cluster_fails_once_and_skips_its_checks() {
    let mut r = Report::default();
    let why = Unread::Refused {
        server: "https://10.0.0.1:6443".into(),
        user: "admin".into(),
        error: "401".into(),
    };
    let seen = unread_cluster(&mut r, "east", None, &why);
    let statuses: Vec<Status> = r.items.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        [
            Status::Pass,
            Status::Fail,
            Status::Skip,
            Status::Skip,
            Status::Skip,
            Status::Skip,
            Status::Skip
        ]
    );
    assert!(
        find(&r.items, "credential accepted")
            .hint
            .as_deref()
            .unwrap()
            .contains("\"admin\"")
    );
    assert_eq!(seen.unread, Some("refusing meshctl's credential"));
    assert!(!seen.name_known && seen.name_guessed);
    let mut r = Report::default();
    let why = Unread::Unreachable {
        error: "timed out".into(),
        fix: "check the route".into(),
    };
    let seen = unread_cluster(&mut r, "east", Some("east-cluster"), &why);
    assert_eq!(r.items[0].status, Status::Fail);
    assert!(
        r.items[1..]
            .iter()
            .all(|i| i.status == Status::Skip && i.detail == "cluster east is unreachable")
    );
    assert!(seen.name_known && seen.name == "east-cluster");
}

fn seen(ctx: &str, name: &str, guessed: bool) -> Seen {
    Seen {
        context: ctx.into(),
        name: name.into(),
        name_known: true,
        name_guessed: guessed,
        unread: None,
        network: None,
        root: None,
        uid: None,
    }
}

/// The fix a pair rule is given for a missing or broken remote secret.
const REJOIN: &str = "re-run meshctl join (or meshctl create-remote-secret ...)";

fn jwt(claims: &str) -> String {
    let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!("{}.{}.sig", b("{}"), b(claims))
}

/// The remote secret for `cluster` as `join` applies it, then as the API server returns it.
fn stored(cluster: &str, server: &str, token: &str) -> Secret {
    let kc = remote_kubeconfig(cluster, server, b"CA", token, None);
    typed(remote_secret(cluster, "istio-system", &kc))
}

/// "token expiry" as `check` judges it: the expiry rule, with this horizon.
fn judge_expiry(r: &mut Report, source: &Seen, secrets: &[Secret], now: u64, horizon: &str) {
    let horizon = humantime::parse_duration(horizon).unwrap();
    let stored = (secrets, source.name.as_str());
    stored_credential(r, "s", stored, ("refresh", "rejoin"), now, horizon);
}

/// The stored-secret checks of one pair as `check` runs them: the pair rules, then the
/// expiry rule's "token expiry" when the pair rules accepted the secret.
fn judge_pair(source: &Seen, secrets: &[Secret], allow: bool, now: u64) -> (Vec<Item>, bool) {
    let mut r = Report::default();
    let target = seen("west", "west-cluster", false);
    let stored: Vec<StoredRemote> = secrets.iter().flat_map(stored_remotes).collect();
    let k = stored_secret(
        &mut r,
        (source, &target),
        "istio-system",
        &stored,
        allow,
        REJOIN,
    );
    if k.is_some() {
        judge_expiry(&mut r, source, secrets, now, DEFAULT_WARN_BEFORE);
    }
    (r.items, k.is_some())
}

/// gather parses each kubeconfig once; the pair rules judge the parsed form (or the parse
/// error); the expiry rule judges the token of the same Secret.
#[test]
fn a_stored_kubeconfig_is_parsed_once_by_gather() {
    let now = 1_700_000_000;
    let good = stored(
        "east-cluster",
        "https://10.0.0.2:6443",
        &jwt(r#"{"exp":1700000600}"#),
    );
    let parsed = stored_remotes(&good).remove(0);
    assert_eq!(parsed.cluster, "east-cluster");
    assert!(parsed.kubeconfig.is_ok(), "{parsed:?}");
    let mut not_utf8 = good.clone();
    not_utf8.data = Some(BTreeMap::from([(
        "east-cluster".to_string(),
        ByteString(vec![0xff, 0xfe]),
    )]));
    let broken = stored_remotes(&not_utf8).remove(0);
    assert!(broken.kubeconfig.is_err());

    let east = seen("east", "east-cluster", false);
    let target = seen("west", "west-cluster", false);
    let judge = |stored: &StoredRemote| {
        let mut r = Report::default();
        let live = stored_secret(
            &mut r,
            (&east, &target),
            "istio-system",
            std::slice::from_ref(stored),
            false,
            REJOIN,
        )
        .is_some();
        (r.items, live)
    };
    let (items, live) = judge(&parsed);
    assert!(live);
    // The token's expiry (10 minutes away) is the expiry rule's finding, from the same Secret.
    let mut r = Report::default();
    judge_expiry(&mut r, &east, std::slice::from_ref(&good), now, "1d");
    let i = find(&r.items, "token expiry");
    assert_eq!(i.status, Status::Warn);
    assert!(i.detail.contains("expires in 10m"), "{}", i.detail);
    assert!(
        !items.iter().any(|i| i.check == "token expiry"),
        "judged once, by the expiry rule: {items:?}"
    );

    let (items, live) = judge(&broken);
    assert!(!live);
    let i = find(&items, "kubeconfig works");
    assert_eq!(i.status, Status::Fail);
    assert!(
        i.detail.contains("cannot be used: it is not UTF-8 text"),
        "{}",
        i.detail
    );
}

#[test]
fn jwt_exp_reads_the_claim() {
    let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let exp = |t: &str| credential_of_token(t).expires;
    let t = format!("{}.{}.sig", b("{}"), b(r#"{"exp":1700000000,"sub":"x"}"#));
    assert_eq!(exp(&t), Some(1_700_000_000));
    assert_eq!(exp(&format!("{}.{}.sig", b("{}"), b("{}"))), None);
    assert_eq!(exp("not-a-jwt"), None);
}

#[test]
fn a_missing_secret_fails_and_a_guessed_id_says_so() {
    let other = [stored("north", "https://10.0.0.3:6443", "t")];
    let (items, live) = judge_pair(&seen("east", "east-cluster", false), &other, false, 0);
    assert!(!live);
    let i = find(&items, "remote secret present");
    assert_eq!(i.status, Status::Fail);
    assert!(
        i.hint
            .as_deref()
            .unwrap()
            .starts_with("re-run meshctl join")
    );
    let (items, _) = judge_pair(&seen("east", "east", true), &other, false, 0);
    let hint = find(&items, "remote secret present").hint.clone().unwrap();
    assert!(
        hint.contains("is a guess") && hint.contains("--cluster-name east=<that ID>"),
        "{hint}"
    );
}

#[test]
fn a_stored_secret_is_judged_without_calling_its_cluster() {
    let now = 1_700_000_000;
    let east = seen("east", "east-cluster", false);
    let good = stored(
        "east-cluster",
        "https://10.0.0.2:6443",
        &jwt(r#"{"exp":1800000000}"#),
    );
    let (items, live) = judge_pair(&east, std::slice::from_ref(&good), false, now);
    assert!(live);
    assert!(items.iter().all(|i| i.status == Status::Pass), "{items:?}");
    assert_eq!(
        find(&items, "remote secret present").detail,
        "istio-system/istio-remote-secret-east-cluster"
    );
    // Two Secrets for one cluster: a warning naming both, join's own judged, the other to
    // delete (found by an audit session: neither was named).
    let mut renamed = good.clone();
    renamed.metadata.name = Some("my-east-creds".into());
    let (items, _) = judge_pair(&east, &[renamed.clone(), good.clone()], false, now);
    let i = find(&items, "remote secret present");
    assert_eq!(i.status, Status::Warn);
    assert!(
        i.detail.contains(
            "istio-system/istio-remote-secret-east-cluster and istio-system/my-east-creds"
        ) && i
            .detail
            .contains("the checks below judge istio-system/istio-remote-secret-east-cluster"),
        "{i:?}"
    );
    assert!(
        i.hint
            .as_deref()
            .unwrap()
            .ends_with("delete secret my-east-creds)"),
        "{i:?}"
    );
    // A Secret under another name is named as it is.
    let (items, _) = judge_pair(&east, &[renamed], false, now);
    assert_eq!(
        find(&items, "remote secret present").detail,
        "istio-system/my-east-creds"
    );
    // istiod registers every key of a Secret: a second key is no reason to miss the first.
    let mut two_keys = good.clone();
    let data = two_keys.data.as_mut().unwrap();
    let v = data["east-cluster"].clone();
    data.insert("a-old".into(), v);
    let (items, _) = judge_pair(&east, &[two_keys], false, now);
    assert_eq!(find(&items, "remote secret present").status, Status::Pass);
    // Loopback: refused unless allowed.
    let lo = [stored("east-cluster", "https://127.0.0.1:6443", "t")];
    let i = find(
        &judge_pair(&east, &lo, false, now).0,
        "no loopback server address",
    )
    .clone();
    assert!(i.status == Status::Fail && i.hint.unwrap().contains("--server east="));
    let i = find(
        &judge_pair(&east, &lo, true, now).0,
        "no loopback server address",
    )
    .clone();
    assert!(i.status == Status::Pass && i.detail.contains("allowed by --allow-loopback-server"));
}

/// Every case the pair rules' own one-day "token expiry" judged, now judged by the expiry
/// rule from the stored Secret (a one-day `--warn-before` for the same boundaries).
#[test]
fn token_expiry_at_a_given_time() {
    let now = 1_700_000_000;
    let east = seen("east", "east-cluster", false);
    let judge = |secret: Secret| {
        let mut r = Report::default();
        judge_expiry(&mut r, &east, &[secret], now, "1d");
        r.items.remove(0)
    };
    let at = |token: &str| judge(stored("east-cluster", "https://10.0.0.2:6443", token));
    let expired = at(&jwt(&format!(r#"{{"exp":{}}}"#, now - 3600)));
    assert_eq!(expired.status, Status::Fail);
    assert!(expired.detail.contains("expired 1h ago"), "{expired:?}");
    let soon = at(&jwt(&format!(r#"{{"exp":{}}}"#, now + 7200)));
    assert_eq!(soon.status, Status::Warn);
    assert!(soon.detail.contains("expires in 2h"), "{soon:?}");
    let later = at(&jwt(&format!(r#"{{"exp":{}}}"#, now + 3 * 86400)));
    assert_eq!(later.status, Status::Pass);
    assert!(later.detail.contains("expires in 3days"), "{later:?}");
    let legacy = at(&jwt(
        r#"{"sub":"system:serviceaccount:istio-system:reader"}"#,
    ));
    assert!(legacy.detail.contains("never expires"), "{legacy:?}");
    assert_eq!(at("opaque-token").status, Status::Pass);
    // No credential at all.
    let kc = remote_kubeconfig("east-cluster", "https://10.0.0.2:6443", b"CA", "t", None);
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&kc).unwrap();
    doc["users"][0]["user"] = serde_yaml::Value::Mapping(Default::default());
    let kc = serde_yaml::to_string(&doc).unwrap();
    let none = judge(typed(remote_secret("east-cluster", "istio-system", &kc)));
    assert_eq!(none.status, Status::Fail);
    // A credential that cannot be read (no server) fails with the reason.
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&kc).unwrap();
    doc["clusters"][0]["cluster"]["server"] = serde_yaml::Value::Null;
    let kc = serde_yaml::to_string(&doc).unwrap();
    let unreadable = judge(typed(remote_secret("east-cluster", "istio-system", &kc)));
    assert_eq!(unreadable.status, Status::Fail);
    assert!(unreadable.detail.contains("no server"), "{unreadable:?}");
}

#[test]
fn live_results_name_the_fix() {
    let run = |works: Result<&str, (Failure, &str)>, missing| {
        let mut r = Report::default();
        let works = works.map_err(|(f, d)| (LiveFailure::Request(f), d));
        live(&mut r, "s", works, missing, ("REJOIN", "RECREATE"));
        r.items
    };
    let items = run(Err((Failure::CredentialRefused, "401")), None);
    assert!(
        items[0]
            .hint
            .as_deref()
            .unwrap()
            .starts_with("issue a new token: REJOIN")
    );
    assert_eq!(
        (items[1].status, items[1].detail.as_str()),
        (Status::Skip, "the stored kubeconfig does not work")
    );
    let items = run(Err((Failure::Unreachable, "timeout")), None);
    assert!(
        items[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("the API server is unreachable from here")
    );
    // 403: the token works, the binding does not; named from the server's message.
    let denied = "listing services: services is forbidden: User \
        \"system:serviceaccount:istio-system:other-sa\" cannot list resource \"services\" in API \
        group \"\" at the cluster scope (403 Forbidden)";
    let items = run(Err((Failure::Answered, denied)), None);
    let hint = items[0].hint.as_deref().unwrap();
    assert!(
        hint.contains("service account istio-system/other-sa lacks permission")
            && hint.contains("ClusterRoleBinding meshctl-istio-reader-istio-system.other-sa")
            && hint.contains("--service-account other-sa")
            && !hint.contains("expired"),
        "{hint}"
    );
    let items = run(
        Err((
            Failure::Answered,
            &denied.replace(":other-sa", ":istio-reader-service-account"),
        )),
        None,
    );
    let hint = items[0].hint.as_deref().unwrap();
    assert!(
        hint.contains("ClusterRoleBinding meshctl-istio-reader-istio-system ")
            && !hint.contains("--service-account"),
        "{hint}"
    );
    // A message without a service account still says what to look at.
    let items = run(Err((Failure::Answered, "forbidden (403 Forbidden)")), None);
    let hint = items[0].hint.as_deref().unwrap();
    assert!(hint.contains("lacks permission") && hint.contains("<namespace>.<service-account>"));
    let items = run(Err((Failure::Answered, "not found (404 Not Found)")), None);
    assert!(!items[0].hint.as_deref().unwrap().contains("permission"));
    let items = run(Ok("listed 3 services"), Some(Ok(vec!["list pods".into()])));
    assert_eq!(items[0].status, Status::Pass);
    assert!(items[1].status == Status::Fail && items[1].detail.contains("may not list pods"));
    let items = run(Ok("listed 3 services"), Some(Ok(vec![])));
    assert_eq!(items[1].status, Status::Pass);
    assert!(
        items[1].detail.contains("list/watch"),
        "{}",
        items[1].detail
    );
}

#[test]
fn a_gateway_with_addresses_of_both_families_is_warned_about() {
    let check = "gateway addresses of one IP family";
    let (items, _) = judge(&healthy(), None);
    assert!(
        items.iter().all(|i| i.check != check),
        "silent for one family"
    );
    let mut f = healthy();
    f.gateway = Some(typed(json!({
        "metadata": {"namespace": "istio-system", "labels": {NETWORK_LABEL: "west-net"}},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "PreferDualStack"},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.18.0.10"}, {"ip": "fc00:f853::10"}]}}})));
    let (items, _) = judge(&f, None);
    let i = find(&items, check);
    assert_eq!(i.status, Status::Warn);
    assert!(
        i.detail.contains("172.18.0.10") && i.detail.contains("fc00:f853::10"),
        "{}",
        i.detail
    );
    let hint = i.hint.as_deref().unwrap();
    assert!(
        hint.contains("-n istio-system patch svc istio-eastwestgateway")
            && hint.contains("SingleStack"),
        "{hint}"
    );
    // The address check itself still passes: istiod does find addresses.
    assert_eq!(
        find(&items, "gateway Service has an external address").status,
        Status::Pass
    );
}

#[test]
fn the_reader_account_is_judged_from_the_token_and_the_binding() {
    let judge = |token: &str, binding: Option<bool>| {
        let mut r = Report::default();
        let c = credential_of_token(token);
        reader_account(&mut r, "s", "esc", Some(&c), binding, "RECREATE");
        r.items.remove(0)
    };
    let sub = |who: &str| {
        jwt(&format!(
            r#"{{"exp":1800000000,"iat":1799996400,"sub":"system:serviceaccount:{who}"}}"#
        ))
    };
    let i = judge(&sub("esc:istio-reader-service-account"), None);
    assert_eq!(
        (i.status, i.detail.as_str()),
        (Status::Pass, "esc/istio-reader-service-account")
    );
    let i = judge(&sub("kube-system:istio-reader-service-account"), None);
    assert_eq!(i.status, Status::Warn, "{i:?}");
    assert!(
        i.detail
            .contains("an account of namespace kube-system, not esc"),
        "{i:?}"
    );
    assert!(i.hint.unwrap().ends_with("reader: RECREATE"));
    assert_eq!(
        judge(&sub("esc:mesh-reader"), Some(true)).status,
        Status::Pass
    );
    assert_eq!(judge(&sub("esc:istiod"), Some(false)).status, Status::Warn);
    assert_eq!(judge(&sub("esc:mesh-reader"), None).status, Status::Skip);
    let i = judge("opaque-token", None);
    assert!(
        i.status == Status::Warn && i.detail.contains("not a service-account JWT"),
        "{i:?}"
    );
    // What a remote secret made again repeats: the lifetime, a reader's account.
    let c = credential_of_token(&sub("esc:mesh-reader"));
    let reissue = reissue_of(Some(&c), Some(true));
    assert_eq!(
        reissue.flags(),
        " --token-ttl 1h --service-account mesh-reader"
    );
    assert_eq!(reissue_of(Some(&c), Some(false)).flags(), " --token-ttl 1h");
}

#[test]
fn an_unusable_stored_kubeconfig_is_not_blamed_on_the_server() {
    let mut r = Report::default();
    let works = Err((
        LiveFailure::Unusable,
        "the stored kubeconfig cannot be used",
    ));
    live(&mut r, "s", works, None, ("REJOIN", "RECREATE"));
    let hint = r.items[0].hint.clone().unwrap();
    assert!(
        hint.contains("the stored kubeconfig is unusable")
            && hint.ends_with("re-create the remote secret: RECREATE")
            && !hint.contains("answered"),
        "{hint}"
    );
    assert_eq!(r.items[1].status, Status::Skip);
}

/// The server a stored kubeconfig uses is its current context's, and a server URL is never
/// printed with user info or a query (found by an audit session: both were).
#[test]
fn stored_servers_are_read_and_shown_as_istiod_uses_them() {
    let k: kube::config::Kubeconfig = serde_yaml::from_str(
        "apiVersion: v1\nkind: Config\ncurrent-context: real\nclusters:\n- name: decoy\n  cluster: {server: 'https://203.0.113.10:6443'}\n- name: used\n  cluster: {server: 'https://127.0.0.1:6443'}\ncontexts:\n- name: real\n  context: {cluster: used, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    assert_eq!(super::pair::stored_server(&k), "https://127.0.0.1:6443");
    let shown = crate::kube::shown_server;
    assert_eq!(
        shown("https://reader:SENTINEL@10.0.0.1:6443/path"),
        "https://***@10.0.0.1:6443/path"
    );
    assert_eq!(
        shown("https://10.0.0.1:6443/?access_token=SENTINEL"),
        "https://10.0.0.1:6443/?***"
    );
    assert_eq!(shown("https://10.0.0.1:6443"), "https://10.0.0.1:6443");
    assert!(!shown("https://a:b@h/p@q?x#y").contains('b'));
}
