//! WorkloadEntries, ServiceEntries and the rules' connection settings.

use super::*;

/// A WorkloadEntry as a Service's endpoint: matched by subsets and PeerAuthentications
/// with the labels istiod gives it (its own, its locality's, the cluster's), never in place
/// of an address a slice lists, left out by `internalTrafficPolicy: Local` on a gateway
/// that knows its node, and of two entries at one address the first by name serves.
#[test]
fn workload_entries_join_the_services_that_select_them() {
    let we = |name: &str, spec| workload_entry("shop", name, spec);
    let mut m = model_with(true);
    let mut s = project_service(&svc(json!([{"name": "http", "port": 80}]))).unwrap();
    s.entry_selector = Some(Box::new([("app".into(), "catalog".into())]));
    m.services.streams[0].items.insert(k("shop", "catalog"), s);
    let mut w = Watched::new(1);
    let vm = json!({"address": "10.9.0.1", "serviceAccount": "vm",
        "labels": {"app": "catalog", "version": "v2"}, "locality": "eu/eu-1",
        "ports": {"http": 8080}, "weight": 7});
    w.streams[0].items.insert(k("shop", "a-vm"), we("a-vm", vm));
    // Same address, later name: not used (Envoy keeps the first host of an address).
    let twin = json!({"address": "10.9.0.1", "labels": {"app": "catalog", "version": "v1"},
        "weight": 3});
    w.streams[0]
        .items
        .insert(k("shop", "b-twin"), we("b-twin", twin));
    // A slice's address: the slice's endpoint stays.
    let shadow = json!({"address": "10.0.0.2", "labels": {"app": "catalog"}});
    w.streams[0]
        .items
        .insert(k("shop", "shadow"), we("shadow", shadow));
    let other = json!({"address": "10.9.0.2", "labels": {"app": "orders"}});
    w.streams[0]
        .items
        .insert(k("shop", "other"), we("other", other));
    m.workload_entries = Some(w);
    let specs = m.specs("cluster.local");
    let eps = &specs[0].endpoints;
    let addrs: Vec<String> = eps.iter().map(|e| e.address.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.0.1"]);
    let vm = &eps[3];
    assert_eq!(vm.ports, BTreeMap::from([(80, 8080)]));
    assert!(vm.ready && vm.mtls && vm.hbone_port.is_none());
    assert_eq!(vm.zone.as_deref(), Some("eu-1"));
    assert_eq!(vm.weight, 7);
    assert!(eps[..3].iter().all(|e| e.weight == 1));
    assert!(eps[1].mtls, "the slice's pod, not the shadowing entry");
    assert_eq!(subset_ips(&m, "v2"), ["10.0.0.2", "10.9.0.1"]);

    // A PeerAuthentication selecting the VM by its locality's zone disables its port.
    let spec = json!({"selector": {"matchLabels": {"topology.kubernetes.io/zone": "eu-1"}},
        "portLevelMtls": {"8080": {"mode": "DISABLE"}}});
    let pa = peer_authentication("shop", "vms", spec);
    let mut w = Watched::new(1);
    w.streams[0].items.insert(k("shop", "vms"), pa);
    m.peer_auths = Some(w);
    let specs = m.specs("cluster.local");
    assert_eq!(specs[0].endpoints[3].mtls_disabled, vec![80]);
    assert!(specs[0].endpoints[0].mtls_disabled.is_empty());

    // On another network than the cluster's: left out, and named for the log.
    assert!(
        m.entries_elsewhere().is_empty(),
        "the cluster's network is unknown"
    );
    set_network(&mut m, "east-net");
    let away = json!({"address": "10.9.0.3", "labels": {"app": "catalog"},
        "serviceAccount": "vm", "network": "vm-net"});
    let w = m.workload_entries.as_mut().unwrap();
    w.streams[0]
        .items
        .insert(k("shop", "away"), we("away", away));
    let here = json!({"address": "10.9.0.4", "labels": {"app": "catalog"},
        "serviceAccount": "vm", "network": "east-net"});
    w.streams[0]
        .items
        .insert(k("shop", "here"), we("here", here));
    let addrs: Vec<String> = m.specs("cluster.local")[0]
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert!(addrs.contains(&"10.9.0.4".to_string()), "{addrs:?}");
    assert!(!addrs.contains(&"10.9.0.3".to_string()), "{addrs:?}");
    assert_eq!(
        m.entries_elsewhere(),
        vec![("shop/away".to_string(), Box::from("vm-net"))]
    );

    // Node-local: an entry has no node.
    let s = m.services.streams[0]
        .items
        .get_mut(&k("shop", "catalog"))
        .unwrap();
    s.node_local = true;
    m.node_name = Some("node-1".into());
    assert!(
        m.specs("cluster.local")[0]
            .endpoints
            .iter()
            .all(|e| e.address.to_string() != "10.9.0.1")
    );
    m.node_name = None;
    assert!(
        m.specs("cluster.local")[0]
            .endpoints
            .iter()
            .any(|e| e.address.to_string() == "10.9.0.1")
    );
}

/// The connection settings merge as the TLS modes do: the oldest rule with a
/// `trafficPolicy` gives the whole policy (a newer rule's `outlierDetection` is dropped
/// though the older sets none), each subset keeps its own rule's, and the route's
/// subsets resolve them per port.
#[test]
fn a_rules_connection_settings_merge_as_its_tls_modes() {
    let mut m = model_with(true);
    let rule = |name: &str, secs: u32, spec: serde_json::Value| {
        let meta = json!({"name": name, "namespace": "shop",
            "creationTimestamp": format!("2026-12-07T00:00:{secs:02}Z")});
        let obj = istio_object("networking.istio.io/v1", "DestinationRule", meta, spec);
        crate::discovery::k8s::project::project_destination_rule(&obj, "cluster.local").unwrap()
    };
    let old = rule(
        "old",
        1,
        json!({"host": "catalog",
        "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "2s"}}}}),
    );
    let new = rule(
        "new",
        2,
        json!({"host": "catalog",
        "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}},
        "subsets": [{"name": "v2", "labels": {"version": "v2"},
            "trafficPolicy": {"outlierDetection": {"consecutiveGatewayErrors": 3}}}]}),
    );
    let rules = m.rules.as_mut().unwrap();
    rules.streams[0].items.insert(k("shop", "old"), old);
    rules.streams[0].items.insert(k("shop", "new"), new);
    let spec = m.specs("cluster.local").remove(0);
    let whole = spec.conn.for_route(80, "");
    assert_eq!(
        whole.connect_timeout(),
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(
        whole.outlier, None,
        "the newer rule's policy is dropped whole"
    );
    let v2 = spec.conn.for_route(80, "v2");
    assert_eq!(
        v2.connect_timeout(),
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(v2.outlier.unwrap().consecutive_failures, 3);
    let t = crate::routes::Routes::new().publish(&[spec]);
    let route = t.lookup("catalog.shop.svc.cluster.local", 80).unwrap();
    let v2 = route.candidates_near("v2").unwrap().conn.unwrap();
    assert_eq!(v2.outlier.as_ref().unwrap().consecutive_failures, 3);
}

/// ServiceEntries as routes, as istiod keys their instances by host and namespace: every
/// entry of the oldest entry's namespace naming a host serves it, an address in two
/// serving the ports of both; another namespace's entry for it does not; an entry with a
/// selector serves the WorkloadEntries it selects, not its inline endpoints; subsets select
/// endpoints by their labels; an endpoint on another network is left out; a namespace's
/// PeerAuthentication reaches selected WorkloadEntries but not inline endpoints (istiod
/// gives those no namespace), a mesh-wide one both.
#[test]
fn service_entries_become_routes_for_their_hosts() {
    let mut m = model_with(false);
    set_network(&mut m, "east-net");
    let ports = json!([{"number": 5432, "name": "pg", "targetPort": 6432}]);
    let host = json!(["db.mesh.local"]);
    let internal = |extra: serde_json::Value| {
        let mut spec = json!({"hosts": host, "location": "MESH_INTERNAL", "ports": ports});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let old = internal(json!({"endpoints": [
        {"address": "10.3.0.1", "labels": {"version": "v1"}, "serviceAccount": "db"},
        {"address": "10.3.0.2", "labels": {"version": "v2"}, "serviceAccount": "db",
         "ports": {"pg": 7000}, "weight": 4},
        {"address": "10.3.0.3", "network": "west-net", "serviceAccount": "db"}]}));
    let admin = json!({"hosts": host, "location": "MESH_INTERNAL",
        "ports": [{"number": 9000, "name": "admin"}],
        "endpoints": [{"address": "10.3.0.1"}, {"address": "10.3.0.9"}]});
    let vms = internal(json!({"workloadSelector": {"labels": {"app": "db"}},
        "endpoints": [{"address": "10.3.0.8", "serviceAccount": "db"}]}));
    let elsewhere = internal(json!({"endpoints": [{"address": "10.3.0.7"}]}));
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    items.insert(k("shop", "b-old"), service_entry("shop", "b-old", 1, old));
    items.insert(
        k("shop", "a-admin"),
        service_entry("shop", "a-admin", 2, admin),
    );
    items.insert(k("shop", "c-vms"), service_entry("shop", "c-vms", 3, vms));
    let other = service_entry("other", "db", 4, elsewhere);
    items.insert(k("other", "db"), other);
    m.service_entries = Some(w);
    let mut wes = Watched::new(1);
    let spec = json!({"address": "10.3.0.5", "labels": {"app": "db"}, "serviceAccount": "db",
        "weight": 0});
    let vm = workload_entry("shop", "db-vm", spec);
    wes.streams[0].items.insert(k("shop", "db-vm"), vm);
    m.workload_entries = Some(wes);
    let mut rules = Watched::new(1);
    rules.streams[0].items.insert(
        k("shop", "db"),
        DrInfo {
            namespace: "shop".into(),
            host: "db.mesh.local".into(),
            order: (None, "shop/db".into()),
            subsets: vec![("v2".into(), Labels::from([("version".into(), "v2".into())]))],
            ..Default::default()
        },
    );
    m.rules = Some(rules);
    let specs = m.specs("cluster.local");
    let db = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
    assert_eq!(db.ports, vec![5432, 9000]);
    type Seen = Vec<(String, Vec<(u16, u16)>, bool)>;
    let eps: Seen = (db.endpoints.iter())
        .map(|e| {
            let ports = e.ports.iter().map(|(&p, &t)| (p, t)).collect();
            (e.address.to_string(), ports, e.mtls)
        })
        .collect();
    let want: Seen = vec![
        ("10.3.0.1".into(), vec![(5432, 6432), (9000, 9000)], true),
        ("10.3.0.2".into(), vec![(5432, 7000)], true),
        ("10.3.0.5".into(), vec![(5432, 6432)], true),
        ("10.3.0.9".into(), vec![(9000, 9000)], false),
    ];
    assert_eq!(eps, want);
    // Weights as written; zero (unset in istiod's eyes) is 1.
    let weights: Vec<u32> = db.endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [1, 4, 1, 1]);
    assert_eq!(subset_ips_of(&m, "db.mesh.local", 5432, "v2"), ["10.3.0.2"]);

    let mut w = Watched::new(1);
    let off = json!({"mtls": {"mode": "DISABLE"}});
    let pa = peer_authentication("shop", "ns", off.clone());
    w.streams[0].items.insert(k("shop", "ns"), pa);
    m.peer_auths = Some(w);
    let disabled = |m: &Model| -> Vec<(String, Vec<u16>)> {
        let specs = m.specs("cluster.local");
        let db = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
        (db.endpoints.iter())
            .filter(|e| e.mtls)
            .map(|e| (e.address.to_string(), e.mtls_disabled.clone()))
            .collect()
    };
    let only_vm = vec![
        ("10.3.0.1".to_string(), vec![]),
        ("10.3.0.2".to_string(), vec![]),
        ("10.3.0.5".to_string(), vec![5432]),
    ];
    assert_eq!(disabled(&m), only_vm);
    let w = m.peer_auths.as_mut().unwrap();
    let mesh = peer_authentication("istio-system", "mesh", off);
    w.streams[0].items.insert(k("istio-system", "mesh"), mesh);
    let all = vec![
        ("10.3.0.1".to_string(), vec![5432, 9000]),
        ("10.3.0.2".to_string(), vec![5432]),
        ("10.3.0.5".to_string(), vec![5432]),
    ];
    assert_eq!(disabled(&m), all);
}

/// An entry in a Service's namespace naming its host adds endpoints to the Service's
/// route on the Service ports whose name it has (istiod's endpoint builder reads every
/// registry's shard of a host and namespace); one in another namespace adds none.
#[test]
fn a_service_entry_with_a_services_host_adds_to_it() {
    let mut m = model_with(false);
    let spec = |address: &str| {
        json!({"hosts": ["catalog.shop.svc.cluster.local"], "location": "MESH_INTERNAL",
            "ports": [{"number": 8080, "name": "http"}, {"number": 7070, "name": "other"}],
            "endpoints": [{"address": address, "serviceAccount": "vm"}]})
    };
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    items.insert(
        k("shop", "vm"),
        service_entry("shop", "vm", 1, spec("10.3.0.1")),
    );
    items.insert(
        k("else", "vm"),
        service_entry("else", "vm", 0, spec("10.3.0.2")),
    );
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    assert_eq!(specs.len(), 1);
    let c = &specs[0];
    assert_eq!(c.ports, vec![80, 90], "the Service's own ports");
    let vm = (c.endpoints.iter())
        .find(|e| e.address.to_string() == "10.3.0.1")
        .unwrap();
    assert_eq!(vm.ports, BTreeMap::from([(80, 8080)]));
    assert!(
        c.endpoints
            .iter()
            .all(|e| e.address.to_string() != "10.3.0.2")
    );
    let pods: Vec<String> = (c.endpoints.iter())
        .map(|e| e.address.to_string())
        .filter(|a| a.starts_with("10.0.0."))
        .collect();
    assert_eq!(
        pods,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        "the slices' stay"
    );
}

/// An entry of the catalog's namespace with its host (the ports `extra` gives).
fn catalog_entry(ns: &str, name: &str, secs: u32, extra: serde_json::Value) -> SeInfo {
    let mut spec = json!({"hosts": ["catalog.shop.svc.cluster.local"],
        "location": "MESH_INTERNAL"});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    service_entry(ns, name, secs, spec)
}

/// Added to a Service: an address two entries list serves the ports of both (EDS reads
/// every instance of the host and namespace by port name); an address a slice lists keeps
/// the slice's ports only.
#[test]
fn entries_added_to_a_service_join_by_address() {
    let mut m = model_with(false);
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    let http = json!({"ports": [{"number": 8080, "name": "http"}],
        "endpoints": [{"address": "10.3.0.1"}, {"address": "10.0.0.1"}]});
    items.insert(k("shop", "a"), catalog_entry("shop", "a", 1, http));
    let grpc = json!({"ports": [{"number": 9090, "name": "grpc"}],
        "endpoints": [{"address": "10.3.0.1"}, {"address": "10.0.0.1"}]});
    items.insert(k("shop", "b"), catalog_entry("shop", "b", 2, grpc));
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    let at = |ip: &str| {
        (specs[0].endpoints.iter())
            .find(|e| e.address.to_string() == ip)
            .unwrap()
            .ports
            .clone()
    };
    assert_eq!(at("10.3.0.1"), BTreeMap::from([(80, 8080), (90, 9090)]));
    assert_eq!(at("10.0.0.1"), BTreeMap::from([(80, 3000)]), "the slice's");
}

/// A Service hidden from the gateway (`exportTo`) is not in its scope, so an entry for its
/// host, from any namespace, gets the route, as in istiod.
#[test]
fn a_hidden_services_host_is_left_to_an_entry() {
    let mut m = model_with(false);
    let key = k("shop", "catalog");
    let mut s = m.services.streams[0].items.get(&key).unwrap().clone();
    s.export_to = Some(vec![Box::<str>::from(".")].into());
    m.services.streams[0].items.insert(key, s);
    let mut w = Watched::new(1);
    let spec = json!({"ports": [{"number": 80, "name": "http"}],
        "endpoints": [{"address": "10.3.0.1"}]});
    w.streams[0]
        .items
        .insert(k("other", "a"), catalog_entry("other", "a", 1, spec));
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    let c = specs
        .iter()
        .find(|s| s.host == "catalog.shop.svc.cluster.local");
    let ips: Vec<String> = (c.unwrap().endpoints.iter())
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(ips, ["10.3.0.1"]);
}

/// Who owns a host two namespaces define, in istiod's order for a gateway: exported to
/// the gateway's namespace by name before public, each oldest first; an owner the gateway
/// does not serve (`MESH_EXTERNAL`) leaves the host without a route. Entries istiod would
/// not merge (here one with a selector, one without) do not join their ports; the
/// traffic-distribution annotation asks for zone preference.
#[test]
fn a_hosts_owner_is_chosen_as_istiod_orders_a_gateways_services() {
    let db = |ip: &str, extra: serde_json::Value| {
        let mut s = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
            "ports": [{"number": 5432, "name": "pg"}], "endpoints": [{"address": ip}]});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    let ips = |m: &Model| -> Option<Vec<String>> {
        let specs = m.specs("cluster.local");
        let db = specs.iter().find(|s| s.host == "db.mesh.local")?;
        Some(db.endpoints.iter().map(|e| e.address.to_string()).collect())
    };
    let mut m = model_with(false);
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    items.insert(
        k("a", "db"),
        service_entry("a", "db", 1, db("10.3.0.1", json!({}))),
    );
    let named = json!({"exportTo": ["istio-system"]});
    items.insert(
        k("b", "db"),
        service_entry("b", "db", 2, db("10.3.0.2", named)),
    );
    m.service_entries = Some(w);
    assert_eq!(
        ips(&m).unwrap(),
        ["10.3.0.2"],
        "exported to the gateway's namespace"
    );
    let w = m.service_entries.as_mut().unwrap();
    w.streams[0].items.remove(&k("b", "db"));
    let external = json!({"location": "MESH_EXTERNAL"});
    let old = service_entry("c", "db", 0, db("10.3.0.3", external));
    w.streams[0].items.insert(k("c", "db"), old);
    assert_eq!(ips(&m), None, "owned by an external entry");

    let mut m = model_with(false);
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    let mut first = db("10.3.0.1", json!({}));
    first["ports"] = json!([{"number": 5432, "name": "pg"}, {"number": 9000, "name": "admin"}]);
    items.insert(k("a", "db"), service_entry("a", "db", 1, first));
    let vms = json!({"workloadSelector": {"labels": {"app": "db"}}, "endpoints": [],
        "ports": [{"number": 5432, "name": "pg"}, {"number": 7000, "name": "metrics"}]});
    items.insert(k("a", "vms"), service_entry("a", "vms", 2, db("", vms)));
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
    assert_eq!(
        route.ports,
        vec![5432, 9000],
        "not merged: another selector"
    );
    assert!(!route.prefer_close);
    let meta = json!({"name": "db", "namespace": "a",
        "creationTimestamp": "2026-12-07T00:00:01Z",
        "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"}});
    let spec = db("10.3.0.1", json!({}));
    let obj = istio_object("networking.istio.io/v1", "ServiceEntry", meta, spec);
    let close = crate::discovery::k8s::service_entry::project_service_entry(&obj).unwrap();
    let w = m.service_entries.as_mut().unwrap();
    w.streams[0].items.insert(k("a", "db"), close);
    let specs = m.specs("cluster.local");
    let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
    assert!(route.prefer_close);
}

/// `exportTo` is a set, as istiod compares it (`canMergeServices`): two entries listing
/// the same namespaces in another order merge their ports.
#[test]
fn export_to_order_does_not_stop_ports_merging() {
    let mut m = model_with(false);
    let mut w = Watched::new(1);
    let items = &mut w.streams[0].items;
    let a = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
        "exportTo": ["istio-system", "a"],
        "ports": [{"number": 5432, "name": "pg"}], "endpoints": [{"address": "10.3.0.1"}]});
    let b = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
        "exportTo": ["a", "istio-system", "a"],
        "ports": [{"number": 9000, "name": "admin"}], "endpoints": [{"address": "10.3.0.2"}]});
    items.insert(k("a", "db"), service_entry("a", "db", 1, a));
    items.insert(k("a", "admin"), service_entry("a", "admin", 2, b));
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
    assert_eq!(
        route.ports,
        vec![5432, 9000],
        "same exportTo, another order"
    );
}

/// A visible Service owns its host even when none of its ports is TCP (so it has no
/// route): an entry of another namespace naming the host gets none either.
#[test]
fn a_visible_service_without_a_route_still_owns_its_host() {
    let mut m = model_with(false);
    let udp = project_service(&svc(
        json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
    ))
    .unwrap();
    assert!(udp.ports.is_empty());
    m.services.streams[0]
        .items
        .insert(k("shop", "catalog"), udp);
    let mut w = Watched::new(1);
    let spec = json!({"ports": [{"number": 80, "name": "http"}],
        "endpoints": [{"address": "10.3.0.1"}]});
    w.streams[0]
        .items
        .insert(k("other", "a"), catalog_entry("other", "a", 1, spec));
    m.service_entries = Some(w);
    let specs = m.specs("cluster.local");
    assert!(
        specs
            .iter()
            .all(|s| s.host != "catalog.shop.svc.cluster.local")
    );
}
