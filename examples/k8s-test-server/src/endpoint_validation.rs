//! EndpointSlice validation (kubernetes `pkg/apis/discovery/validation`): `addressType`
//! required, known and immutable; at most 1000 endpoints of 1..=100 addresses each; port
//! names unique DNS-1123 labels. Addresses of IP slices, and Endpoints `subsets[i].
//! (notReadyA|a)ddresses[j].ip`, may not be unspecified, loopback, link-local or link-local
//! multicast (`ValidateNonSpecialIP`).
//!
//! Tests whose backends listen on 127.0.0.x opt in to loopback addresses with
//! [`StoreConfig::allow_loopback_endpoint_addresses`](crate::StoreConfig); a real cluster never
//! accepts them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::field_errors::FieldError;
use crate::name_rules;

const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const ADDRESS_TYPES: [&str; 3] = ["FQDN", "IPv4", "IPv6"];
/// Updates also accept the deprecated `IP` type that old slices may still have.
const ADDRESS_TYPES_ON_UPDATE: [&str; 4] = ["FQDN", "IP", "IPv4", "IPv6"];

/// The real server's `ValidateNonSpecialIP` messages for one address.
fn non_special_ip(address: &str, field: &str, allow_loopback: bool, out: &mut Vec<FieldError>) {
    let mut push = |detail: String| out.push(FieldError::invalid(field, address, &detail));
    let ip: IpAddr = match address.parse() {
        Ok(ip) => ip,
        Err(_) => return push("must be a valid IP address".into()),
    };
    // Go treats an IPv4-mapped IPv6 address as the IPv4 address.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        push(format!("may not be unspecified ({address})"));
    }
    if ip.is_loopback() && !allow_loopback {
        push("may not be in the loopback range (127.0.0.0/8, ::1/128)".into());
    }
    let (link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (v4.is_link_local(), o[0] == 224 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0 == 0xfe80, s[0] & 0xff0f == 0xff02)
        }
    };
    if link_local {
        push("may not be in the link-local range (169.254.0.0/16, fe80::/10)".into());
    }
    if link_local_multicast {
        push("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".into());
    }
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn endpoints_of_slice(obj: &Value, family: &str, allow_loopback: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let endpoints = items(obj.get("endpoints"));
    if endpoints.len() > MAX_ENDPOINTS {
        // The real validation stops here too.
        errs.push(FieldError::too_many(
            "endpoints",
            endpoints.len(),
            MAX_ENDPOINTS,
        ));
        return errs;
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let addresses = items(ep.get("addresses"));
        if addresses.is_empty() {
            errs.push(FieldError::required(
                &field,
                "must contain at least 1 address",
            ));
        } else if addresses.len() > MAX_ADDRESSES {
            errs.push(FieldError::too_many(&field, addresses.len(), MAX_ADDRESSES));
        }
        if !matches!(family, "IPv4" | "IPv6") {
            continue;
        }
        for (j, a) in addresses.iter().enumerate() {
            let a = a.as_str().unwrap_or("");
            let field = format!("{field}[{j}]");
            let ok = match family {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                _ => a.parse::<std::net::Ipv6Addr>().is_ok(),
            };
            if !ok {
                let detail = format!("must be a valid {family} address");
                errs.push(FieldError::invalid(&field, a, &detail));
            }
            non_special_ip(a, &field, allow_loopback, &mut errs);
        }
    }
    errs
}

/// An EndpointSlice's errors; `old` is the stored slice on an update.
pub(crate) fn endpoint_slice(
    obj: &Value,
    old: Option<&Value>,
    allow_loopback: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let family = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    let known: &[&str] = match old {
        Some(_) => &ADDRESS_TYPES_ON_UPDATE,
        None => &ADDRESS_TYPES,
    };
    if family.is_empty() {
        errs.push(FieldError::required("addressType", ""));
    } else if !known.contains(&family) {
        errs.push(FieldError::not_supported("addressType", family, known));
    }
    errs.extend(endpoints_of_slice(obj, family, allow_loopback));
    let mut names = BTreeSet::new();
    for (i, p) in items(obj.get("ports")).iter().enumerate() {
        let field = format!("ports[{i}].name");
        // An absent name defaults to "", so two unnamed ports are duplicates.
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if !name.is_empty() {
            for m in name_rules::dns1123_label(name) {
                errs.push(FieldError::invalid(&field, name, &m));
            }
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(&field, name));
        }
    }
    if let Some(old) = old {
        let was = old.get("addressType").and_then(Value::as_str).unwrap_or("");
        if family != was {
            errs.push(FieldError::invalid(
                "addressType",
                family,
                "field is immutable",
            ));
        }
    }
    errs
}

/// An Endpoints object's errors (its ready and not-ready addresses).
pub(crate) fn endpoints(obj: &Value, allow_loopback: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (i, subset) in items(obj.get("subsets")).iter().enumerate() {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in items(subset.get(list)).iter().enumerate() {
                let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
                let field = format!("subsets[{i}].{list}[{j}].ip");
                non_special_ip(ip, &field, allow_loopback, &mut errs);
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(addrs: &[&str]) -> Value {
        json!({"metadata": {"name": "s"}, "addressType": "IPv4",
               "endpoints": [{"addresses": addrs}]})
    }

    fn lines(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.body()))
            .collect()
    }

    #[test]
    fn special_addresses_are_refused_with_the_real_messages() {
        assert_eq!(
            lines(&endpoint_slice(&slice(&["127.0.0.1"]), None, false)),
            [
                "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
            ]
        );
        for (a, msg) in [
            ("0.0.0.0", "may not be unspecified (0.0.0.0)"),
            ("169.254.1.2", "link-local range"),
            ("224.0.0.5", "link-local multicast range"),
            ("::1", "loopback range"),
            ("fe80::1", "link-local range"),
            ("::ffff:127.0.0.2", "loopback range"),
        ] {
            let l = lines(&endpoint_slice(&slice(&[a]), None, false)).join("\n");
            assert!(l.contains(msg), "{a}: {l}");
        }
        assert!(endpoint_slice(&slice(&["10.1.2.3", "192.168.0.1"]), None, false).is_empty());
        let l = lines(&endpoint_slice(&slice(&["fd00::1"]), None, false));
        assert!(l[0].contains("must be a valid IPv4 address"), "{l:?}");
    }

    #[test]
    fn loopback_is_accepted_only_when_the_test_opts_in() {
        assert!(endpoint_slice(&slice(&["127.0.0.7"]), None, true).is_empty());
        // The opt-in is for loopback only.
        assert!(!endpoint_slice(&slice(&["169.254.0.1"]), None, true).is_empty());
        let ep = json!({"metadata": {"name": "e"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "127.0.0.1"}]}]});
        assert_eq!(
            lines(&endpoints(&ep, false)),
            [
                "subsets[0].notReadyAddresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
            ]
        );
        assert!(endpoints(&ep, true).is_empty());
    }

    #[test]
    fn address_type_counts_and_port_names() {
        let none = json!({"endpoints": [], "ports": [{"name": "http"}, {"name": "Bad.Name"}, {"name": "http"}, {}, {}]});
        assert_eq!(
            lines(&endpoint_slice(&none, None, false)),
            [
                "addressType: Required value",
                "ports[1].name: Invalid value: \"Bad.Name\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "ports[2].name: Duplicate value: \"http\"",
                "ports[4].name: Duplicate value: \"\"",
            ]
        );
        let odd = json!({"addressType": "IP", "endpoints": [{"addresses": []}]});
        assert_eq!(
            lines(&endpoint_slice(&odd, None, false)),
            [
                "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                "endpoints[0].addresses: Required value: must contain at least 1 address",
            ]
        );
        let many: Vec<String> = (0..101)
            .map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1))
            .collect();
        let big = json!({"addressType": "IPv4", "endpoints": [{"addresses": many}]});
        assert_eq!(
            lines(&endpoint_slice(&big, None, false)),
            ["endpoints[0].addresses: Too many: 101: must have at most 100 items"]
        );
        let eps: Vec<Value> = (0..1001)
            .map(|_| json!({"addresses": ["a.example"]}))
            .collect();
        let big = json!({"addressType": "FQDN", "endpoints": eps});
        assert_eq!(
            lines(&endpoint_slice(&big, None, false)),
            ["endpoints: Too many: 1001: must have at most 1000 items"]
        );
    }

    #[test]
    fn address_type_is_immutable() {
        let old = slice(&["10.0.0.1"]);
        assert!(endpoint_slice(&old, Some(&old), false).is_empty());
        let new = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}]});
        assert_eq!(
            lines(&endpoint_slice(&new, Some(&old), false)),
            ["addressType: Invalid value: \"FQDN\": field is immutable"]
        );
    }
}
