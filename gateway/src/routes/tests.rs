use super::*;

/// (address, ready, labels)
type Ep<'a> = (&'a str, bool, &'a [(&'a str, &'a str)]);

fn spec(host: &str, eps: &[Ep]) -> ServiceSpec {
    ServiceSpec {
        host: host.into(),
        ports: vec![80],
        subsets: Arc::new(Subsets::from([(
            "v1".to_string(),
            Labels::from([("version".into(), "v1".into())]),
        )])),
        endpoints: eps
            .iter()
            .map(|(a, ready, labels)| EndpointSpec {
                address: a.parse().unwrap(),
                ports: [(80, 3000)].into(),
                labels: Arc::new(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ready: *ready,
                hbone_port: None,
                zone: None,
                mtls: true,
                mtls_disabled: Vec::new(),
                weight: 1,
            })
            .collect(),
        waypoint: None,
        canary: None,
        prefer_close: false,
        tls: Arc::default(),
        conn: Arc::default(),
    }
}

/// Both data planes' routes of a service that prefers close endpoints try the gateway's
/// zone first, every subset included.
/// A rule's `maxConnections` counts a route's (and each subset's) open connections; a
/// new table keeps counting the ones open before it, and a table without the limit
/// counts none.
#[test]
fn connection_counts_live_on_across_tables() {
    let limited = |on: bool| {
        let mut s = spec("a.local", &[("10.0.0.1", true, &[("version", "v1")])]);
        if on {
            let pool = serde_json::json!({"connectionPool": {"tcp": {"maxConnections": 5}}});
            s.conn = Arc::new(DrConn {
                service: crate::dr_conn::policy_conn(Some(&pool)),
                ..Default::default()
            });
        }
        s
    };
    let routes = Routes::new();
    let t1 = routes.publish(&[limited(true)]);
    let r1 = t1.lookup("a.local", 80).unwrap();
    let c = r1.candidates_near("v1").unwrap();
    let held = crate::breaker::Held::take(c.open.unwrap(), 5).unwrap();
    assert_eq!(r1.open_connections("v1"), Some(1));
    assert_eq!(
        r1.open_connections(""),
        Some(0),
        "each subset its own cluster"
    );
    let t2 = routes.publish(&[limited(true)]);
    assert_eq!(
        t2.lookup("a.local", 80).unwrap().open_connections("v1"),
        Some(1)
    );
    drop(held);
    assert_eq!(
        t2.lookup("a.local", 80).unwrap().open_connections("v1"),
        Some(0)
    );
    let t3 = routes.publish(&[limited(false)]);
    assert_eq!(
        t3.lookup("a.local", 80).unwrap().open_connections("v1"),
        None
    );
}

#[test]
fn the_near_endpoints_are_resolved_per_subset_and_for_hbone() {
    let mut s = spec(
        "a.local",
        &[
            ("10.0.0.1", true, &[("version", "v1")]),
            ("10.0.0.2", true, &[("version", "v2")]),
            ("10.0.0.3", true, &[("version", "v1")]),
            ("10.0.0.4", false, &[("version", "v1")]),
        ],
    );
    s.prefer_close = true;
    for (e, zone) in s.endpoints.iter_mut().zip(["a", "a", "b", "a"]) {
        e.zone = Some(Arc::from(zone));
        e.hbone_port = Some(15008);
    }
    let t = Routes::new().publish_in(&[s], Some(&Arc::from("a")));
    // HBONE names no subset: only the whole route there.
    for (r, subsets) in [
        (t.lookup("a.local", 80), true),
        (t.lookup_hbone("a.local", 80), false),
    ] {
        let r = r.unwrap();
        assert_eq!(r.prefer_zone.as_deref(), Some("a"));
        let ip = |i: &usize| r.endpoints[*i].state.addr.ip().to_string();
        let all = r.candidates_near("").unwrap();
        assert_eq!(
            all.near.iter().map(ip).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(all.all.len(), 3);
        if !subsets {
            continue;
        }
        let v1 = r.candidates_near("v1").unwrap();
        assert_eq!(v1.near.iter().map(ip).collect::<Vec<_>>(), ["10.0.0.1"]);
        assert_eq!(
            v1.all.iter().map(ip).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.3"]
        );
    }
}

#[test]
fn lookup_and_subsets() {
    let routes = Routes::new();
    assert!(routes.load().is_none());
    let t = routes.publish(&[spec(
        "a.ns.svc.cluster.local",
        &[
            ("10.0.0.1", true, &[("version", "v1")]),
            ("10.0.0.2", true, &[("version", "v2")]),
            ("10.0.0.3", false, &[("version", "v1")]),
        ],
    )]);
    let r = t.lookup("a.ns.svc.cluster.local", 80).unwrap();
    assert_eq!(r.candidates("").unwrap().len(), 2);
    let v1 = r.candidates("v1").unwrap();
    assert_eq!(v1.len(), 1);
    assert_eq!(
        r.endpoints[v1[0]].state.addr,
        "10.0.0.1:3000".parse().unwrap()
    );
    assert_eq!(r.candidates("v9").unwrap_err(), LookupError::NoRoute);
    assert!(t.lookup("a.ns.svc.cluster.local", 81).is_none());
    assert!(t.lookup("b.ns.svc.cluster.local", 80).is_none());
}

/// A host listed twice (several EndpointSlices) is merged before its subsets are
/// resolved, so a subset sees the endpoints of every listing.
#[test]
fn subsets_resolve_after_merging() {
    let mut second = spec("a.local", &[("10.0.0.2", true, &[("version", "v2")])]);
    second.subsets = Arc::new(Subsets::from([(
        "v2".to_string(),
        Labels::from([("version".into(), "v2".into())]),
    )]));
    let first = spec(
        "a.local",
        &[
            ("10.0.0.1", true, &[("version", "v1")]),
            ("10.0.0.3", true, &[("version", "v2")]),
        ],
    );
    let t = Routes::new().publish(&[first, second]);
    let r = t.lookup("a.local", 80).unwrap();
    let addrs = |subset| -> Vec<String> {
        let c = r.candidates(subset).unwrap();
        c.iter()
            .map(|&i| r.endpoints[i].state.addr.to_string())
            .collect()
    };
    assert_eq!(
        addrs(""),
        ["10.0.0.1:3000", "10.0.0.3:3000", "10.0.0.2:3000"]
    );
    assert_eq!(addrs("v1"), ["10.0.0.1:3000"]);
    assert_eq!(addrs("v2"), ["10.0.0.3:3000", "10.0.0.2:3000"]);
}

/// A subset's metric handles are made once and carry the SNI label Istio's name layout
/// gives; a new table routing the same name takes them over.
#[test]
fn metric_handles_once_per_table_and_subset() {
    let mut reg = prometheus_client::registry::Registry::default();
    let m = ProxyMetrics::new(&mut reg);
    let routes = Routes::new();
    let s = spec(
        "a.ns.svc.cluster.local",
        &[("10.0.0.1", true, &[("version", "v1")])],
    );
    let t1 = routes.publish(std::slice::from_ref(&s));
    let r1 = t1.lookup("a.ns.svc.cluster.local", 80).unwrap();
    let v1 = r1.metrics("v1", &m).unwrap();
    assert!(Arc::ptr_eq(&v1, &r1.metrics("v1", &m).unwrap()));
    assert_eq!(v1.sni, "outbound_.80_.v1_.a.ns.svc.cluster.local");
    assert_eq!(
        r1.metrics("", &m).unwrap().sni,
        "outbound_.80_._.a.ns.svc.cluster.local"
    );
    assert!(r1.metrics("v9", &m).is_none());
    v1.opened.inc();
    v1.closed("ok");
    let t2 = routes.publish(&[s]);
    let v1b = t2
        .lookup("a.ns.svc.cluster.local", 80)
        .unwrap()
        .metrics("v1", &m)
        .unwrap();
    assert!(Arc::ptr_eq(&v1, &v1b), "carried to the next table");
    v1b.opened.inc();
    v1b.closed("ok");
    let labels = crate::metrics::SniLabels {
        sni: v1.sni.clone(),
    };
    assert_eq!(m.opened.get_or_create(&labels).get(), 2);
    let closed = crate::metrics::CloseLabels {
        sni: v1.sni.clone(),
        outcome: "ok",
    };
    assert_eq!(m.closed.get_or_create(&closed).get(), 2);
}

/// A name's series go once no table routes it and no connection holds its handles, and
/// stay while either does; routed again, it starts from zero.
#[test]
fn metric_series_go_with_their_last_holder() {
    let mut reg = prometheus_client::registry::Registry::default();
    let m = ProxyMetrics::new(&mut reg);
    let text = |reg: &prometheus_client::registry::Registry| {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
        out
    };
    let routes = Routes::new();
    let (a, b) = (
        spec("a.local", &[("10.0.0.1", true, &[])]),
        spec("b.local", &[("10.0.0.2", true, &[])]),
    );
    let t1 = routes.publish(&[a.clone(), b.clone()]);
    let ha = t1.lookup("a.local", 80).unwrap().metrics("", &m).unwrap();
    let hb = t1.lookup("b.local", 80).unwrap().metrics("", &m).unwrap();
    ha.opened.inc();
    hb.opened.inc();
    hb.closed("ok");
    drop(t1);
    // b leaves the table while a connection still holds its handles.
    let t2 = routes.publish(std::slice::from_ref(&a));
    let (sa, sb) = ("outbound_.80_._.a.local", "outbound_.80_._.b.local");
    assert!(text(&reg).contains(sb), "held by a connection: kept");
    drop(hb);
    let now = text(&reg);
    assert!(!now.contains(sb), "gone with its last holder:\n{now}");
    assert!(
        now.contains(&format!("opened_total{{sni=\"{sa}\"}} 1")),
        "{now}"
    );
    // a's handles were carried into t2: dropping the connection's keeps the series.
    drop(ha);
    assert!(text(&reg).contains(sa));
    let t3 = routes.publish(&[a, b]);
    drop(t2);
    assert!(text(&reg).contains(sa), "still routed");
    let hb2 = t3.lookup("b.local", 80).unwrap().metrics("", &m).unwrap();
    assert_eq!(hb2.opened.get(), 0, "routed again: a new series");
}

#[test]
fn no_ready_endpoint() {
    let routes = Routes::new();
    let t = routes.publish(&[spec("a.local", &[("10.0.0.3", false, &[])])]);
    let r = t.lookup("a.local", 80).unwrap();
    assert_eq!(
        r.candidates("").unwrap_err(),
        LookupError::NoHealthyEndpoint
    );
}

#[test]
fn state_survives_republish() {
    let routes = Routes::new();
    let s = spec("a.local", &[("10.0.0.1", true, &[])]);
    let t1 = routes.publish(std::slice::from_ref(&s));
    let st1 = t1.lookup("a.local", 80).unwrap().endpoints[0].state.clone();
    let _guard = st1.track();
    let t2 = routes.publish(&[s]);
    assert_eq!(t2.generation, t1.generation + 1);
    let st2 = &t2.lookup("a.local", 80).unwrap().endpoints[0].state;
    assert!(Arc::ptr_eq(&st1, st2));
    assert_eq!(st2.active(), 1);
}

/// An address is stamped when a table first lists it ready and keeps the stamp across
/// tables; not ready, or listed by no route (though a connection still holds its
/// state), it loses it, so it warms up again when it is back.
#[test]
fn readiness_is_stamped_once_and_forgotten_when_gone() {
    let routes = Routes::new();
    let both = [("10.0.0.1", true, &[][..]), ("10.0.0.2", true, &[][..])];
    let t1 = routes.publish(&[spec("a.local", &both)]);
    let state =
        |t: &RouteTable, i: usize| t.lookup("a.local", 80).unwrap().endpoints[i].state.clone();
    let (one, two) = (state(&t1, 0), state(&t1, 1));
    let stamp = one.ready_since();
    assert!(stamp > 0 && two.ready_since() > 0);
    std::thread::sleep(std::time::Duration::from_millis(5));
    routes.publish(&[spec("a.local", &both)]);
    assert_eq!(one.ready_since(), stamp, "kept while ready");
    routes.publish(&[spec("a.local", &[both[0], ("10.0.0.2", false, &[])])]);
    assert_eq!(two.ready_since(), 0, "not ready");
    let _held = two.track();
    routes.publish(&[spec("a.local", &both[..1])]);
    assert_eq!(two.ready_since(), 0, "gone, though held");
    let t = routes.publish(&[spec("a.local", &both)]);
    assert!(Arc::ptr_eq(&state(&t, 1), &two));
    assert!(two.ready_since() > stamp, "back: stamped anew");
    assert_eq!(one.ready_since(), stamp);
}

/// HBONE endpoints get their own route keyed like the SNI one, dialed on the HBONE port,
/// with state apart from the classic address; a classic-only service has no HBONE route.
#[test]
fn hbone_routes_dial_the_hbone_port() {
    let mut s = spec(
        "a.local",
        &[("10.0.0.1", true, &[]), ("10.0.0.2", true, &[])],
    );
    s.endpoints[0].hbone_port = Some(15008);
    let t = Routes::new().publish(&[s, spec("b.local", &[("10.0.0.3", true, &[])])]);
    let h = t.lookup_hbone("a.local", 80).unwrap();
    assert_eq!(h.endpoints.len(), 1);
    assert_eq!(h.endpoints[0].state.addr, "10.0.0.1:15008".parse().unwrap());
    assert_eq!(h.candidates("").unwrap(), &[0]);
    assert_eq!(t.lookup("a.local", 80).unwrap().endpoints.len(), 2);
    assert!(t.lookup_hbone("a.local", 81).is_none());
    assert!(t.lookup_hbone("b.local", 80).is_none());
    assert!(t.lookup("b.local", 80).is_some());
    assert!(h.waypoint.is_none());
}

/// A service bound to a waypoint has an HBONE route naming it, with or without
/// endpoints of its own; the classic route does not.
#[test]
fn waypoint_bound_routes_name_their_waypoint() {
    let mut a = spec("a.local", &[("10.0.0.1", true, &[])]);
    a.endpoints[0].hbone_port = Some(15008);
    a.waypoint = Some("wp.local".into());
    let mut b = spec("b.local", &[("10.0.0.2", true, &[])]);
    b.waypoint = Some("wp.local".into());
    let t = Routes::new().publish(&[a, b]);
    let a = t.lookup_hbone("a.local", 80).unwrap();
    assert_eq!(a.waypoint.as_deref(), Some("wp.local"));
    assert_eq!(a.endpoints.len(), 1);
    assert!(
        t.lookup("a.local", 80).unwrap().waypoint.is_none(),
        "classic route"
    );
    let b = t.lookup_hbone("b.local", 80).unwrap();
    assert_eq!(b.waypoint.as_deref(), Some("wp.local"));
    assert_eq!(b.candidates(""), Err(LookupError::NoHealthyEndpoint));
    assert!(t.lookup_hbone("b.local", 81).is_none());
    assert_eq!(b.waypoints(0), Some(("wp.local", None)));
    assert_eq!(t.lookup("a.local", 80).unwrap().waypoints(0), None);
}

/// Endpoints that are not Istio mTLS workloads are listed on their classic route and
/// never candidates there (Istio's `EndpointsWithMTLSFilter`); HBONE and waypoint dials
/// take them (a waypoint pod has no sidecar label).
#[test]
fn only_mtls_endpoints_take_classic_connections() {
    let v1: &[(&str, &str)] = &[("version", "v1")];
    let mut a = spec("a.local", &[("10.0.0.1", true, v1), ("10.0.0.2", true, v1)]);
    a.endpoints[0].mtls = false;
    a.endpoints[0].hbone_port = Some(15008);
    a.waypoint = Some("wp.local".into());
    let mut wp = spec("wp.local", &[("10.0.0.9", true, &[])]);
    wp.ports = vec![15008];
    wp.endpoints[0].ports = [(15008, 15008)].into();
    wp.endpoints[0].mtls = false;
    let t = Routes::new().publish(&[a, wp]);
    let r = t.lookup("a.local", 80).unwrap();
    assert_eq!(r.endpoints.len(), 2, "both listed");
    let ips = |r: &Route, subset| -> Vec<String> {
        let c = r.candidates(subset).unwrap();
        c.iter()
            .map(|&i| r.endpoints[i].state.addr.ip().to_string())
            .collect()
    };
    assert_eq!(ips(r, ""), ["10.0.0.2"]);
    assert_eq!(ips(r, "v1"), ["10.0.0.2"]);
    assert_eq!(
        ips(t.lookup_hbone("a.local", 80).unwrap(), ""),
        ["10.0.0.1"]
    );
    // The waypoint: no classic candidate, but its own route dials it.
    let classic = t.lookup("wp.local", 15008).unwrap();
    assert_eq!(classic.candidates(""), Err(LookupError::NoHealthyEndpoint));
    let to = t.lookup_waypoint("wp.local").unwrap();
    assert_eq!(ips(to, ""), ["10.0.0.9"]);
    assert!(t.lookup_waypoint("a.local").is_none(), "only waypoints");
}

/// A canary is the first choice for a draw below its weight, the waypoint otherwise, and
/// each is the other's fallback.
#[test]
fn a_canary_is_chosen_below_its_weight() {
    let mut a = spec("a.local", &[]);
    a.waypoint = Some("wp.local".into());
    a.canary = Some(Canary {
        host: "wp2.local".into(),
        weight: 30,
    });
    let t = Routes::new().publish(&[a]);
    let r = t.lookup_hbone("a.local", 80).unwrap();
    assert_eq!(r.waypoints(0), Some(("wp2.local", Some("wp.local"))));
    assert_eq!(r.waypoints(29), Some(("wp2.local", Some("wp.local"))));
    assert_eq!(r.waypoints(30), Some(("wp.local", Some("wp2.local"))));
    assert_eq!(r.waypoints(99), Some(("wp.local", Some("wp2.local"))));
    let share = (0..100).filter(|&d| r.waypoints(d).unwrap().0 == "wp2.local");
    assert_eq!(share.count(), 30);
}

/// Endpoints at 15443 are left out of the classic table (and listed); a route left with
/// none is no route; the HBONE side, other ports and other endpoints stay.
#[test]
fn names_too_long_to_send_are_listed() {
    // "outbound_.80_._." is 16 bytes: a 239-byte host fits only without a subset.
    let (fits, subset_over, over) = ("a".repeat(200), "b".repeat(239), "c".repeat(240));
    let ep: &[Ep] = &[("10.0.0.1", true, &[])];
    let t = Routes::new().publish(&[spec(&fits, ep), spec(&subset_over, ep), spec(&over, ep)]);
    let listed: Vec<_> = t
        .too_long
        .iter()
        .map(|l| (l.host.len(), l.subset.as_str(), l.len))
        .collect();
    assert_eq!(listed, [(239, "v1", 257), (240, "", 256)]);
    // Listed, not dropped: the route is there for HBONE and a client that can send it.
    assert!(t.lookup(&over, 80).is_some());
}

#[test]
fn passthrough_ports_are_never_dialed() {
    let mut gw = spec(
        "gw.istio-system.svc.cluster.local",
        &[("10.0.0.9", true, &[])],
    );
    gw.ports = vec![15443, 15021];
    gw.endpoints[0].ports = [(15443, 15443), (15021, 15021)].into();
    gw.endpoints[0].hbone_port = Some(15008);
    let mut own = spec(
        "other.local",
        &[("10.0.0.7", true, &[]), ("10.0.0.8", true, &[])],
    );
    own.endpoints[0].ports = [(80, 15443)].into();
    let t = Routes::new().publish(&[gw, own]);
    let dialed = |host, port| {
        t.lookup(host, port).map(|r| {
            r.endpoints
                .iter()
                .map(|e| e.state.addr.to_string())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(dialed("gw.istio-system.svc.cluster.local", 15443), None);
    assert_eq!(
        dialed("gw.istio-system.svc.cluster.local", 15021),
        Some(vec!["10.0.0.9:15021".to_string()])
    );
    assert_eq!(
        dialed("other.local", 80),
        Some(vec!["10.0.0.8:3000".to_string()])
    );
    let hbone = t
        .lookup_hbone("gw.istio-system.svc.cluster.local", 15443)
        .unwrap();
    assert_eq!(hbone.endpoints[0].state.addr.to_string(), "10.0.0.9:15008");
    let left: Vec<_> = t
        .left_out
        .iter()
        .map(|l| (l.port, l.endpoint.to_string()))
        .collect();
    assert_eq!(
        left,
        [
            (15443, "10.0.0.9:15443".to_string()),
            (80, "10.0.0.7:15443".to_string())
        ]
    );
}
