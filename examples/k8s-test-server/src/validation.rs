//! Field validation the real API server does for endpoint addresses: EndpointSlice
//! `endpoints[i].addresses[j]` and Endpoints `subsets[i].(notReadyA|a)ddresses[j].ip` may not
//! be unspecified, loopback, link-local or link-local multicast (kubernetes
//! `pkg/apis/core/validation.ValidateNonSpecialIP`, used by both types' validation).
//!
//! Tests whose backends listen on 127.0.0.x opt in to loopback addresses with
//! [`StoreConfig::allow_loopback_endpoint_addresses`](crate::StoreConfig); a real cluster never
//! accepts them.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::error::ApiError;

/// One field error, as `field.Invalid` renders it.
struct FieldError {
    field: String,
    value: String,
    detail: String,
}

impl FieldError {
    /// `Invalid value: "127.0.0.1": may not be …` (the Status cause message).
    fn body(&self) -> String {
        format!("Invalid value: {:?}: {}", self.value, self.detail)
    }
}

/// The real server's `ValidateNonSpecialIP` messages for one address.
fn non_special_ip(address: &str, field: &str, allow_loopback: bool, out: &mut Vec<FieldError>) {
    let mut push = |detail: String| {
        out.push(FieldError {
            field: field.to_string(),
            value: address.to_string(),
            detail,
        })
    };
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

fn strings(v: &Value) -> impl Iterator<Item = (usize, &str)> {
    v.as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.as_str()?)))
}

fn items(v: &Value) -> impl Iterator<Item = (usize, &Value)> {
    v.as_array().into_iter().flatten().enumerate()
}

/// Checks an EndpointSlice's addresses (IP address types only; FQDN slices are not IPs):
/// the slice's family, then the special ranges, as `validateEndpoints` does.
pub(crate) fn endpoint_slice(obj: &Value, allow_loopback: bool) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let family = obj["addressType"].as_str();
    if matches!(family, Some("IPv4" | "IPv6")) {
        for (i, ep) in items(&obj["endpoints"]) {
            for (j, a) in strings(&ep["addresses"]) {
                let field = format!("endpoints[{i}].addresses[{j}]");
                let ok = match family {
                    Some("IPv4") => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    _ => a.parse::<std::net::Ipv6Addr>().is_ok(),
                };
                if !ok {
                    let family = family.unwrap_or_default();
                    errs.push(FieldError {
                        field: field.clone(),
                        value: a.to_string(),
                        detail: format!("must be a valid {family} address"),
                    });
                }
                non_special_ip(a, &field, allow_loopback, &mut errs);
            }
        }
    }
    invalid("discovery.k8s.io", "EndpointSlice", obj, errs)
}

/// Checks an Endpoints object's ready and not-ready addresses.
pub(crate) fn endpoints(obj: &Value, allow_loopback: bool) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    for (i, subset) in items(&obj["subsets"]) {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, a) in items(&subset[list]) {
                let ip = a["ip"].as_str().unwrap_or("");
                let field = format!("subsets[{i}].{list}[{j}].ip");
                non_special_ip(ip, &field, allow_loopback, &mut errs);
            }
        }
    }
    invalid("", "Endpoints", obj, errs)
}

/// A 422 Invalid Status like `errors.NewInvalid`: one cause per field error, and the
/// aggregate message (`[a, b]` when there are several).
fn invalid(group: &str, kind: &str, obj: &Value, errs: Vec<FieldError>) -> Result<(), ApiError> {
    if errs.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let rendered: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: {}", e.field, e.body()))
        .collect();
    let aggregate = match rendered.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": "FieldValueInvalid", "message": e.body(), "field": e.field}))
        .collect();
    let mut details = json!({"name": name, "kind": kind, "causes": causes});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    Err(ApiError {
        details: Some(details),
        ..ApiError::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {aggregate}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(addrs: &[&str]) -> Value {
        json!({"metadata": {"name": "s"}, "addressType": "IPv4",
               "endpoints": [{"addresses": addrs}]})
    }

    #[test]
    fn special_addresses_are_refused_with_the_real_messages() {
        let e = endpoint_slice(&slice(&["127.0.0.1"]), false).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "EndpointSlice.discovery.k8s.io \"s\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        let d = e.details.unwrap();
        assert_eq!(d["causes"][0]["field"], "endpoints[0].addresses[0]");
        assert_eq!(d["group"], "discovery.k8s.io");
        for (a, msg) in [
            ("0.0.0.0", "may not be unspecified (0.0.0.0)"),
            ("169.254.1.2", "link-local range"),
            ("224.0.0.5", "link-local multicast range"),
            ("::1", "loopback range"),
            ("fe80::1", "link-local range"),
            ("::ffff:127.0.0.2", "loopback range"),
        ] {
            let e = endpoint_slice(&slice(&[a]), false).unwrap_err();
            assert!(e.message.contains(msg), "{a}: {}", e.message);
        }
        assert!(endpoint_slice(&slice(&["10.1.2.3", "192.168.0.1"]), false).is_ok());
        let e = endpoint_slice(&slice(&["fd00::1"]), false).unwrap_err();
        assert!(
            e.message.contains("must be a valid IPv4 address"),
            "{}",
            e.message
        );
    }

    #[test]
    fn loopback_is_accepted_only_when_the_test_opts_in() {
        assert!(endpoint_slice(&slice(&["127.0.0.7"]), true).is_ok());
        // The opt-in is for loopback only.
        assert!(endpoint_slice(&slice(&["169.254.0.1"]), true).is_err());
        let ep = json!({"metadata": {"name": "e"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "127.0.0.1"}]}]});
        let e = endpoints(&ep, false).unwrap_err();
        assert_eq!(
            e.message,
            "Endpoints \"e\" is invalid: subsets[0].notReadyAddresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        assert!(endpoints(&ep, true).is_ok());
    }

    #[test]
    fn several_errors_are_aggregated() {
        let e = endpoint_slice(&slice(&["127.0.0.1", "0.0.0.0"]), false).unwrap_err();
        assert!(
            e.message.contains(": [endpoints[0].addresses[0]: "),
            "{}",
            e.message
        );
        assert_eq!(e.details.unwrap()["causes"].as_array().unwrap().len(), 2);
    }
}
