//! Service validation (kubernetes `pkg/apis/core/validation`): each port as
//! `validateServicePort` checks it (names required when there are several and unique DNS-1123
//! labels, port numbers in 1..65535, a known protocol, and a targetPort that is a port number
//! or an IANA_SVC_NAME), and `spec.trafficDistribution` one of the supported values.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::field_errors::FieldError;
use crate::name_rules;

const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
/// `supportedTrafficDistribution` with the `PreferSameTrafficDistribution` gate on (beta and
/// on by default since 1.34), sorted as the real server lists them.
const TRAFFIC_DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameNode", "PreferSameZone"];

/// A missing or non-integer number reads as Go's zero value.
fn int(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

/// The errors of `spec.ports` (defaults applied: protocol and targetPort) and
/// `spec.trafficDistribution`.
pub(crate) fn service(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    ports(obj, &mut errs);
    if let Some(td) = obj
        .pointer("/spec/trafficDistribution")
        .and_then(Value::as_str)
        && !TRAFFIC_DISTRIBUTIONS.contains(&td)
    {
        errs.push(FieldError::not_supported(
            "spec.trafficDistribution",
            td,
            &TRAFFIC_DISTRIBUTIONS,
        ));
    }
    errs
}

fn ports(obj: &Value, errs: &mut Vec<FieldError>) {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let require_name = ports.len() > 1;
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if require_name && name.is_empty() {
            errs.push(FieldError::required(&at("name"), ""));
        } else if !name.is_empty() {
            for m in name_rules::dns1123_label(name) {
                errs.push(FieldError::invalid(&at("name"), name, &m));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(&at("name"), name));
            }
        }
        let port = int(p.get("port"));
        for m in name_rules::port_num(port) {
            errs.push(FieldError::invalid(&at("port"), port, &m));
        }
        match p.get("protocol").and_then(Value::as_str).unwrap_or("") {
            "" => errs.push(FieldError::required(&at("protocol"), "")),
            proto if !PROTOCOLS.contains(&proto) => errs.push(FieldError::not_supported(
                &at("protocol"),
                proto,
                &PROTOCOLS,
            )),
            _ => {}
        }
        match p.get("targetPort") {
            Some(Value::String(s)) => {
                for m in name_rules::port_name(s) {
                    errs.push(FieldError::invalid(&at("targetPort"), s.as_str(), &m));
                }
            }
            other => {
                let n = int(other);
                for m in name_rules::port_num(n) {
                    errs.push(FieldError::invalid(&at("targetPort"), n, &m));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(obj: Value) -> Vec<String> {
        service(&obj)
            .iter()
            .map(|e| format!("{}: {}", e.field, e.body()))
            .collect()
    }

    #[test]
    fn one_unnamed_port_is_fine() {
        let ok =
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]}});
        assert!(lines(ok).is_empty());
    }

    #[test]
    fn traffic_distribution_takes_the_supported_values_only() {
        let with = |td: Value| {
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                            "trafficDistribution": td}})
        };
        for ok in ["PreferClose", "PreferSameZone", "PreferSameNode"] {
            assert!(lines(with(json!(ok))).is_empty(), "{ok}");
        }
        assert!(lines(with(Value::Null)).is_empty());
        assert_eq!(
            lines(with(json!("preferclose"))),
            [
                "spec.trafficDistribution: Unsupported value: \"preferclose\": supported values: \"PreferClose\", \"PreferSameNode\", \"PreferSameZone\""
            ]
        );
    }

    #[test]
    fn ports_are_checked_like_validate_service_port() {
        let svc = json!({"spec": {"ports": [
            {"port": 0, "protocol": "TCP", "targetPort": 70000},
            {"name": "web", "port": 443, "protocol": "HTTP", "targetPort": "8443"},
            {"name": "web", "port": 8080, "protocol": "UDP", "targetPort": 8080},
            {"name": "Web_1", "port": 65536, "protocol": "SCTP", "targetPort": "-x"},
        ]}});
        assert_eq!(
            lines(svc),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[1].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ports[1].targetPort: Invalid value: \"8443\": must contain at least one letter (a-z)",
                "spec.ports[2].name: Duplicate value: \"web\"",
                "spec.ports[3].name: Invalid value: \"Web_1\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "spec.ports[3].port: Invalid value: 65536: must be between 1 and 65535, inclusive",
                "spec.ports[3].targetPort: Invalid value: \"-x\": must not begin or end with a hyphen",
            ]
        );
    }
}
