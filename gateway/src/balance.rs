//! Choosing among a cluster's usable endpoints (neither ejected, unless in panic, nor tried):
//! least connections of two random choices, by effective weight where weights differ or a
//! DestinationRule's warmup slows new endpoints, in turn, at random, or by the client's
//! address, as the rule's balancer says. Allocates nothing per pick.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::Rng;

use crate::clock;
use crate::dr_conn::Lb;
use crate::endpoint::EndpointState;
use crate::routes::{Endpoint, Route};
use crate::warmup::Warmup;

/// How a pick chooses among usable endpoints: the DestinationRule's balancer, the route's
/// round-robin turn where it balances so, the client's address for a source-IP hash, and
/// whether this connection leaves the gateway's zone first (`upstream::stays_near`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Way<'a> {
    pub lb: Lb,
    pub turn: Option<&'a AtomicU32>,
    pub client: Option<IpAddr>,
    pub far_first: bool,
    /// The rule's slow start for new endpoints, if it sets one.
    pub warmup: Option<Warmup>,
}

/// Picks among `candidates` (indices into `route.endpoints`) one neither ejected nor in
/// `tried`, by two random choices and the fewer active connections. `None` means every
/// candidate is ejected or tried. Allocates nothing: the usable ones are counted, then the
/// chosen ones found by position.
pub fn pick(
    route: &Route,
    candidates: &[usize],
    tried: &[SocketAddr],
) -> Option<Arc<EndpointState>> {
    pick_heeding(route, candidates, tried, true, Way::default())
}

/// [`pick`], leaving ejected endpoints out only with `heed_ejections` (not in panic mode),
/// the `way` it says.
pub(crate) fn pick_heeding(
    route: &Route,
    candidates: &[usize],
    tried: &[SocketAddr],
    heed_ejections: bool,
    way: Way<'_>,
) -> Option<Arc<EndpointState>> {
    let now = std::cell::OnceCell::new();
    let now = || *now.get_or_init(clock::now_ms);
    let ejected = move |s: &EndpointState| heed_ejections && s.health.is_ejected_at(now);
    let usable = || {
        candidates
            .iter()
            .map(|&i| &route.endpoints[i])
            .filter(move |e| !ejected(&e.state) && !tried.contains(&e.state.addr))
    };
    if let Some(w) = way.warmup {
        let now = now();
        if usable().any(|e| w.warming(e.state.ready_since(), now)) {
            let per_active = way.lb == Lb::LeastRequest;
            return pick_weighted(usable, |e| {
                let weight = if route.weighted { e.weight } else { 1 };
                let slowed = f64::from(weight) * w.factor(e.state.ready_since(), now);
                if per_active {
                    slowed / (e.state.active() as f64 + 1.0)
                } else {
                    slowed
                }
            });
        }
    }
    match way.lb {
        Lb::LeastRequest if route.weighted => return pick_weighted(usable, per_active_weight),
        Lb::LeastRequest => {}
        Lb::Random => return at_random(usable),
        Lb::RoundRobin => {
            let turn = way.turn.map(|t| t.fetch_add(1, Ordering::Relaxed));
            return in_turn(usable, route.weighted, turn.unwrap_or_else(rand::random));
        }
        Lb::SourceIpHash => return by_source(usable, way.client),
    }
    let usable = || usable().map(|e| &e.state);
    let n = usable().count();
    let (a, b) = match n {
        0 => return None,
        1 => (0, 0),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n - 1);
            (a, if b >= a { b + 1 } else { b })
        }
    };
    fewer_active(usable(), a, b).cloned()
}

/// A usable endpoint drawn uniformly: counted, then walked to; the last one where another
/// worker's ejection between the count and the walk made the list shorter.
fn at_random<'a, I: Iterator<Item = &'a Endpoint>>(
    usable: impl Fn() -> I,
) -> Option<Arc<EndpointState>> {
    let n = usable().count();
    let at = (n > 0).then(|| rand::rng().random_range(0..n))?;
    usable().take(at + 1).last().map(|e| e.state.clone())
}

/// Round robin: the `turn`th usable endpoint, counting each `weight` times where weights
/// differ (each takes its weight's share of every cycle, as Envoy's weighted round robin
/// does, though in runs rather than interleaved).
fn in_turn<'a, I: Iterator<Item = &'a Endpoint>>(
    usable: impl Fn() -> I,
    weighted: bool,
    turn: u32,
) -> Option<Arc<EndpointState>> {
    let weight = |e: &Endpoint| if weighted { u64::from(e.weight) } else { 1 };
    let total: u64 = usable().map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut at = u64::from(turn) % total;
    let mut last = None;
    for e in usable() {
        match at.checked_sub(weight(e)) {
            None => return Some(e.state.clone()),
            Some(rest) => at = rest,
        }
        last = Some(e);
    }
    last.map(|e| e.state.clone())
}

/// A source-IP hash: the usable endpoint with the highest weighted rendezvous score for the
/// client's address (a client keeps its endpoint while that one stays usable, and only the
/// clients of an endpoint that goes move, as with Envoy's ring). Without an address, random.
fn by_source<'a, I: Iterator<Item = &'a Endpoint>>(
    usable: impl Fn() -> I,
    client: Option<IpAddr>,
) -> Option<Arc<EndpointState>> {
    let Some(client) = client else {
        return at_random(usable);
    };
    let score = |e: &Endpoint| {
        let mut h = std::hash::DefaultHasher::new();
        (client, e.state.addr).hash(&mut h);
        // A uniform draw in (0, 1) from the hash; weight / -ln(draw) is the weighted
        // rendezvous score (the highest wins, in proportion to weight across clients).
        let draw = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        f64::from(e.weight) / -draw.ln()
    };
    usable()
        .map(|e| (score(e), e))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e.state.clone())
}

/// Envoy's least-request weight of a host, with its default bias of 1: `weight / (active +
/// 1)`. With no connection active, an endpoint takes its weight's share; one holding more
/// connections per unit of weight, less.
fn per_active_weight(e: &Endpoint) -> f64 {
    f64::from(e.weight) / (e.state.active() as f64 + 1.0)
}

/// A usable endpoint chosen with a chance in proportion to its `effective` weight, where
/// Envoy's scheduler takes hosts in that proportion in turn: for a route whose endpoints'
/// weights differ ([`per_active_weight`]), and while a rule's warmup slows new endpoints
/// down ([`Warmup::factor`]: Envoy builds its weighted scheduler then, for round robin too).
fn pick_weighted<'a, I: Iterator<Item = &'a Endpoint>>(
    usable: impl Fn() -> I,
    effective: impl Fn(&Endpoint) -> f64,
) -> Option<Arc<EndpointState>> {
    let total: f64 = usable().map(&effective).sum();
    if total <= 0.0 {
        return None;
    }
    let mut at = rand::rng().random::<f64>() * total;
    let mut last = None;
    for e in usable() {
        at -= effective(e);
        if at < 0.0 {
            return Some(e.state.clone());
        }
        last = Some(e);
    }
    // Rounding, or connections that ended or an ejection by another worker between the two
    // passes, left the draw past the end: the last usable one.
    last.map(|e| e.state.clone())
}

/// Of the endpoints at positions `a` and `b` of `usable`, the one with fewer active
/// connections. Another worker may eject an endpoint between the count and this pass, so
/// the list can be shorter than counted: a position past its end gives way to the other, and
/// both to the last usable one (`None` only when none is left).
fn fewer_active<'a>(
    usable: impl Iterator<Item = &'a Arc<EndpointState>>,
    a: usize,
    b: usize,
) -> Option<&'a Arc<EndpointState>> {
    let (mut x, mut y, mut last) = (None, None, None);
    for (i, ep) in usable.enumerate().take(a.max(b) + 1) {
        if i == a {
            x = Some(ep);
        }
        if i == b {
            y = Some(ep);
        }
        last = Some(ep);
    }
    match (x, y) {
        (Some(x), Some(y)) => Some(if y.active() < x.active() { y } else { x }),
        (Some(one), None) | (None, Some(one)) => Some(one),
        (None, None) => last,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::routes::{EndpointSpec, Routes, ServiceSpec};

    pub(crate) fn table(n: u8) -> Arc<crate::routes::RouteTable> {
        zoned(n, |_| None, false, None)
    }

    /// `n` endpoints 10.0.0.1.., each in `zone_of(i)`, published by a gateway in `zone`.
    pub(crate) fn zoned(
        n: u8,
        zone_of: impl Fn(u8) -> Option<&'static str>,
        prefer_close: bool,
        zone: Option<&str>,
    ) -> Arc<crate::routes::RouteTable> {
        let spec = service(n, zone_of, prefer_close);
        Routes::new().publish_in(&[spec], zone.map(Arc::from).as_ref())
    }

    /// `a.local:80` served by `n` endpoints 10.0.0.1.., each in `zone_of(i)`.
    pub(crate) fn service(
        n: u8,
        zone_of: impl Fn(u8) -> Option<&'static str>,
        prefer_close: bool,
    ) -> ServiceSpec {
        ServiceSpec {
            host: "a.local".into(),
            ports: vec![80],
            subsets: Default::default(),
            waypoint: None,
            canary: None,
            prefer_close,
            tls: Default::default(),
            conn: Default::default(),
            endpoints: (1..=n)
                .map(|i| EndpointSpec {
                    address: format!("10.0.0.{i}").parse().unwrap(),
                    ports: [(80, 80)].into(),
                    labels: Default::default(),
                    ready: true,
                    hbone_port: None,
                    zone: zone_of(i).map(Arc::from),
                    mtls: true,
                    mtls_disabled: Vec::new(),
                    weight: 1,
                })
                .collect(),
        }
    }

    /// `a.local:80` served by endpoints 10.0.0.1.. of these weights.
    fn weighted(weights: &[u32]) -> Arc<crate::routes::RouteTable> {
        let n = u8::try_from(weights.len()).unwrap();
        let mut spec = service(n, |_| None, false);
        for (e, &w) in spec.endpoints.iter_mut().zip(weights) {
            e.weight = w;
        }
        Routes::new().publish(&[spec])
    }

    /// Endpoints of weights 1, 3 and 6 take those shares of new connections while none is
    /// active, and shares by `weight / (active + 1)` once some are (Envoy's least-request
    /// with weights). Equal weights keep the unweighted pick.
    #[test]
    fn weights_share_connections_and_active_ones_count_per_unit_of_weight() {
        let t = weighted(&[1, 3, 6]);
        let r = t.lookup("a.local", 80).unwrap();
        assert!(r.weighted);
        let c = r.candidates("").unwrap();
        // Picks of each endpoint in 20,000, against the expected counts (within `margin`).
        let shares = |want: [u32; 3], margin: u32| {
            let mut got = [0u32; 3];
            for _ in 0..20_000 {
                let ep = pick(r, c, &[]).unwrap();
                got[usize::from(ep.addr.ip().to_string().as_bytes()[7] - b'1')] += 1;
            }
            for (got, want) in got.iter().zip(want) {
                assert!(
                    got.abs_diff(want) < margin,
                    "{got} of 20,000, expected about {want}"
                );
            }
        };
        // Weights 1, 3 and 6: a binomial's deviation here is at most 71.
        shares([2_000, 6_000, 12_000], 600);
        // Effective weights `weight / (active + 1)`: weight 1 with 2 active 1/3, weight 3
        // with none 3, weight 6 with 20 active 6/21; shares 0.092, 0.829 and 0.079.
        let st = |i: usize| &r.endpoints[c[i]].state;
        let _held: Vec<_> = (0..20)
            .map(|_| st(2).track())
            .chain((0..2).map(|_| st(0).track()))
            .collect();
        shares([1_842, 16_579, 1_579], 400);
        // Equal weights: the route is not weighted, and a tried or ejected one is skipped.
        let t = Routes::new().publish(&[service(2, |_| None, false)]);
        assert!(!t.lookup("a.local", 80).unwrap().weighted);
        let tried = [st(1).addr, st(2).addr];
        for _ in 0..20 {
            assert_eq!(pick(r, c, &tried).unwrap().addr, st(0).addr);
        }
        st(0).health.eject(clock::now_ms(), 60_000, 60_000);
        assert!(pick(r, c, &tried).is_none());
    }

    /// A DestinationRule's balancers: round robin in turn (by weight where weights differ),
    /// random uniformly (weights ignored, as Envoy's), a source-IP hash the same endpoint
    /// for one client and spread across many; each skips tried endpoints.
    #[test]
    fn a_rules_balancers_pick_in_turn_at_random_or_by_the_client() {
        let t = table(3);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let turn = AtomicU32::new(0);
        let way = |lb, client| Way {
            lb,
            turn: Some(&turn),
            client,
            far_first: false,
            warmup: None,
        };
        let nth =
            |ep: Arc<EndpointState>| usize::from(ep.addr.ip().to_string().as_bytes()[7] - b'1');
        let rr: Vec<usize> = (0..9)
            .map(|_| nth(pick_heeding(r, c, &[], true, way(Lb::RoundRobin, None)).unwrap()))
            .collect();
        assert_eq!(rr, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let tried = [r.endpoints[c[1]].state.addr];
        for _ in 0..6 {
            let ep = pick_heeding(r, c, &tried, true, way(Lb::RoundRobin, None)).unwrap();
            assert_ne!(nth(ep), 1, "a tried endpoint is skipped");
        }
        // Random: about a third each over 9,000 picks, even with one busy endpoint.
        let _busy: Vec<_> = (0..50).map(|_| r.endpoints[c[0]].state.track()).collect();
        let mut got = [0u32; 3];
        for _ in 0..9_000 {
            got[nth(pick_heeding(r, c, &[], true, way(Lb::Random, None)).unwrap())] += 1;
        }
        assert!(got.iter().all(|&n| n.abs_diff(3_000) < 300), "{got:?}");
        // A source-IP hash: one client, one endpoint; 300 clients spread over all three.
        let client = |i: u32| Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        let by = |i| nth(pick_heeding(r, c, &[], true, way(Lb::SourceIpHash, client(i))).unwrap());
        for i in 0..300 {
            assert_eq!(by(i), by(i), "client {i}");
        }
        let mut spread = [0u32; 3];
        (0..300).for_each(|i| spread[by(i)] += 1);
        assert!(spread.iter().all(|&n| n > 60), "{spread:?}");
        // Leaving one endpoint out moves only its clients.
        let skip = [r.endpoints[c[2]].state.addr];
        for i in 0..300 {
            let ep =
                nth(pick_heeding(r, c, &skip, true, way(Lb::SourceIpHash, client(i))).unwrap());
            if by(i) != 2 {
                assert_eq!(ep, by(i), "client {i} moved though its endpoint stayed");
            }
        }
    }

    /// Round robin by weight: weights 1, 2 and 3 take 1, 2 and 3 of every 6 turns.
    #[test]
    fn round_robin_weighs_each_turn_of_the_cycle() {
        let t = weighted(&[1, 2, 3]);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let turn = AtomicU32::new(0);
        let way = Way {
            lb: Lb::RoundRobin,
            turn: Some(&turn),
            client: None,
            far_first: false,
            warmup: None,
        };
        let mut got = [0u32; 3];
        for _ in 0..60 {
            let ep = pick_heeding(r, c, &[], true, way).unwrap();
            got[usize::from(ep.addr.ip().to_string().as_bytes()[7] - b'1')] += 1;
        }
        assert_eq!(got, [10, 20, 30]);
    }

    /// A rule's warmup: an endpoint that has just become ready takes its weight times the
    /// factor's floor (10 %) against the others' whole weight, by least request (where active
    /// connections divide every weight) and by round robin; none warming, the usual picks.
    #[test]
    fn a_warming_endpoint_takes_a_slowed_share() {
        let t = table(3);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        // Two long ready (no stamp: whole weight), the third ready just now.
        for &i in c {
            r.endpoints[i].state.mark_not_ready();
        }
        let fresh = &r.endpoints[c[2]].state;
        fresh.mark_ready(clock::now_ms());
        let warmup = Warmup::new(std::time::Duration::from_secs(600), 10.0, 1.0);
        let turn = AtomicU32::new(0);
        let way = |lb, warmup| Way {
            lb,
            turn: Some(&turn),
            warmup,
            ..Way::default()
        };
        let share = |way: Way<'_>| {
            let hits = (0..21_000)
                .filter(|_| Arc::ptr_eq(&pick_heeding(r, c, &[], true, way).unwrap(), fresh))
                .count();
            hits as f64 / 21_000.0
        };
        // 0.1 / 2.1 of the picks, about 1,000.
        for lb in [Lb::LeastRequest, Lb::RoundRobin] {
            let got = share(way(lb, warmup));
            assert!((0.035..0.065).contains(&got), "{lb:?}: {got}");
        }
        // Without the rule's warmup, a third.
        for lb in [Lb::LeastRequest, Lb::RoundRobin] {
            let got = share(way(lb, None));
            assert!((0.30..0.37).contains(&got), "{lb:?}: {got}");
        }
        // Least request divides by active connections too: nine on each old endpoint make
        // their weight 0.1, the fresh one's: a third each.
        let _busy: Vec<_> = (c[..2].iter())
            .flat_map(|&i| (0..9).map(move |_| r.endpoints[i].state.track()))
            .collect();
        let got = share(way(Lb::LeastRequest, warmup));
        assert!((0.30..0.37).contains(&got), "{got}");
    }

    #[test]
    fn p2c_prefers_fewer_connections() {
        let t = table(2);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let st = |i: usize| &r.endpoints[c[i]].state;
        let busy: Vec<_> = (0..10).map(|_| st(0).track()).collect();
        // With two candidates both are always sampled, so the idle one always wins.
        for _ in 0..50 {
            assert_eq!(pick(r, c, &[]).unwrap().addr, st(1).addr);
        }
        drop(busy);
    }

    #[test]
    fn a_list_shorter_than_counted_still_gives_an_endpoint() {
        let t = table(3);
        let r = t.lookup("a.local", 80).unwrap();
        let eps: Vec<&Arc<EndpointState>> = r.endpoints.iter().map(|e| &e.state).collect();
        let addr = |e: Option<&Arc<EndpointState>>| e.map(|e| e.addr);
        let of = |n: usize, a, b| addr(fewer_active(eps[..n].iter().copied(), a, b));
        assert_eq!(
            of(3, 0, 2),
            addr(Some(eps[0])),
            "both there: ties go to the first"
        );
        assert_eq!(of(2, 0, 2), addr(Some(eps[0])), "b past the end: a");
        assert_eq!(of(2, 2, 1), addr(Some(eps[1])), "a past the end: b");
        assert_eq!(
            of(2, 2, 3),
            addr(Some(eps[1])),
            "both past the end: the last"
        );
        assert_eq!(of(0, 0, 1), None, "none left");
    }

    /// Another worker ejects and readmits endpoints while this one picks: the count and the
    /// pass that finds the chosen positions can disagree, which must not panic.
    #[test]
    fn ejections_by_another_worker_during_a_pick_do_not_panic() {
        let t = table(4);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        /// Stops the other worker however this one ends, a panic included.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let health = |i: usize| &r.endpoints[c[i]].state.health;
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < until
                {
                    for i in 1..4 {
                        health(i).eject(clock::now_ms(), 60_000, 60_000);
                    }
                    for i in 1..4 {
                        // Ejected until 1 ms after the epoch: readmitted.
                        health(i).eject(0, 1, 1);
                    }
                }
            });
            let _stop = Stop(&stop);
            let mut found = 0;
            for _ in 0..300_000 {
                found += usize::from(pick(r, c, &[]).is_some());
            }
            assert_eq!(found, 300_000, "endpoint 0 is never ejected");
        });
    }

    #[test]
    fn pick_skips_tried_and_ejected() {
        let t = table(3);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let st = |i: usize| &r.endpoints[c[i]].state;
        let tried = [st(0).addr];
        for _ in 0..20 {
            assert_ne!(pick(r, c, &tried).unwrap().addr, st(0).addr);
        }
        st(1).health.eject(clock::now_ms(), 60_000, 60_000);
        for _ in 0..20 {
            assert_eq!(pick(r, c, &tried).unwrap().addr, st(2).addr);
        }
        assert!(pick(r, c, &[st(0).addr, st(2).addr]).is_none());
    }
}
