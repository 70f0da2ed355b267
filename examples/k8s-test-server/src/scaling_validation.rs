//! PodDisruptionBudget and HorizontalPodAutoscaler validation: how many replicas must stay
//! and may run. Kubernetes `pkg/apis/policy/validation/validation.go`
//! `ValidatePodDisruptionBudgetSpec` (not both minAvailable and maxUnavailable, each a
//! non-negative integer or a percentage of at most 100%) and
//! `pkg/apis/autoscaling/validation/validation.go` `validateHorizontalPodAutoscalerSpec`
//! (minReplicas at least 1, or 0 once the object has 0 — the HPAScaleToZero gate is off by
//! default — maxReplicas at least 1 and at least minReplicas, scaleTargetRef kind and name).
//! Metrics and behavior are not checked.

use serde_json::Value;

use crate::field_errors::FieldError;
use crate::go_values::{self, Errors};
use crate::name_rules;
use crate::workload_validation::{NEGATIVE, selector_requirements};

/// `IsValidPercent`'s message (pattern `[0-9]+%`).
const PERCENT: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// The errors of a PodDisruptionBudget's spec (policy/v1).
pub(crate) fn pod_disruption_budget(obj: &Value) -> Errors {
    let mut errs = Errors::default();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let field = |k: &str| spec.get(k).filter(|v| !v.is_null());
    if field("minAvailable").is_some() && field("maxUnavailable").is_some() {
        errs.invalid_printed(
            "spec",
            pdb_spec(spec),
            "minAvailable and maxUnavailable cannot be both set",
        );
    }
    for k in ["minAvailable", "maxUnavailable"] {
        if let Some(v) = field(k) {
            int_or_percent(&mut errs, &format!("spec.{k}"), v);
        }
    }
    if let Some(sel) = field("selector") {
        errs.extend(selector_requirements(sel, "spec.selector"));
    }
    errs
}

/// `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`.
fn int_or_percent(errs: &mut Errors, path: &str, v: &Value) {
    match v.as_str() {
        Some(s) => match s.strip_suffix('%') {
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                if digits.parse::<u64>().is_ok_and(|n| n > 100) {
                    let msg = "must not be greater than 100%";
                    errs.invalid_printed(path, go_values::int_or_string(v), msg);
                }
            }
            _ => errs.invalid_printed(path, go_values::int_or_string(v), PERCENT),
        },
        None => {
            let n = v.as_i64().unwrap_or(0);
            if n < 0 {
                errs.push(FieldError::invalid(path, n, NEGATIVE));
            }
        }
    }
}

/// `%#v` of the internal `policy.PodDisruptionBudgetSpec`. Its fields are pointers, which the
/// real server prints as addresses that change on every request; a fixed one stands in.
fn pdb_spec(spec: &Value) -> String {
    let ptr = |k: &str, ty: &str| {
        let addr = if spec.get(k).is_some_and(|v| !v.is_null()) {
            "0xc000000000"
        } else {
            "nil"
        };
        format!("{}:(*{ty})({addr})", upper_first(k))
    };
    format!(
        "policy.PodDisruptionBudgetSpec{{{}, {}, {}, {}}}",
        ptr("minAvailable", "intstr.IntOrString"),
        ptr("selector", "v1.LabelSelector"),
        ptr("maxUnavailable", "intstr.IntOrString"),
        ptr(
            "unhealthyPodEvictionPolicy",
            "policy.UnhealthyPodEvictionPolicyType"
        ),
    )
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// The errors of a HorizontalPodAutoscaler's spec (autoscaling/v2); `old` is the stored
/// object of an update.
pub(crate) fn horizontal_pod_autoscaler(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let min = spec.get("minReplicas").and_then(Value::as_i64);
    let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    let old_min = old.and_then(|o| o.pointer("/spec/minReplicas").and_then(Value::as_i64));
    let lower = if old_min == Some(0) { 0 } else { 1 };
    if let Some(m) = min
        && m < lower
    {
        let msg = format!("must be greater than or equal to {lower}");
        errs.push(FieldError::invalid("spec.minReplicas", m, &msg));
    }
    if max < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than 0",
        ));
    }
    if let Some(m) = min
        && max < m
    {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    // `ValidateCrossVersionObjectReference`.
    for k in ["kind", "name"] {
        let path = format!("spec.scaleTargetRef.{k}");
        let v = spec
            .pointer(&format!("/scaleTargetRef/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if v.is_empty() {
            errs.push(FieldError::required(&path, ""));
        }
        for m in name_rules::path_segment_name(v) {
            errs.push(FieldError::invalid(&path, v, &m));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdb_lines(obj: Value) -> Vec<String> {
        let e = pod_disruption_budget(&obj);
        e.list
            .iter()
            .map(|x| {
                let mut l = format!("{}: {}", x.field, x.body());
                for p in &e.printed {
                    l = l.replace(&crate::field_errors::go_quote(p), p);
                }
                l
            })
            .collect()
    }

    fn hpa_lines(obj: Value, old: Option<Value>) -> Vec<String> {
        horizontal_pod_autoscaler(&obj, old.as_ref())
            .iter()
            .map(|x| format!("{}: {}", x.field, x.body()))
            .collect()
    }

    #[test]
    fn pdb_rules() {
        let ok = json!({"spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "gw"}}}});
        assert!(pdb_lines(ok).is_empty());
        assert!(pdb_lines(json!({"spec": {"maxUnavailable": "100%"}})).is_empty());
        assert_eq!(
            pdb_lines(json!({"spec": {"minAvailable": -1, "maxUnavailable": "150%"}})),
            [
                "spec: Invalid value: policy.PodDisruptionBudgetSpec{MinAvailable:(*intstr.IntOrString)(0xc000000000), Selector:(*v1.LabelSelector)(nil), MaxUnavailable:(*intstr.IntOrString)(0xc000000000), UnhealthyPodEvictionPolicy:(*policy.UnhealthyPodEvictionPolicyType)(nil)}: minAvailable and maxUnavailable cannot be both set",
                "spec.minAvailable: Invalid value: -1: must be greater than or equal to 0",
                "spec.maxUnavailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"150%\"}: must not be greater than 100%",
            ]
        );
        assert_eq!(
            pdb_lines(json!({"spec": {"minAvailable": "half"}})),
            [format!(
                "spec.minAvailable: Invalid value: intstr.IntOrString{{Type:1, IntVal:0, StrVal:\"half\"}}: {PERCENT}"
            )]
        );
    }

    #[test]
    fn hpa_rules() {
        let target = json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw"});
        let ok = json!({"spec": {"minReplicas": 2, "maxReplicas": 5, "scaleTargetRef": target}});
        assert!(hpa_lines(ok.clone(), None).is_empty());
        assert_eq!(
            hpa_lines(
                json!({"spec": {"minReplicas": 0, "maxReplicas": 0, "scaleTargetRef": {"name": "a/b"}}}),
                None
            ),
            [
                "spec.minReplicas: Invalid value: 0: must be greater than or equal to 1",
                "spec.maxReplicas: Invalid value: 0: must be greater than 0",
                "spec.scaleTargetRef.kind: Required value",
                "spec.scaleTargetRef.name: Invalid value: \"a/b\": may not contain '/'",
            ]
        );
        assert_eq!(
            hpa_lines(
                json!({"spec": {"minReplicas": 3, "maxReplicas": 2, "scaleTargetRef": target}}),
                None
            ),
            ["spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"]
        );
        // An object that already scales to zero may keep doing so.
        let zero = json!({"spec": {"minReplicas": 0, "maxReplicas": 2, "scaleTargetRef": target}});
        assert!(hpa_lines(zero.clone(), Some(zero)).is_empty());
    }
}
