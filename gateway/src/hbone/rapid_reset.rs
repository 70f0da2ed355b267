//! The premature-reset rule against rapid reset (CVE-2023-44487) on 15008, per connection and
//! per client identity.
//!
//! A CONNECT stream the client resets before its answer, or after its 200 but before sending
//! a byte, is *premature*: it cost the cluster a dial (or part of one) and carried nothing.
//! A connection with at least [`PREMATURE_RESETS_MIN`] premature resets that are also more
//! than half of all its streams gets GOAWAY ENHANCE_YOUR_CALM, as Envoy's premature-reset
//! rule. So one outer connection buys at most about 100 wasted dials.
//!
//! A client with a valid mesh certificate could simply reconnect, and every handshake would
//! buy another 100. So an identity (the client's SPIFFE id; no id is a key of its own) whose
//! connection was cut *cools* for [`COOLING_BASE`] after the cut, and while it cools its
//! connections are cut at [`COOLING_RESETS_MIN`] premature resets instead, still only when
//! they are more than half of the connection's streams: after the first cut, each handshake
//! buys about 10 dials. A connection already open when its identity is cut (opened in
//! parallel to dodge the rule) looks the identity up again once it has 10 premature resets
//! and a cut happened anywhere since it last looked: one atomic load per premature reset, a
//! lookup per cut; healthy streams cost nothing. A connection that began while its identity
//! cooled and is still cut doubles the window, up to [`COOLING_MAX`]; a cooled identity is
//! forgotten and starts over at [`COOLING_BASE`] and the 100.
//!
//! The table holds at most [`COOLING_CAPACITY`] identities (under 2 MiB even with the
//! longest ids istiod issues, `spiffe://<td>/ns/<63>/sa/<253>`): to make room, expired
//! entries go first, then the one whose cooling ends first. Each connection takes its lock
//! once when it starts and once if it is cut.
//!
//! False positive: a real ztunnel whose applications give up on a black-holed service
//! within `--connect-timeout` resets its streams while their dials hang. Such a connection is
//! cut like an attacker's, ending the tunnels open on it (the GOAWAY is abrupt), and its
//! identity cools; the ratio condition keeps a connection whose streams are mostly healthy
//! from being cut. Resets late in a hanging dial are not exempted: below `--connect-timeout`
//! that would let a client renew dials to a dead address faster than timing out allows, and at or above it the dial
//! has already been answered 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock;

/// Premature resets that cut a connection of an identity not cooling.
pub const PREMATURE_RESETS_MIN: u64 = 100;
/// Premature resets that cut a connection of a cooling identity.
pub const COOLING_RESETS_MIN: u64 = 10;
/// How long an identity cools after its first cut.
pub const COOLING_BASE: Duration = Duration::from_secs(60);
/// The longest cooling, reached by doubling on cuts of connections begun while cooling.
pub const COOLING_MAX: Duration = Duration::from_secs(600);
/// Identities remembered at most.
pub const COOLING_CAPACITY: usize = 4096;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Identities whose connections were cut by the premature-reset rule, until they cool.
pub struct Cooling {
    state: Mutex<HashMap<Arc<str>, Entry>>,
    capacity: usize,
    /// Cuts recorded so far: a connection that sees it change looks its identity up again.
    cuts: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// In [`clock::now_ms`] milliseconds.
    until_ms: u64,
    window_ms: u64,
}

impl Default for Cooling {
    fn default() -> Self {
        Cooling::with_capacity(COOLING_CAPACITY)
    }
}

impl Cooling {
    pub fn with_capacity(capacity: usize) -> Self {
        Cooling {
            state: Mutex::default(),
            capacity: capacity.max(1),
            cuts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        // Every change leaves the map consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` cools at `now_ms`.
    pub fn is_cooling(&self, id: &str, now_ms: u64) -> bool {
        self.lock().get(id).is_some_and(|e| e.until_ms > now_ms)
    }

    /// Cuts recorded so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Acquire)
    }

    /// Records a cut of a connection of `id` at `now_ms`; `began_cooling`: the connection
    /// started while `id` cooled (a reconnect after a cut). Returns the window in force.
    pub fn record_cut(&self, id: &Arc<str>, now_ms: u64, began_cooling: bool) -> Duration {
        let base = ms(COOLING_BASE);
        let mut map = self.lock();
        let window_ms = match map.get(&**id) {
            Some(e) if e.until_ms > now_ms && began_cooling => {
                e.window_ms.saturating_mul(2).min(ms(COOLING_MAX))
            }
            Some(e) if e.until_ms > now_ms => e.window_ms,
            _ => base,
        };
        let until_ms = now_ms.saturating_add(window_ms);
        if let Some(e) = map.get_mut(&**id) {
            *e = Entry {
                until_ms: e.until_ms.max(until_ms),
                window_ms,
            };
        } else {
            if map.len() >= self.capacity {
                map.retain(|_, e| e.until_ms > now_ms);
            }
            if map.len() >= self.capacity {
                let first = map.iter().min_by_key(|(_, e)| e.until_ms);
                if let Some(k) = first.map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
            map.insert(
                id.clone(),
                Entry {
                    until_ms,
                    window_ms,
                },
            );
        }
        self.cuts.fetch_add(1, Ordering::Release);
        Duration::from_millis(window_ms)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Per outer connection: streams accepted, and those the client reset prematurely. h2's own
/// limit counts only resets of streams not yet accepted, and the gateway accepts at once.
pub struct ResetWatch {
    streams: AtomicU64,
    premature: AtomicU64,
    /// [`PREMATURE_RESETS_MIN`], or [`COOLING_RESETS_MIN`] once its identity is known to cool.
    min: AtomicU64,
    began_cooling: bool,
    /// [`Cooling::cuts`] when its identity was last looked up.
    seen_cuts: AtomicU64,
    cooling: Arc<Cooling>,
    client_id: Arc<str>,
    pub(super) calm: Notify,
}

impl ResetWatch {
    /// A connection of `client_id` starting at `now_ms`: one lookup.
    pub fn new(cooling: Arc<Cooling>, client_id: Arc<str>, now_ms: u64) -> Self {
        // Read before the lookup: a cut in between is looked at again, never missed.
        let seen = cooling.cuts();
        let began_cooling = cooling.is_cooling(&client_id, now_ms);
        ResetWatch {
            streams: AtomicU64::new(0),
            premature: AtomicU64::new(0),
            min: AtomicU64::new(if began_cooling {
                COOLING_RESETS_MIN
            } else {
                PREMATURE_RESETS_MIN
            }),
            began_cooling,
            seen_cuts: AtomicU64::new(seen),
            cooling,
            client_id,
            calm: Notify::new(),
        }
    }

    pub(super) fn premature_reset(&self) {
        let p = self.premature.fetch_add(1, Ordering::Relaxed) + 1;
        if p * 2 <= self.streams.load(Ordering::Relaxed) || p < COOLING_RESETS_MIN {
            return;
        }
        if p >= self.min.load(Ordering::Relaxed) {
            self.calm.notify_one();
            return;
        }
        // Opened before its identity was cut: look again, once per cut anywhere.
        let cuts = self.cooling.cuts();
        if self.seen_cuts.swap(cuts, Ordering::Relaxed) != cuts
            && self.cooling.is_cooling(&self.client_id, clock::now_ms())
        {
            self.min.store(COOLING_RESETS_MIN, Ordering::Relaxed);
            self.calm.notify_one();
        }
    }

    pub(super) fn accepted(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    pub fn premature(&self) -> u64 {
        self.premature.load(Ordering::Relaxed)
    }

    /// The threshold in force.
    pub fn threshold(&self) -> u64 {
        self.min.load(Ordering::Relaxed)
    }

    /// The connection was cut: records it against its identity; returns the identity's
    /// cooling window and whether the connection had begun while it cooled.
    pub(super) fn record_cut(&self, now_ms: u64) -> (Duration, bool) {
        let window = self
            .cooling
            .record_cut(&self.client_id, now_ms, self.began_cooling);
        (window, self.began_cooling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000;

    fn id(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn a_cut_cools_for_the_base_window_then_is_forgotten() {
        let c = Cooling::default();
        let a = id("spiffe://cluster.local/ns/a/sa/x");
        assert!(!c.is_cooling(&a, T0));
        assert_eq!(c.record_cut(&a, T0, false), COOLING_BASE);
        assert!(c.is_cooling(&a, T0 + ms(COOLING_BASE) - 1));
        assert!(!c.is_cooling(&a, T0 + ms(COOLING_BASE)));
        assert!(!c.is_cooling("spiffe://cluster.local/ns/a/sa/y", T0));
        // After it cooled, a cut starts over at the base window.
        let later = T0 + ms(COOLING_BASE) + 5;
        assert_eq!(c.record_cut(&a, later, true), COOLING_BASE);
        assert!(c.is_cooling(&a, later + ms(COOLING_BASE) - 1));
    }

    #[test]
    fn repeated_cuts_double_the_window_up_to_the_cap() {
        let c = Cooling::default();
        let a = id("spiffe://cluster.local/ns/a/sa/x");
        let mut now = T0;
        let mut windows = vec![c.record_cut(&a, now, false).as_secs()];
        for _ in 0..6 {
            now += 1_000;
            windows.push(c.record_cut(&a, now, true).as_secs());
        }
        assert_eq!(windows, [60, 120, 240, 480, 600, 600, 600]);
        assert!(c.is_cooling(&a, now + ms(COOLING_MAX) - 1));
        assert!(!c.is_cooling(&a, now + ms(COOLING_MAX)));
    }

    #[test]
    fn a_cut_of_a_connection_begun_before_cooling_extends_but_does_not_double() {
        let c = Cooling::default();
        let a = id("a");
        c.record_cut(&a, T0, false);
        // Parallel connections cut right after: the same window, ending later.
        for i in 1..=20 {
            assert_eq!(c.record_cut(&a, T0 + i, false), COOLING_BASE);
        }
        assert!(c.is_cooling(&a, T0 + 20 + ms(COOLING_BASE) - 1));
        assert!(!c.is_cooling(&a, T0 + 20 + ms(COOLING_BASE)));
    }

    #[test]
    fn the_empty_identity_is_a_key_of_its_own() {
        let c = Cooling::default();
        c.record_cut(&id(""), T0, false);
        assert!(c.is_cooling("", T0 + 1));
        assert!(!c.is_cooling("spiffe://cluster.local/ns/a/sa/x", T0 + 1));
        let c = Cooling::default();
        c.record_cut(&id("spiffe://cluster.local/ns/a/sa/x"), T0, false);
        assert!(!c.is_cooling("", T0 + 1));
    }

    #[test]
    fn full_table_drops_expired_entries_first() {
        let c = Cooling::default();
        // Half cut at T0 (expired by `now`), half later (still cooling).
        let half = COOLING_CAPACITY / 2;
        for i in 0..COOLING_CAPACITY {
            let at = if i < half { T0 } else { T0 + ms(COOLING_BASE) };
            c.record_cut(&id(&format!("id-{i}")), at, false);
        }
        assert_eq!(c.len(), COOLING_CAPACITY);
        let now = T0 + ms(COOLING_BASE) + 1;
        c.record_cut(&id("newcomer"), now, false);
        assert_eq!(c.len(), COOLING_CAPACITY - half + 1);
        assert!(c.is_cooling("newcomer", now));
        assert!((half..COOLING_CAPACITY).all(|i| c.is_cooling(&format!("id-{i}"), now)));
    }

    #[test]
    fn full_table_evicts_the_one_whose_cooling_ends_first() {
        let c = Cooling::default();
        for i in 0..COOLING_CAPACITY as u64 {
            c.record_cut(&id(&format!("id-{i}")), T0 + i, false);
        }
        // id-0 cut again while cooling: its cooling now ends last.
        c.record_cut(&id("id-0"), T0 + 5_000, true);
        let now = T0 + 6_000;
        for n in 0..3 {
            c.record_cut(&id(&format!("new-{n}")), now + n, false);
            assert_eq!(c.len(), COOLING_CAPACITY, "bounded");
        }
        assert!(c.is_cooling("id-0", now));
        assert!((1..=3).all(|i| !c.is_cooling(&format!("id-{i}"), now)));
        assert!(c.is_cooling("id-4", now));
        assert!((0..3).all(|n| c.is_cooling(&format!("new-{n}"), now)));
    }

    /// `n` streams accepted, then `resets` premature resets; whether the connection was cut.
    fn cut_after(w: &ResetWatch, streams: u64, resets: u64) -> bool {
        for _ in 0..streams {
            w.accepted();
        }
        for _ in 0..resets {
            w.premature_reset();
        }
        std::pin::pin!(w.calm.notified()).enable()
    }

    #[test]
    fn a_cooling_identity_is_cut_at_the_lower_threshold_on_new_connections() {
        let c = Arc::new(Cooling::default());
        let now = clock::now_ms();
        let (a, b) = (id("a"), id("b"));
        let w = ResetWatch::new(c.clone(), a.clone(), now);
        assert_eq!(w.threshold(), PREMATURE_RESETS_MIN);
        assert!(!cut_after(&w, 99, 99));
        assert!(cut_after(&w, 1, 1), "cut at 100");
        assert_eq!(w.record_cut(now), (COOLING_BASE, false));

        let w = ResetWatch::new(c.clone(), a.clone(), now + 1);
        assert_eq!(w.threshold(), COOLING_RESETS_MIN);
        assert!(!cut_after(&w, 9, 9));
        assert!(cut_after(&w, 1, 1), "cut at 10");
        assert_eq!(w.record_cut(now + 2), (2 * COOLING_BASE, true));

        // Another identity keeps the full threshold.
        let w = ResetWatch::new(c, b, now + 3);
        assert_eq!(w.threshold(), PREMATURE_RESETS_MIN);
        assert!(!cut_after(&w, 99, 99));
    }

    #[test]
    fn a_mostly_healthy_connection_of_a_cooling_identity_is_not_cut() {
        let c = Arc::new(Cooling::default());
        let now = clock::now_ms();
        c.record_cut(&id("a"), now, false);
        let w = ResetWatch::new(c, id("a"), now);
        // 40 premature resets of 100 streams: well over 10, but not more than half.
        assert!(!cut_after(&w, 100, 40));
        assert!(!cut_after(&w, 0, 10), "50 of 100 is not more than half");
        assert!(cut_after(&w, 0, 1));
    }

    #[test]
    fn an_open_connection_tightens_once_its_identity_is_cut_elsewhere() {
        let c = Arc::new(Cooling::default());
        let now = clock::now_ms();
        let a = id("a");
        let open = ResetWatch::new(c.clone(), a.clone(), now);
        let other = ResetWatch::new(c.clone(), id("b"), now);
        assert!(!cut_after(&open, 20, 15), "not cooling yet: 100 applies");
        // Another connection of the same identity is cut.
        c.record_cut(&a, now, false);
        assert!(cut_after(&open, 1, 1), "looked up again on the next reset");
        assert_eq!(open.threshold(), COOLING_RESETS_MIN);
        assert!(!cut_after(&other, 20, 15), "another identity keeps 100");
        assert_eq!(other.threshold(), PREMATURE_RESETS_MIN);
    }
}
