//! Bounds on the work one endpoints file can cause, whatever it holds.
//!
//! YAML aliases repeat a node by reference: a 1 MB file reusing one anchored list of 10,000
//! endpoints in 10,000 services (`endpoints: *EL`) is 10^8 endpoints, which serde_yaml
//! expands (it allows 100 alias jumps per event) until the process runs out of memory. So a
//! file with an alias is first walked with every alias expanded, counting as it goes, and
//! refused once the walk grows past [`MAX_EXPANSION`] times the file's own size: a file can
//! name a node twice, not blow up. And however it is written, a file lists at most
//! [`MAX_ENDPOINTS`] endpoints, counted while it is read, so a huge file stops early.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The most endpoints one file may list, over all its services: 500,000, over three times
/// the pods of the largest cluster Kubernetes supports (150,000). The size limit
/// ([`super::MAX_FILE_BYTES`]) bounds the memory of reading a file; this one bounds what
/// aliases within it can still make of it, and names the problem when a file is merely huge
/// (480,000 endpoints written `- {address: 10.1.2.3}` took 13 MB, 0.5 s and 420 MB).
pub const MAX_ENDPOINTS: usize = 500_000;

/// With aliases expanded, a file may grow to this many times its own size (plus
/// [`EXPANSION_SLACK`]). Without any, a walk costs at most its length: one per node and the
/// bytes of each string, and every node takes at least a byte and a separator of the text
/// (rare spellings, `{a,b}` or `"\L"`, cost up to 1.5 times theirs).
pub const MAX_EXPANSION: u64 = 2;
const EXPANSION_SLACK: u64 = 4096;

/// The message [`EndpointList`] and [`ServiceList`] fail with (the error text is checked for it).
pub const TOO_MANY_ENDPOINTS: &str = "more endpoints than an endpoints file may list";

/// Why [`check_expansion`] refused a file.
pub enum Refused {
    /// Its aliases expand it past the bound.
    Expands,
    /// It is not YAML at all (the error of the walk).
    Yaml(serde_yaml::Error),
}

/// Walks `text` with every alias expanded, refusing it once the walk costs more than
/// [`MAX_EXPANSION`] times its length. A text without `*` has no alias (every alias starts
/// with one) and is not walked.
pub fn check_expansion(text: &str) -> Result<(), Refused> {
    if !text.contains('*') {
        return Ok(());
    }
    let budget = (text.len() as u64)
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(EXPANSION_SLACK);
    let left = Cell::new(budget);
    let over = Cell::new(false);
    let walk = Walk {
        left: &left,
        over: &over,
    };
    match walk.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(()) => Ok(()),
        Err(_) if over.get() => Err(Refused::Expands),
        Err(e) => Err(Refused::Yaml(e)),
    }
}

/// Visits every node, charging one unit per node plus the bytes of each string.
#[derive(Clone, Copy)]
struct Walk<'a> {
    left: &'a Cell<u64>,
    over: &'a Cell<bool>,
}

impl Walk<'_> {
    fn charge<E: de::Error>(self, units: usize) -> Result<(), E> {
        let units = units as u64 + 1;
        match self.left.get().checked_sub(units) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.over.set(true);
                Err(E::custom("the document expands past its bound"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.charge(s.len())
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<(), E> {
        self.charge(b.len())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.charge(0)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.charge(0)?;
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.charge(0)?;
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    /// A tagged node (`!tag value`): the tag, then the value.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.charge(0)?;
        let ((), value) = data.variant_seed(self)?;
        value.newtype_variant_seed(self)
    }
}

/// One service's `endpoints:`, refused past [`MAX_ENDPOINTS`] while it is read.
#[derive(Debug)]
pub struct EndpointList<T>(pub Vec<T>);

impl<T> Default for EndpointList<T> {
    fn default() -> Self {
        EndpointList(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for EndpointList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = EndpointList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of endpoints")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element()? {
                    if out.len() == MAX_ENDPOINTS {
                        return Err(de::Error::custom(TOO_MANY_ENDPOINTS));
                    }
                    out.push(e);
                }
                Ok(EndpointList(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A service that counts towards [`MAX_ENDPOINTS`].
pub trait HasEndpoints {
    fn endpoint_count(&self) -> usize;
}

/// `services:`, refused once its services list more than [`MAX_ENDPOINTS`] endpoints in
/// total (each service's own list stops there too, so at most twice that is read).
#[derive(Debug)]
pub struct ServiceList<T>(pub Vec<T>);

impl<T> Default for ServiceList<T> {
    fn default() -> Self {
        ServiceList(Vec::new())
    }
}

impl<'de, T: Deserialize<'de> + HasEndpoints> Deserialize<'de> for ServiceList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + HasEndpoints> Visitor<'de> for V<T> {
            type Value = ServiceList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of services")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let (mut out, mut total) = (Vec::new(), 0usize);
                while let Some(s) = seq.next_element::<T>()? {
                    total += s.endpoint_count();
                    if total > MAX_ENDPOINTS {
                        return Err(de::Error::custom(TOO_MANY_ENDPOINTS));
                    }
                    out.push(s);
                }
                Ok(ServiceList(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The auditor's file, scaled down: one anchored list reused by every other service.
    fn alias_bomb(list: usize, services: usize) -> String {
        let mut y = String::from(
            "services:\n  - host: s0.ns.svc.cluster.local\n    ports: &P [{port: 80}]\n    endpoints: &EL\n",
        );
        for i in 0..list {
            y.push_str(&format!(
                "      - {{address: 10.0.{}.{}}}\n",
                i >> 8,
                i & 255
            ));
        }
        for j in 1..services {
            y.push_str(&format!(
                "  - {{host: s{j}.ns.svc.cluster.local, ports: *P, endpoints: *EL}}\n"
            ));
        }
        y
    }

    #[test]
    fn an_alias_bomb_is_refused_quickly() {
        let text = alias_bomb(2_000, 2_000);
        let t0 = std::time::Instant::now();
        assert!(matches!(check_expansion(&text), Err(Refused::Expands)));
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    }

    /// Naming a small node again is fine; so is a `*` that is no alias.
    #[test]
    fn modest_aliases_and_stars_pass() {
        let mut y = String::from("services:\n");
        y.push_str("  - host: a.ns.svc.cluster.local\n    ports: &P [{port: 80}]\n");
        for j in 0..50 {
            y.push_str(&format!(
                "  - host: s{j}.ns.svc.cluster.local\n    ports: *P\n"
            ));
        }
        assert!(check_expansion(&y).is_ok());
        assert!(check_expansion("# *bold* comment\nservices: []\n").is_ok());
        assert!(check_expansion("services: [{host: 'a*b'}]").is_ok());
        // Not even YAML: the walk's own error.
        assert!(matches!(check_expansion("*"), Err(Refused::Yaml(_))));
    }

    #[test]
    fn endpoint_lists_stop_at_the_cap() {
        #[derive(Debug, Deserialize)]
        struct S {
            endpoints: EndpointList<u8>,
        }
        impl HasEndpoints for S {
            fn endpoint_count(&self) -> usize {
                self.endpoints.0.len()
            }
        }
        let list = |n: usize| format!("[{}]", vec!["1"; n].join(","));
        let one: EndpointList<u8> = serde_yaml::from_str(&list(MAX_ENDPOINTS)).unwrap();
        assert_eq!(one.0.len(), MAX_ENDPOINTS);
        let err = serde_yaml::from_str::<EndpointList<u8>>(&list(MAX_ENDPOINTS + 1)).unwrap_err();
        assert!(err.to_string().contains(TOO_MANY_ENDPOINTS), "{err}");
        let half = MAX_ENDPOINTS / 2 + 1;
        let two = format!(
            "[{{endpoints: {}}}, {{endpoints: {}}}]",
            list(half),
            list(half)
        );
        let err = serde_yaml::from_str::<ServiceList<S>>(&two).unwrap_err();
        assert!(err.to_string().contains(TOO_MANY_ENDPOINTS), "{err}");
    }
}
