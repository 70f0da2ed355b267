//! The validation step of a write, after defaulting: the metadata rules every kind has
//! (`meta_validation.rs`) and the per-kind rules (`secret_validation.rs`,
//! `service_validation.rs`, `endpoint_validation.rs`, `workload_validation.rs`,
//! `scaling_validation.rs`, `rbac_validation.rs`), all errors in one 422 `Invalid` Status as
//! the real server answers (`field_errors.rs`, with Go-printed values from `go_values.rs`).

use serde_json::Value;

use crate::endpoint_validation;
use crate::error::ApiError;
use crate::field_errors;
use crate::go_values::{self, Errors};
use crate::meta_validation;
use crate::resources::ResourceType;
use crate::secret_validation;
use crate::service_validation;
use crate::{rbac_validation, scaling_validation, workload_validation};

/// Validates a defaulted object. `old` is the stored object of an update; `None` validates
/// as a create (the name too, no transition rules).
pub(crate) fn validate(
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
    allow_loopback: bool,
) -> Result<(), ApiError> {
    let mut errs = Errors::default();
    if let Some(old) = old {
        errs.merge(meta_validation::object_meta_update(obj, old));
    }
    errs.extend(meta_validation::object_meta(rt, obj, old.is_none()));
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => errs.extend(secret_validation::secret(obj, old)),
        ("", "configmaps") => errs.extend(secret_validation::config_map(obj, old)),
        ("", "services") => errs.extend(service_validation::service(obj)),
        ("discovery.k8s.io", "endpointslices") => errs.extend(endpoint_validation::endpoint_slice(
            obj,
            old,
            allow_loopback,
        )),
        ("", "endpoints") => errs.extend(endpoint_validation::endpoints(obj, allow_loopback)),
        ("apps", "deployments") => errs.merge(workload_validation::deployment(obj, old)),
        ("policy", "poddisruptionbudgets") => {
            errs.merge(scaling_validation::pod_disruption_budget(obj))
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            errs.extend(scaling_validation::horizontal_pod_autoscaler(obj, old))
        }
        ("rbac.authorization.k8s.io", "clusterroles") => {
            errs.merge(rbac_validation::role(obj, false))
        }
        ("rbac.authorization.k8s.io", "roles") => errs.merge(rbac_validation::role(obj, true)),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            errs.merge(rbac_validation::binding(obj, old, false))
        }
        ("rbac.authorization.k8s.io", "rolebindings") => {
            errs.merge(rbac_validation::binding(obj, old, true))
        }
        _ => {}
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    field_errors::into_result(&rt.group, &rt.kind, name, errs.list)
        .map_err(|e| go_values::unquote(e, &errs.printed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtins;
    use serde_json::json;

    fn rt(plural: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|r| r.plural == plural)
            .expect("built-in type")
    }

    #[test]
    fn metadata_and_kind_errors_come_in_one_status() {
        let secret = json!({"metadata": {"name": "Bad_Name", "labels": {"app": "-x"}},
            "type": "kubernetes.io/tls", "data": {"a/b": "eA=="}});
        let e = validate(&rt("secrets"), &secret, None, false).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        let d = e.details.unwrap();
        let fields: Vec<&str> = d["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "data[a/b]",
                "data[tls.crt]",
                "data[tls.key]"
            ]
        );
        assert!(
            e.message
                .starts_with("Secret \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"),
            "{}",
            e.message
        );
        assert!(
            e.message
                .ends_with(", data[tls.crt]: Required value, data[tls.key]: Required value]"),
            "{}",
            e.message
        );
        assert_eq!(d["name"], "Bad_Name");
        assert_eq!(d["kind"], "Secret");
    }

    #[test]
    fn updates_skip_the_name_but_check_transitions() {
        let old = json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": []});
        let new = json!({"metadata": {"name": "s", "labels": {"a": "b"}}, "addressType": "IPv6", "endpoints": []});
        let e = validate(&rt("endpointslices"), &new, Some(&old), false).unwrap_err();
        assert_eq!(
            e.message,
            "EndpointSlice.discovery.k8s.io \"s\" is invalid: addressType: Invalid value: \"IPv6\": field is immutable"
        );
        assert!(validate(&rt("endpointslices"), &new, None, false).is_ok());
        let ns = json!({"metadata": {"name": "ok-ns"}});
        assert!(validate(&rt("namespaces"), &ns, None, false).is_ok());
    }
}
