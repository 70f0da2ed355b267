//! Waypoints and canaries: HBONE exposure, bindings the gateway cannot judge.

use super::*;

#[test]
fn hbone_only_for_captured_pods_of_global_services() {
    let mut m = model_with(false);
    let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "p1", "namespace": "shop",
                     "labels": {"version": "v1", "istio.io/dataplane-mode": "ambient"}}
    }))
    .unwrap();
    let labels = project_pod(&meta, &Interner::default()).unwrap();
    m.pods.streams[0].items.insert(k("shop", "p1"), labels);
    let hbone = |m: &Model| -> Vec<Option<u16>> {
        m.specs("cluster.local")[0]
            .endpoints
            .iter()
            .map(|e| e.hbone_port)
            .collect()
    };
    assert_eq!(hbone(&m), [None, None, None], "not a global service");
    m.services.streams[0]
        .items
        .get_mut(&k("shop", "catalog"))
        .unwrap()
        .scope
        .global = true;
    assert_eq!(
        hbone(&m),
        [Some(15008), None, None],
        "p2 is not ambient, 10.0.0.3 has no pod"
    );
    // The namespace's label captures p2 too; its waypoint binds the service.
    let shop = |kv: serde_json::Value| {
        let meta: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop", "labels": kv}
        }))
        .unwrap();
        project_namespace(&meta).unwrap()
    };
    let ns = &mut m.namespaces.streams[0].items;
    ns.insert(
        k("", "shop"),
        shop(json!({"istio.io/dataplane-mode": "ambient"})),
    );
    assert_eq!(hbone(&m), [Some(15008), Some(15008), None]);
    let waypoint = |m: &Model| m.specs("cluster.local")[0].waypoint.clone();
    assert_eq!(waypoint(&m), None);
    let ns = &mut m.namespaces.streams[0].items;
    ns.insert(
        k("", "shop"),
        shop(json!({"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp"})),
    );
    assert_eq!(waypoint(&m), None, "no Gateway CRD: no waypoint is ready");
    assert_eq!(m.unseen_waypoints("cluster.local"), []);
    // Gateways may exist but not be read: the binding stays, unresolved.
    m.gateways_forbidden = true;
    assert_eq!(waypoint(&m).as_deref(), Some("shop/wp"));
    let catalog = "catalog.shop.svc.cluster.local".to_string();
    let unseen = |why| vec![(catalog.clone(), "shop/wp".to_string(), why)];
    assert_eq!(
        m.unseen_waypoints("cluster.local"),
        unseen(Blind::Forbidden)
    );
    m.gateways_forbidden = false;
    let gateway = |status: serde_json::Value| {
        let g: waypoints::GatewayObject = serde_json::from_value(json!({
            "metadata": {"name": "wp", "namespace": "shop"}, "status": status}))
        .unwrap();
        waypoints::project_gateway(&g)
    };
    let mut gateways = Watched::new(1);
    let status = json!({"addresses": [{"type": "Hostname", "value": "wp.shop.svc.cluster.local"}]});
    gateways.streams[0]
        .items
        .insert(k("shop", "wp"), gateway(status).unwrap());
    m.waypoints = Some(gateways);
    assert_eq!(
        hbone(&m),
        [Some(15008), Some(15008), None],
        "bound to the namespace's waypoint: still tunnelled, for waypoints' tunnels"
    );
    assert_eq!(waypoint(&m).as_deref(), Some("wp.shop.svc.cluster.local"));
    // Gateways watched only elsewhere (`--namespace`): this one cannot be seen.
    m.watched_namespaces = vec!["web".into()];
    assert_eq!(waypoint(&m).as_deref(), Some("shop/wp"));
    assert_eq!(
        m.unseen_waypoints("cluster.local"),
        unseen(Blind::NotWatched)
    );
    m.watched_namespaces = vec!["web".into(), "shop".into()];
    assert_eq!(waypoint(&m).as_deref(), Some("wp.shop.svc.cluster.local"));
    assert_eq!(m.unseen_waypoints("cluster.local"), []);
    // A status with only an IP names the Service with that cluster IP.
    let mut wp_svc = svc(json!([{"name": "mesh", "port": 15008}]));
    wp_svc.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.9".into()]);
    let wp_svc = project_service(&wp_svc).unwrap();
    m.services.streams[0].items.insert(k("infra", "wp"), wp_svc);
    let ip = json!({"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]});
    let ip = gateway(ip).unwrap();
    m.waypoints.as_mut().unwrap().streams[0]
        .items
        .insert(k("shop", "wp"), ip);
    let specs = m.specs("cluster.local");
    let catalog = specs
        .iter()
        .find(|s| s.host.starts_with("catalog"))
        .unwrap();
    assert_eq!(
        catalog.waypoint.as_deref(),
        Some("wp.infra.svc.cluster.local")
    );
    m.services.streams[0].items.remove(&k("infra", "wp"));
    assert_eq!(
        waypoint(&m).as_deref(),
        Some("shop/wp"),
        "no such IP: unresolved"
    );
    let e1 = &m.specs("cluster.local")[0].endpoints[0];
    assert_eq!(
        e1.ports,
        BTreeMap::from([(80, 3000)]),
        "classic route unchanged"
    );
    assert!(
        e1.labels.is_empty(),
        "labels still only when subsets need them"
    );
}

/// Dual-stack: the IPv6 slice lists p1 again; p3 has only an IPv6 address, and fd00::9
/// no Pod to pair it with.
/// A sandwiched waypoint in `infra` whose HBONE listener admits only its own namespace
/// and whose PROXY listener admits all: the class's binding decides, so with the class
/// unreadable the binding of `shop/catalog` cannot be judged and is refused, not ignored.
#[test]
fn an_unreadable_class_that_could_allow_a_binding_refuses_it() {
    let mut m = Model::new(1);
    let mut s = svc(json!([{"name": "http", "port": 80}]));
    s.metadata.labels = Some(
        [
            ("istio.io/global", "true"),
            ("istio.io/use-waypoint", "wp"),
            ("istio.io/use-waypoint-namespace", "infra"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into(),
    );
    let s = project_service(&s).unwrap();
    m.services.streams[0].items.insert(k("shop", "catalog"), s);
    let g: waypoints::GatewayObject = serde_json::from_value(json!({
        "metadata": {"name": "wp", "namespace": "infra"},
        "spec": {"gatewayClassName": "sandwiched", "listeners": [
            {"name": "mesh", "port": 15008, "protocol": "HBONE"},
            {"name": "proxy", "port": 15088, "protocol": "istio.io/PROXY",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        "status": {"addresses": [{"type": "Hostname", "value": "wp.infra.svc.cluster.local"}]}}))
    .unwrap();
    let mut gateways = Watched::new(1);
    let wp = waypoints::project_gateway(&g).unwrap();
    gateways.streams[0].items.insert(k("infra", "wp"), wp);
    m.waypoints = Some(gateways);
    let waypoint = |m: &Model| m.specs("cluster.local")[0].waypoint.clone();
    assert_eq!(
        waypoint(&m),
        None,
        "no class: the HBONE listener refuses shop"
    );
    m.gateway_classes_forbidden = true;
    assert_eq!(waypoint(&m).as_deref(), Some("infra/wp"));
    let catalog = "catalog.shop.svc.cluster.local".to_string();
    assert_eq!(
        m.unseen_waypoints("cluster.local"),
        [(catalog, "infra/wp".to_string(), Blind::ClassForbidden)]
    );
    // The class read, with its binding: the PROXY listener admits shop.
    let mut classes = Watched::new(1);
    let class = ClassInfo {
        waypoint_for: None,
        inbound_binding: Some("PROXY/15088".into()),
    };
    classes.streams[0].items.insert(k("", "sandwiched"), class);
    m.gateway_classes = Some(classes);
    assert_eq!(waypoint(&m).as_deref(), Some("wp.infra.svc.cluster.local"));
    assert_eq!(m.unseen_waypoints("cluster.local"), []);
}

/// A Service's canary waypoint takes its weight of the tunnels when it could be its
/// waypoint itself; otherwise all go to the waypoint, and `unused_canaries` says why.
#[test]
fn a_canary_is_used_only_when_it_could_be_the_waypoint() {
    let mut m = Model::new(1);
    let service = |labels: &[(&str, &str)], weight: Option<&str>| {
        let mut s = svc(json!([{"name": "http", "port": 80}]));
        let base = [("istio.io/global", "true"), ("istio.io/use-waypoint", "wp")];
        s.metadata.labels = Some(
            (base.iter().chain(labels))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        s.metadata.annotations = weight.map(|w| {
            [(
                "istio.io/use-waypoint-canary-weight".to_string(),
                w.to_string(),
            )]
            .into()
        });
        project_service(&s).unwrap()
    };
    let gateway = |ns: &str, name: &str, from: &str, address: serde_json::Value| {
        let g: waypoints::GatewayObject = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": [
                {"name": "mesh", "port": 15008, "protocol": "HBONE",
                 "allowedRoutes": {"namespaces": {"from": from}}}]},
            "status": {"addresses": [address]}}))
        .unwrap();
        waypoints::project_gateway(&g).unwrap()
    };
    let host = |h: &str| json!({"type": "Hostname", "value": h});
    let mut gateways = Watched::new(1);
    for (ns, name, from) in [("shop", "wp", "Same"), ("shop", "wp2", "Same")] {
        let address = host(&format!("{name}.{ns}.svc.cluster.local"));
        let g = gateway(ns, name, from, address);
        gateways.streams[0].items.insert(k(ns, name), g);
    }
    let same = gateway(
        "infra",
        "other-ns",
        "Same",
        host("o.infra.svc.cluster.local"),
    );
    gateways.streams[0]
        .items
        .insert(k("infra", "other-ns"), same);
    let by_ip = gateway(
        "shop",
        "by-ip",
        "Same",
        json!({"type": "IPAddress", "value": "10.9.9.9"}),
    );
    gateways.streams[0].items.insert(k("shop", "by-ip"), by_ip);
    m.waypoints = Some(gateways);
    let catalog = k("shop", "catalog");
    let c = "istio.io/use-waypoint-canary";
    let set = |m: &mut Model, s| {
        m.services.streams[0].items.insert(catalog.clone(), s);
    };
    let spec = |m: &Model| {
        let s = m.specs("cluster.local").remove(0);
        (s.waypoint, s.canary.map(|c| (c.host.to_string(), c.weight)))
    };
    let unused = |m: &Model| {
        let u = m.unused_canaries("cluster.local");
        u.into_iter()
            .map(|(_, c, why)| (c, why))
            .collect::<Vec<_>>()
    };
    let primary = Some("wp.shop.svc.cluster.local".to_string());

    set(&mut m, service(&[(c, "wp2")], Some("20")));
    let wp2 = Some(("wp2.shop.svc.cluster.local".to_string(), 20));
    assert_eq!(spec(&m), (primary.clone(), wp2));
    assert_eq!(unused(&m), []);
    set(&mut m, service(&[(c, "wp2")], None));
    assert_eq!(spec(&m), (primary.clone(), None), "no weight: 0");
    assert_eq!(unused(&m), []);

    for (labels, weight, why) in [
        (
            vec![(c, "wp2")],
            Some("101"),
            CanaryUnused::InvalidWeight("101".into()),
        ),
        (vec![(c, "wp")], Some("5"), CanaryUnused::SameAsPrimary),
        (vec![(c, "missing")], Some("5"), CanaryUnused::NotUsable),
        (
            vec![
                (c, "other-ns"),
                ("istio.io/use-waypoint-canary-namespace", "infra"),
            ],
            Some("5"),
            CanaryUnused::NotUsable,
        ),
        (vec![(c, "by-ip")], Some("5"), CanaryUnused::NotUsable),
    ] {
        set(&mut m, service(&labels, weight));
        assert_eq!(spec(&m), (primary.clone(), None), "{labels:?}");
        assert_eq!(unused(&m).len(), 1, "{labels:?}");
        assert_eq!(unused(&m)[0].1, why, "{labels:?}");
    }
    // Watching only `shop`: a canary elsewhere cannot be judged, and is left out.
    m.watched_namespaces = vec!["shop".into()];
    set(
        &mut m,
        service(
            &[
                (c, "x"),
                ("istio.io/use-waypoint-canary-namespace", "elsewhere"),
            ],
            Some("50"),
        ),
    );
    assert_eq!(spec(&m), (primary, None));
    assert_eq!(
        unused(&m),
        [(
            "elsewhere/x".into(),
            CanaryUnused::Unseen(Blind::NotWatched)
        )]
    );
}
