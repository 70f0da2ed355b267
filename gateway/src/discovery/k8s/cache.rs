//! A reflector store of projections: each watch's projected objects, with list/re-list
//! semantics (a re-list replaces the contents atomically at its end).
//!
//! This is kube-runtime's `Writer::apply_watcher_event` (buffer on `Init`, swap on
//! `InitDone`), but kube-runtime's `Store<K>` keeps whole objects (`Arc<K>`), and at 50,000
//! endpoints and Pods those are most of the memory; here only projections are kept, and an
//! update says whether the visible contents changed, so an unchanged re-list rebuilds nothing.

use std::collections::HashMap;

use super::project::ObjKey;

/// One watch's update, already projected.
#[derive(Debug, Clone)]
pub enum Update<T> {
    /// A (re-)list starts: buffer until [`Update::InitDone`].
    Init,
    /// Listed, added or modified; `None` when the object projects to nothing.
    Apply {
        key: ObjKey,
        obj: Option<T>,
        initial: bool,
    },
    Delete(ObjKey),
    /// The list is complete: it replaces the cache atomically.
    InitDone,
}

/// The projected objects of one watch (one type in one namespace, or in all).
#[derive(Debug)]
pub struct Cache<T> {
    pub items: HashMap<ObjKey, T>,
    buffer: Option<HashMap<ObjKey, T>>,
    pub synced: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            items: HashMap::new(),
            buffer: None,
            synced: false,
        }
    }
}

impl<T: PartialEq> Cache<T> {
    /// Applies one update; returns whether the visible contents may have changed.
    pub fn apply(&mut self, update: Update<T>) -> bool {
        match update {
            Update::Init => {
                self.buffer = Some(HashMap::new());
                false
            }
            Update::Apply {
                key,
                obj,
                initial: true,
            } if self.buffer.is_some() => {
                let buf = self.buffer.as_mut().expect("checked");
                match obj {
                    Some(o) => buf.insert(key, o),
                    None => buf.remove(&key),
                };
                false
            }
            Update::Apply { key, obj, .. } => match obj {
                Some(o) => {
                    let same = self.items.get(&key) == Some(&o);
                    if !same {
                        self.items.insert(key, o);
                    }
                    !same
                }
                None => self.items.remove(&key).is_some(),
            },
            Update::Delete(key) => self.items.remove(&key).is_some(),
            Update::InitDone => {
                let fresh = self.buffer.take().unwrap_or_default();
                let changed = !self.synced || fresh != self.items;
                self.items = fresh;
                self.items.shrink_to_fit();
                self.synced = true;
                changed
            }
        }
    }
}

/// Caches of one type across its watches (one per namespace, or one for all).
#[derive(Debug)]
pub struct Watched<T> {
    pub streams: Vec<Cache<T>>,
}

impl<T> Watched<T> {
    pub fn new(streams: usize) -> Self {
        Watched {
            streams: (0..streams.max(1)).map(|_| Cache::default()).collect(),
        }
    }

    pub fn synced(&self) -> bool {
        self.streams.iter().all(|s| s.synced)
    }

    /// Adds watch number `stream` (the next one), synced while it is empty: what it lists
    /// adds to the contents without holding back a table. False if `stream` is not next.
    pub fn add_synced(&mut self, stream: usize) -> bool {
        if stream != self.streams.len() {
            return false;
        }
        self.streams.push(Cache {
            synced: true,
            ..Cache::default()
        });
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjKey, &T)> {
        self.streams.iter().flat_map(|s| s.items.iter())
    }

    pub fn get(&self, key: &ObjKey) -> Option<&T> {
        self.streams.iter().find_map(|s| s.items.get(key))
    }

    pub fn len(&self) -> usize {
        self.streams.iter().map(|s| s.items.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, n: &str) -> ObjKey {
        (ns.into(), n.into())
    }

    fn applied<T: PartialEq>(c: &mut Cache<T>, key: ObjKey, obj: Option<T>) -> bool {
        c.apply(Update::Apply {
            key,
            obj,
            initial: false,
        })
    }

    #[test]
    fn an_added_stream_holds_nothing_back_and_lists_into_the_contents() {
        let mut w: Watched<u32> = Watched::new(1);
        w.streams[0].apply(Update::Init);
        w.streams[0].apply(Update::InitDone);
        assert!(!w.add_synced(2), "only the next stream");
        assert!(w.add_synced(1));
        assert!(w.synced() && w.len() == 0);
        w.streams[1].apply(Update::Init);
        w.streams[1].apply(Update::Apply {
            key: k("root", "r"),
            obj: Some(7),
            initial: true,
        });
        assert!(w.streams[1].apply(Update::InitDone), "its list is a change");
        assert_eq!(w.get(&k("root", "r")), Some(&7));
    }

    #[test]
    fn relist_replaces_atomically_and_detects_no_change() {
        let mut c: Cache<u32> = Cache::default();
        c.apply(Update::Init);
        c.apply(Update::Apply {
            key: k("a", "1"),
            obj: Some(1),
            initial: true,
        });
        assert!(c.items.is_empty(), "listed objects wait for InitDone");
        assert!(c.apply(Update::InitDone));
        assert!(c.synced);
        assert!(
            !applied(&mut c, k("a", "1"), Some(1)),
            "same object is no change"
        );
        assert!(applied(&mut c, k("a", "2"), Some(2)));
        // A re-list that misses "2" deletes it; the old contents serve until InitDone.
        c.apply(Update::Init);
        c.apply(Update::Apply {
            key: k("a", "1"),
            obj: Some(1),
            initial: true,
        });
        assert_eq!(c.items.len(), 2);
        assert!(c.apply(Update::InitDone));
        assert_eq!(c.items.len(), 1);
        // Projecting to nothing removes.
        assert!(applied(&mut c, k("a", "1"), None));
        assert!(!c.apply(Update::Delete(k("a", "1"))));
    }
}
