//! The API server's cache of successful token authentications.
//!
//! kube-apiserver wraps its token authenticators in a cache
//! (kubernetes `pkg/kubeapiserver/authenticator/config.go`: `tokencache.New(tokenAuth, true,
//! TokenSuccessCacheTTL, TokenFailureCacheTTL)`) whose TTLs default to 10 s for a success and
//! 0 for a failure (`pkg/kubeapiserver/options/authentication.go`,
//! `NewBuiltInAuthenticationOptions`). So a token that authenticated less than 10 s ago keeps
//! authenticating after it is revoked (its ServiceAccount, token Secret or bound object
//! deleted) until its entry expires, while a refused token is looked up afresh every time.
//! The key is a keyed hash of the token and the audiences asked for, length-prefixed, never
//! the token itself (`staging/src/k8s.io/apiserver/pkg/authentication/token/cache/
//! cached_token_authenticator.go`, `keyFunc`: HMAC-SHA256 with a random key; here SipHash
//! with two random keys).
//!
//! Time is the server clock ([`crate::clock::Clock`]), so a test can advance it past the TTL
//! instead of sleeping; an entry is fresh only for `[stored, stored + TTL)`, so setting the
//! clock back does not stretch it either.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// kube-apiserver's `TokenSuccessCacheTTL` default.
pub(crate) const SUCCESS_TTL: Duration = Duration::from_secs(10);

/// Above this many entries, expired ones are dropped (and all, if none had expired): the real
/// cache is a bounded LRU too.
const MAX_ENTRIES: usize = 4096;

/// Successful authentications by (token, audiences), valid for [`SUCCESS_TTL`].
pub(crate) struct TokenCache<V> {
    inner: Arc<Mutex<Inner<V>>>,
}

struct Inner<V> {
    keys: [RandomState; 2],
    entries: HashMap<u128, (SystemTime, V)>,
}

impl<V> Clone for TokenCache<V> {
    fn clone(&self) -> Self {
        TokenCache {
            inner: self.inner.clone(),
        }
    }
}

impl<V> Default for TokenCache<V> {
    fn default() -> Self {
        TokenCache {
            inner: Arc::new(Mutex::new(Inner {
                keys: [RandomState::new(), RandomState::new()],
                entries: HashMap::new(),
            })),
        }
    }
}

fn fresh(stored: SystemTime, now: SystemTime) -> bool {
    now >= stored
        && now
            .duration_since(stored)
            .is_ok_and(|age| age < SUCCESS_TTL)
}

impl<V: Clone> TokenCache<V> {
    /// The cached answer for `token` asked with `audiences`, if it is still fresh at `now`.
    pub fn get(&self, token: &str, audiences: &[String], now: SystemTime) -> Option<V> {
        let inner = self.lock();
        let key = inner.key(token, audiences);
        match inner.entries.get(&key) {
            Some((stored, v)) if fresh(*stored, now) => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers a successful authentication made at `now`.
    pub fn insert(&self, token: &str, audiences: &[String], now: SystemTime, v: V) {
        let mut inner = self.lock();
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.retain(|_, (stored, _)| fresh(*stored, now));
            if inner.entries.len() >= MAX_ENTRIES {
                inner.entries.clear();
            }
        }
        let key = inner.key(token, audiences);
        inner.entries.insert(key, (now, v));
    }

    /// Forgets every entry: a restarted API server starts with an empty cache.
    pub fn clear(&self) {
        self.lock().entries.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner.lock().expect("token cache lock poisoned")
    }
}

impl<V> Inner<V> {
    fn key(&self, token: &str, audiences: &[String]) -> u128 {
        let half = |k: &RandomState| {
            let mut h = k.build_hasher();
            let mut field = |s: &str| {
                h.write_u64(s.len() as u64);
                h.write(s.as_bytes());
            };
            field(token);
            h.write_u64(audiences.len() as u64);
            for a in audiences {
                h.write_u64(a.len() as u64);
                h.write(a.as_bytes());
            }
            h.finish()
        };
        (u128::from(half(&self.keys[0])) << 64) | u128::from(half(&self.keys[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auds(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_success_is_remembered_for_ten_seconds_per_token_and_audiences() {
        let c: TokenCache<u32> = TokenCache::default();
        let t0 = SystemTime::now();
        let api = auds(&["api"]);
        c.insert("tok", &api, t0, 7);
        assert_eq!(c.get("tok", &api, t0), Some(7));
        assert_eq!(
            c.get("tok", &api, t0 + Duration::from_millis(9_999)),
            Some(7)
        );
        assert_eq!(c.get("tok", &api, t0 + SUCCESS_TTL), None);
        assert_eq!(c.get("other", &api, t0), None);
        assert_eq!(c.get("tok", &auds(&["vault"]), t0), None);
        assert_eq!(c.get("tok", &[], t0), None);
        // A clock set back does not make an entry live longer.
        assert_eq!(c.get("tok", &api, t0 - Duration::from_secs(1)), None);
    }

    #[test]
    fn length_prefixes_keep_token_and_audiences_apart() {
        let c: TokenCache<u32> = TokenCache::default();
        let t0 = SystemTime::now();
        c.insert("ab", &auds(&["c"]), t0, 1);
        assert_eq!(c.get("a", &auds(&["bc"]), t0), None);
        assert_eq!(c.get("abc", &[], t0), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let c: TokenCache<usize> = TokenCache::default();
        let t0 = SystemTime::now();
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(&format!("t{i}"), &[], t0, i);
        }
        assert!(c.lock().entries.len() <= MAX_ENTRIES);
        let later = t0 + SUCCESS_TTL;
        c.insert("fresh", &[], later, 1);
        assert_eq!(c.get("fresh", &[], later), Some(1));
    }
}
