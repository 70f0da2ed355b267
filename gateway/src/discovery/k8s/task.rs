//! The rebuild task: owns the model, applies the watches' updates, rebuilds and publishes
//! the table (debounced), tracks staleness and probes failing watches.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::{Update, Watched};
use super::crd::{Crd, CrdWatch, Gone};
use super::health::{Health, Recovered};
use super::probe::{Kind, Probe};
use super::specs::{Blind, CanaryUnused, Model};
use super::watch::Msg;
use crate::discovery::Publisher;

/// Shortest time between two published tables under a burst of events.
pub const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(100);
/// Wait after the first event of a burst so that events sent together build one table.
const SETTLE: Duration = Duration::from_millis(5);
/// How often staleness is updated and failing watches are probed.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// How many services [`ModelTask::warn_unseen`] names per table.
const UNSEEN_NAMED: usize = 10;

/// Where the gateway runs: its zone as given, or its own address to learn the zone by.
#[derive(Debug, Default)]
pub(super) struct Locality {
    /// `--zone`.
    pub zone: Option<Arc<str>>,
    /// `--pod-ip`: without `zone`, the zone the EndpointSlices give this address.
    pub pod_ip: Option<IpAddr>,
}

pub(super) struct ModelTask {
    model: Model,
    domain: String,
    locality: Locality,
    /// The zone the last table was published with, to log a change once.
    zone: Option<Arc<str>>,
    publisher: Publisher,
    synced: Arc<AtomicBool>,
    probes: Vec<Probe>,
    health: Health<(Kind, usize)>,
    probing: bool,
    /// Restart the CRD polls when an optional type goes away (in [`Crd::ALL`]'s order).
    crds: [CrdWatch; Crd::ALL.len()],
    /// The generation of each optional type in the model (or being polled for).
    generations: [u64; Crd::ALL.len()],
    /// Services bound to a waypoint the gateway cannot see, as last warned of.
    unseen: Vec<(String, String, Blind)>,
    /// Services whose canary waypoint takes none of their tunnels, as last warned of.
    unused_canaries: Vec<(String, String, CanaryUnused)>,
    /// WorkloadEntries on another network, as last told (`Model::entries_elsewhere`).
    entries_elsewhere: Vec<(String, Box<str>)>,
    /// ServiceEntries resolved by DNS, as last told (`Model::entries_by_dns`).
    entries_by_dns: Vec<String>,
}

impl ModelTask {
    pub(super) fn new(
        model: Model,
        domain: String,
        locality: Locality,
        publisher: Publisher,
        probes: Vec<Probe>,
        crds: [CrdWatch; Crd::ALL.len()],
    ) -> Self {
        ModelTask {
            model,
            domain,
            locality,
            zone: None,
            publisher,
            synced: Arc::new(AtomicBool::new(false)),
            probes,
            health: Health::default(),
            probing: false,
            crds,
            generations: [0; Crd::ALL.len()],
            unseen: Vec::new(),
            unused_canaries: Vec::new(),
            entries_elsewhere: Vec::new(),
            entries_by_dns: Vec::new(),
        }
    }

    /// True once the first full table has been published.
    pub(super) fn synced(&self) -> Arc<AtomicBool> {
        self.synced.clone()
    }

    /// Until `stop`: applies the watches' messages, publishes at most every
    /// [`MIN_REBUILD_INTERVAL`], and every [`HEALTH_TICK`] updates staleness and probes.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>, stop: CancellationToken) {
        let (probe_tx, mut probe_rx) = mpsc::channel::<Vec<(Kind, usize)>>(1);
        let mut rebuild_at: Option<tokio::time::Instant> = None;
        let mut last_publish: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(HEALTH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep_until = rebuild_at;
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = rx.recv() => {
                    // The task holds a sender (for the CRD poll): this ends only at stop.
                    let Some(msg) = msg else { return };
                    if self.apply(msg) && self.model.synced() && rebuild_at.is_none() {
                        let now = tokio::time::Instant::now();
                        let earliest = last_publish.map_or(now, |t| t + MIN_REBUILD_INTERVAL);
                        rebuild_at = Some(earliest.max(now + SETTLE));
                    }
                }
                _ = async { tokio::time::sleep_until(sleep_until.expect("guarded")).await }, if sleep_until.is_some() => {
                    rebuild_at = None;
                    last_publish = Some(tokio::time::Instant::now());
                    self.publish();
                }
                _ = tick.tick() => self.health_tick(&probe_tx),
                ok = probe_rx.recv() => {
                    self.probing = false;
                    let ok = ok.unwrap_or_default();
                    // Those whose type's API answers retry now, not after their back-off.
                    if !ok.is_empty() {
                        self.crds[0].watches.wake.answered(ok.iter().copied());
                    }
                    let now = Instant::now();
                    for w in ok {
                        self.health.answered(w, now);
                    }
                }
            }
        }
    }

    /// Applies one message; returns whether the table may need rebuilding.
    fn apply(&mut self, msg: Msg) -> bool {
        let (m, h) = (&mut self.model, &mut self.health);
        let (recovered, changed) = match msg {
            Msg::Service(i, u) => (
                h.observed((Kind::Service, i), &u),
                apply_to(&mut m.services, i, u),
            ),
            Msg::Slice(i, u) => (
                h.observed((Kind::EndpointSlice, i), &u),
                apply_to(&mut m.slices, i, u),
            ),
            Msg::Pod(i, u) => (h.observed((Kind::Pod, i), &u), apply_to(&mut m.pods, i, u)),
            Msg::Namespace(i, u) => (
                h.observed((Kind::Namespace, i), &u),
                apply_to(&mut m.namespaces, i, u),
            ),
            // Late messages from the watches of a deleted CRD are dropped.
            Msg::Rule(g, i, u) => {
                let current = g == self.generations[slot(Crd::DestinationRule)];
                let Some(r) =
                    apply_current(m.rules.as_mut(), current, h, (Kind::DestinationRule, i), *u)
                else {
                    return false;
                };
                r
            }
            Msg::PeerAuth(g, i, u) => {
                let current = g == self.generations[slot(Crd::PeerAuthentication)];
                let key = (Kind::PeerAuthentication, i);
                let Some(r) = apply_current(m.peer_auths.as_mut(), current, h, key, u) else {
                    return false;
                };
                r
            }
            Msg::Waypoint(g, i, u) => {
                let current = g == self.generations[slot(Crd::Gateway)];
                let Some(r) =
                    apply_current(m.waypoints.as_mut(), current, h, (Kind::Gateway, i), u)
                else {
                    return false;
                };
                r
            }
            Msg::GatewayClass(g, i, u) => {
                let current = g == self.generations[slot(Crd::GatewayClass)];
                let Some(r) = apply_current(
                    m.gateway_classes.as_mut(),
                    current,
                    h,
                    (Kind::GatewayClass, i),
                    u,
                ) else {
                    return false;
                };
                r
            }
            Msg::WorkloadEntry(g, i, u) => {
                let current = g == self.generations[slot(Crd::WorkloadEntry)];
                let key = (Kind::WorkloadEntry, i);
                let Some(r) = apply_current(m.workload_entries.as_mut(), current, h, key, u) else {
                    return false;
                };
                r
            }
            Msg::ServiceEntry(g, i, u) => {
                let current = g == self.generations[slot(Crd::ServiceEntry)];
                let key = (Kind::ServiceEntry, i);
                let Some(r) = apply_current(m.service_entries.as_mut(), current, h, key, u) else {
                    return false;
                };
                r
            }
            Msg::CrdStarted(crd, generation, probes) => {
                if generation == self.generations[slot(crd)] {
                    m.crd_started(crd, probes.len());
                    self.probes.extend(probes);
                }
                return false;
            }
            Msg::RuleStreamAdded(crd, generation, probe) => {
                if generation == self.generations[slot(crd)] {
                    // Synced while empty: the new namespace's rules are not waited for.
                    let added = match crd {
                        Crd::DestinationRule => {
                            m.rules.as_mut().map(|w| w.add_synced(probe.stream))
                        }
                        Crd::PeerAuthentication => {
                            m.peer_auths.as_mut().map(|w| w.add_synced(probe.stream))
                        }
                        Crd::Gateway
                        | Crd::GatewayClass
                        | Crd::WorkloadEntry
                        | Crd::ServiceEntry => None,
                    };
                    if added == Some(true) {
                        self.probes.push(probe);
                    }
                }
                return false;
            }
            Msg::CrdGone(crd, generation, why) => return self.crd_gone(crd, generation, why),
            Msg::WatchError(kind, stream) => {
                h.failed((kind, stream), Instant::now());
                return false;
            }
            Msg::Retrying(kind, stream) => {
                h.retried((kind, stream), Instant::now());
                return false;
            }
        };
        self.on_recovered(recovered);
        changed
    }

    /// An optional type's CRD was deleted (or reading it forbidden): what it gave goes, its
    /// watches no longer count for staleness, and the CRD poll starts again for the next
    /// generation.
    fn crd_gone(&mut self, crd: Crd, generation: u64, why: Gone) -> bool {
        if generation != self.generations[slot(crd)] {
            return false;
        }
        let had = self.model.crd_lost(crd);
        let forbidden = why == Gone::Forbidden;
        let flag = self.model.forbidden_flag(crd);
        let changed = had | flag.is_some_and(|f| std::mem::replace(f, forbidden) != forbidden);
        if !had {
            return changed;
        }
        let kind = crd.kind();
        self.probes.retain(|p| p.kind() != kind);
        let recovered = self.health.forget(|w| w.0 != kind);
        self.on_recovered(recovered);
        self.generations[slot(crd)] += 1;
        let watch = &self.crds[slot(crd)];
        let cause = match why {
            Gone::NotServed => "its CRD was deleted",
            Gone::Forbidden => "403: see the warning above",
        };
        tracing::info!(
            resource = kind.resource(),
            recheck = ?watch.recheck,
            "no longer readable ({cause}): {}; checking again every recheck",
            why.lacks(crd)
        );
        tokio::spawn(watch.clone().poll(self.generations[slot(crd)], forbidden));
        true
    }

    fn on_recovered(&self, recovered: Recovered) {
        if recovered.0 {
            self.publisher.metrics().stale_seconds.set(0);
            tracing::info!("Kubernetes watches current again");
        }
    }

    fn health_tick(&mut self, probe_tx: &mpsc::Sender<Vec<(Kind, usize)>>) {
        let now = Instant::now();
        let recovered = self.health.tick(now);
        self.on_recovered(recovered);
        let stale = self.health.stale_seconds(now);
        self.publisher.metrics().stale_seconds.set(stale as i64);
        let failing = self.health.to_probe();
        if failing.is_empty() || self.probing {
            return;
        }
        // Probing tells when the API server answers again: failing watches are woken
        // to retry, and a watch that resumed without an error is current again.
        let probes: Vec<Probe> = self
            .probes
            .iter()
            .filter(|p| failing.contains(&(p.kind(), p.stream)))
            .cloned()
            .collect();
        self.probing = true;
        let tx = probe_tx.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for p in probes {
                if p.answers().await {
                    ok.push((p.kind(), p.stream));
                }
            }
            let _ = tx.send(ok).await;
        });
    }

    fn publish(&mut self) {
        let started = Instant::now();
        let specs = self.model.specs(&self.domain);
        let zone = self.zone();
        let built = started.elapsed();
        let table = self.publisher.publish("kubernetes", &specs, zone.as_ref());
        tracing::debug!(
            generation = table.generation,
            services = specs.len(),
            build_ms = built.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "kubernetes route table rebuilt"
        );
        self.warn_unseen();
        self.warn_unused_canaries();
        self.tell_entries_elsewhere();
        self.warn_entries_by_dns();
        if !self.synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                services = self.model.services.len(),
                slices = self.model.slices.len(),
                pods = self.model.pods.len(),
                destination_rules = self.model.rules.as_ref().map(|r| r.len()),
                waypoints = self.model.waypoints.as_ref().map(|w| w.len()),
                zone = self.zone.as_deref().unwrap_or("unknown"),
                "first Kubernetes sync complete; ready"
            );
            if self.zone.is_none()
                && let Some(ip) = self.locality.pod_ip
            {
                tracing::info!(
                    pod_ip = %ip,
                    "gateway zone unknown: no EndpointSlice lists this pod with a zone (give --zone); trafficDistribution is not applied until one does"
                );
            }
        }
    }

    /// The gateway's zone: `--zone`, else the one the EndpointSlices give `--pod-ip` (the
    /// gateway's own Service lists its pod), kept when no slice lists it any more (a pod
    /// never changes zone; its Service may be re-created). Logged when first known or changed.
    fn zone(&mut self) -> Option<Arc<str>> {
        let zone = match (&self.locality.zone, self.locality.pod_ip) {
            (Some(z), _) => Some(z.clone()),
            (None, Some(ip)) => self.model.zone_of(ip).or_else(|| self.zone.clone()),
            (None, None) => None,
        };
        if zone != self.zone {
            match (&zone, self.locality.pod_ip) {
                (Some(z), Some(ip)) if self.locality.zone.is_none() => tracing::info!(
                    zone = %z,
                    pod_ip = %ip,
                    "gateway zone learned from the EndpointSlice listing this pod; services with trafficDistribution PreferClose go to endpoints in it first"
                ),
                (Some(z), _) => tracing::info!(zone = %z, "gateway zone"),
                (None, _) => {}
            }
            self.zone = zone.clone();
        }
        zone
    }

    /// Warns of each Service newly bound to a waypoint the gateway cannot see (up to
    /// [`UNSEEN_NAMED`] by name per table, then a count), once until it is seen again.
    fn warn_unseen(&mut self) {
        let unseen = self.model.unseen_waypoints(&self.domain);
        let more = tell_newly(
            &unseen,
            &self.unseen,
            |(service, waypoint, why)| match why {
                Blind::NotWatched => tracing::warn!(
                    %service,
                    %waypoint,
                    namespaces = %self.model.watched_namespaces.join(","),
                    "service is bound to a waypoint in a namespace the gateway does not watch: \
                     its HBONE tunnels are refused (503) rather than sent around the waypoint; \
                     add the waypoint's namespace to --namespace"
                ),
                Blind::ClassForbidden => tracing::warn!(
                    %service,
                    %waypoint,
                    "service is bound to a waypoint whose listeners refuse its namespace, but \
                     whose GatewayClass may name another listener, and the gateway may not \
                     read gatewayclasses.gateway.networking.k8s.io (403): its HBONE tunnels \
                     are refused (503) rather than sent around the waypoint; grant list and \
                     watch on gatewayclasses to the gateway's service account"
                ),
                Blind::Forbidden => tracing::warn!(
                    %service,
                    %waypoint,
                    "service is bound to a waypoint, and the gateway may not read \
                     gateways.gateway.networking.k8s.io (403): its HBONE tunnels are refused \
                     (503) rather than sent around the waypoint; grant list and watch on \
                     gateways to the gateway's service account"
                ),
            },
        );
        if more > 0 {
            tracing::warn!(
                more,
                "more services are bound to waypoints the gateway cannot see (as above)"
            );
        }
        self.unseen = unseen;
    }

    /// Warns of each Service whose canary waypoint newly takes none of its tunnels (up to
    /// [`UNSEEN_NAMED`] by name per table, then a count), once until that changes.
    fn warn_unused_canaries(&mut self) {
        let unused = self.model.unused_canaries(&self.domain);
        let more = tell_newly(&unused, &self.unused_canaries, |(service, canary, why)| {
            let why = match why {
                CanaryUnused::InvalidWeight(w) => format!(
                    "its istio.io/use-waypoint-canary-weight {:?} is not a whole number from 0 \
                     to 100",
                    w.chars().take(32).collect::<String>()
                ),
                CanaryUnused::SameAsPrimary => "it names the service's waypoint itself".into(),
                CanaryUnused::NotUsable => "no such waypoint is ready, or it does not take \
                    this service (its listeners' allowedRoutes, or istio.io/waypoint-for)"
                    .into(),
                CanaryUnused::Unseen(Blind::NotWatched) => {
                    "its namespace is not among --namespace".into()
                }
                CanaryUnused::Unseen(_) => "the gateway may not read it (403)".into(),
            };
            tracing::warn!(
                %service,
                %canary,
                "the service's canary waypoint takes none of its tunnels: {why}; all go to \
                 its waypoint, as Istio falls back"
            );
        });
        if more > 0 {
            tracing::warn!(
                more,
                "more services have canary waypoints that take none of their tunnels"
            );
        }
        self.unused_canaries = unused;
    }

    /// Tells of each WorkloadEntry newly seen on another network (up to [`UNSEEN_NAMED`] by
    /// name per table, then a count): it is no endpoint here, by design, so this is no warning.
    fn tell_entries_elsewhere(&mut self) {
        let now = self.model.entries_elsewhere();
        let more = tell_newly(&now, &self.entries_elsewhere, |(entry, network)| {
            tracing::info!(
                %entry,
                %network,
                "WorkloadEntry is on another network than this cluster's: the gateway does \
                 not dial it (sidecars on other networks reach it through its own network's \
                 gateway)"
            );
        });
        if more > 0 {
            tracing::info!(
                more,
                "more WorkloadEntries are on other networks (as above)"
            );
        }
        self.entries_elsewhere = now;
    }

    /// Warns of each mesh-internal ServiceEntry newly seen resolved by DNS (up to
    /// [`UNSEEN_NAMED`] by name per table, then a count): a sidecar may expect this gateway to
    /// serve its hosts.
    fn warn_entries_by_dns(&mut self) {
        let by_dns = self.model.entries_by_dns();
        let more = tell_newly(&by_dns, &self.entries_by_dns, |entry| {
            tracing::warn!(
                %entry,
                "mesh-internal ServiceEntry is resolved by DNS, which the gateway does not \
                 follow (it would resolve the names it dials): a host it owns is refused \
                 no_route here; give it STATIC resolution with endpoints, or a \
                 workloadSelector, to route it through this gateway"
            );
        });
        if more > 0 {
            tracing::warn!(
                more,
                "more mesh-internal ServiceEntries are resolved by DNS (as above)"
            );
        }
        self.entries_by_dns = by_dns;
    }
}

/// Gives `tell` each entry of `now` (sorted) that was not in `before` (sorted), the first
/// [`UNSEEN_NAMED`] of them, so that each is told once; returns how many more there were.
fn tell_newly<T: Ord>(now: &[T], before: &[T], tell: impl FnMut(&T)) -> usize {
    let mut new = (now.iter()).filter(|u| before.binary_search(u).is_err());
    new.by_ref().take(UNSEEN_NAMED).for_each(tell);
    new.count()
}

/// The index of `crd` in [`ModelTask::crds`] and its generations.
fn slot(crd: Crd) -> usize {
    Crd::ALL
        .iter()
        .position(|&c| c == crd)
        .expect("every Crd is in ALL")
}

/// An optional type's update, applied only while its watches are the `current` generation
/// and it is in the model: the health it reports and whether the table may change.
fn apply_current<T: PartialEq>(
    watched: Option<&mut Watched<T>>,
    current: bool,
    health: &mut Health<(Kind, usize)>,
    watch: (Kind, usize),
    u: Update<T>,
) -> Option<(Recovered, bool)> {
    let watched = watched.filter(|_| current)?;
    let recovered = health.observed(watch, &u);
    Some((recovered, apply_to(watched, watch.1, u)))
}

fn apply_to<T: PartialEq>(w: &mut Watched<T>, stream: usize, u: Update<T>) -> bool {
    match w.streams.get_mut(stream) {
        Some(c) => c.apply(u),
        None => false,
    }
}
