//! Deployment validation, the rules a generated Deployment can plausibly break (kubernetes
//! `pkg/apis/apps/validation/validation.go` `ValidateDeploymentSpec` and
//! `ValidatePodTemplateSpecForReplicaSet`; containers from `pkg/apis/core/validation`
//! `validateContainers`/`validateContainerCommon`): replicas not negative, a selector that is
//! present, not empty, well formed and matches the template's labels, containers present
//! with unique DNS-1123 names and an image, `restartPolicy: Always`. On update the selector
//! is immutable (`pkg/registry/apps/deployment/strategy.go` `ValidateUpdate`: every version
//! but extensions/v1beta1). Strategy, probes, volumes and resources are not checked.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::field_errors::FieldError;
use crate::go_values::{self, Errors};
use crate::name_rules;

/// `IsNegativeErrorMsg` (`ValidateNonnegativeField`).
pub(crate) const NEGATIVE: &str = "must be greater than or equal to 0";

/// The errors of a Deployment's spec; `old` is the stored object of an update.
pub(crate) fn deployment(obj: &Value, old: Option<&Value>) -> Errors {
    let mut errs = Errors::default();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if let Some(n) = spec.get("replicas").and_then(Value::as_i64)
        && n < 0
    {
        errs.push(FieldError::invalid("spec.replicas", n, NEGATIVE));
    }
    let selector = spec.get("selector").filter(|s| !s.is_null());
    match selector {
        None => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => {
            errs.extend(selector_requirements(sel, "spec.selector"));
            if is_empty_selector(sel) {
                errs.invalid_printed(
                    "spec.selector",
                    go_values::label_selector(sel),
                    "empty selector is invalid for deployment",
                );
            }
        }
    }
    let template = spec.get("template").unwrap_or(&Value::Null);
    match selector
        .map(Selector::parse)
        .unwrap_or(Ok(Selector::Nothing))
    {
        Err(()) => errs.invalid_printed(
            "spec.selector",
            selector.map(go_values::label_selector).unwrap_or_default(),
            "invalid label selector",
        ),
        Ok(sel) => {
            let labels = template.pointer("/metadata/labels");
            if !sel.is_empty() && !sel.matches(labels.and_then(Value::as_object)) {
                errs.invalid_printed(
                    "spec.template.metadata.labels",
                    go_values::string_map(labels),
                    "`selector` does not match template `labels`",
                );
            }
            errs.extend(pod_template(template));
        }
    }
    if let Some(old) = old {
        let was = old.pointer("/spec/selector").filter(|s| !s.is_null());
        if selector.map(normalized) != was.map(normalized) {
            let immutable = "field is immutable";
            match selector {
                Some(sel) => {
                    errs.invalid_printed("spec.selector", go_values::label_selector(sel), immutable)
                }
                // A nil pointer prints as the string "null", quoted.
                None => errs.push(FieldError::invalid("spec.selector", "null", immutable)),
            }
        }
    }
    errs
}

/// `ValidatePodTemplateSpec` (the container part) and the ReplicaSet template rules.
fn pod_template(template: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let containers = template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        errs.push(FieldError::required("spec.template.spec.containers", ""));
    }
    let mut names = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let at = |f: &str| format!("spec.template.spec.containers[{i}].{f}");
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(&at("name"), ""));
        } else {
            for m in name_rules::dns1123_label(name) {
                errs.push(FieldError::invalid(&at("name"), name, &m));
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            errs.push(FieldError::required(&at("image"), ""));
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(&at("name"), name));
        }
    }
    // Defaulted to Always; a ReplicaSet's pods may not stop for good.
    match template
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        None | Some("Always") => {}
        Some(other) => errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            other,
            &["Always"],
        )),
    }
    errs
}

fn is_empty_selector(sel: &Value) -> bool {
    let n = |k: &str| {
        sel.get(k)
            .map(|v| v.as_object().map_or(0, Map::len) + v.as_array().map_or(0, Vec::len))
            .unwrap_or(0)
    };
    n("matchLabels") + n("matchExpressions") == 0
}

/// A selector with absent and empty lists alike, as `apiequality.Semantic.DeepEqual` sees it.
fn normalized(sel: &Value) -> (Value, Value) {
    let part = |k: &str| match sel.get(k) {
        Some(Value::Object(m)) if m.is_empty() => Value::Null,
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(v) => v.clone(),
        None => Value::Null,
    };
    (part("matchLabels"), part("matchExpressions"))
}

/// `ValidateLabelSelectorRequirement`: the operator and its values (label syntax unchecked).
pub(crate) fn selector_requirements(sel: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, r) in exprs.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("{path}.matchExpressions[{i}].{f}");
        let has_values = r
            .get("values")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty());
        match r.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" | "NotIn" if !has_values => errs.push(FieldError::required(
                &at("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if has_values => errs.push(FieldError::forbidden(
                &at("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => errs.push(FieldError::invalid(
                &at("operator"),
                op,
                "not a valid selector operator",
            )),
        }
    }
    errs
}

/// `metav1.LabelSelectorAsSelector`: no selector selects nothing, an empty one everything.
enum Selector<'a> {
    Nothing,
    Everything,
    Match(&'a Value),
}

impl<'a> Selector<'a> {
    /// `Err` where the real conversion fails (a bad operator or values).
    fn parse(sel: &'a Value) -> Result<Selector<'a>, ()> {
        if is_empty_selector(sel) {
            return Ok(Selector::Everything);
        }
        if selector_requirements(sel, "").is_empty() {
            Ok(Selector::Match(sel))
        } else {
            Err(())
        }
    }

    /// `labels.Selector.Empty()`: only the everything selector (`Nothing` is not empty).
    fn is_empty(&self) -> bool {
        matches!(self, Selector::Everything)
    }

    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let sel = match self {
            Selector::Nothing => return false,
            Selector::Everything => return true,
            Selector::Match(sel) => sel,
        };
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let by_labels = sel
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .all(|(k, v)| label(k).is_some() && label(k) == v.as_str());
        let by_exprs = sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .all(|r| {
                let key = r.get("key").and_then(Value::as_str).unwrap_or("");
                let values: Vec<&str> = r
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                match r.get("operator").and_then(Value::as_str) {
                    Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                    Some("Exists") => label(key).is_some(),
                    _ => label(key).is_none(),
                }
            });
        by_labels && by_exprs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(e: Errors) -> Vec<String> {
        let printed = e.printed.clone();
        e.list
            .iter()
            .map(|e| {
                let mut l = format!("{}: {}", e.field, e.body());
                for p in &printed {
                    l = l.replace(&crate::field_errors::go_quote(p), p);
                }
                l
            })
            .collect()
    }

    fn good() -> Value {
        json!({"spec": {"selector": {"matchLabels": {"app": "gw"}},
            "template": {"metadata": {"labels": {"app": "gw", "extra": "x"}},
                "spec": {"containers": [{"name": "gw", "image": "gw:1"}]}}}})
    }

    #[test]
    fn a_generated_deployment_passes() {
        assert!(lines(deployment(&good(), None)).is_empty());
        assert!(lines(deployment(&good(), Some(&good()))).is_empty());
    }

    #[test]
    fn selector_and_template_rules_give_the_real_messages() {
        let mut d = good();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["selector"] = json!({"matchLabels": {"app": "other"}});
        d["spec"]["template"]["spec"]["containers"] =
            json!([{"name": "Gw"}, {"name": "Gw", "image": "i"}, {"image": "i"}]);
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(
            lines(deployment(&d, None)),
            [
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"gw\", \"extra\":\"x\"}: `selector` does not match template `labels`",
                "spec.template.spec.containers[0].name: Invalid value: \"Gw\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "spec.template.spec.containers[0].image: Required value",
                "spec.template.spec.containers[1].name: Invalid value: \"Gw\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
                "spec.template.spec.containers[1].name: Duplicate value: \"Gw\"",
                "spec.template.spec.containers[2].name: Required value",
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
            ]
        );
    }

    #[test]
    fn a_missing_selector_matches_nothing_and_an_empty_one_is_refused() {
        let mut d = good();
        d["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(
            lines(deployment(&d, None)),
            [
                "spec.selector: Required value",
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"gw\", \"extra\":\"x\"}: `selector` does not match template `labels`",
            ]
        );
        d["spec"]["selector"] = json!({"matchLabels": {}});
        d["spec"]["template"]["spec"]["containers"] = json!([]);
        assert_eq!(
            lines(deployment(&d, None)),
            [
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment",
                "spec.template.spec.containers: Required value",
            ]
        );
    }

    #[test]
    fn expressions_are_checked_and_matched() {
        let mut d = good();
        d["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In"}]});
        assert_eq!(
            lines(deployment(&d, None)),
            [
                "spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:\"app\", Operator:\"In\", Values:[]string(nil)}}}: invalid label selector",
            ]
        );
        d["spec"]["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["gw"]},
            {"key": "gone", "operator": "DoesNotExist"},
            {"key": "extra", "operator": "NotIn", "values": ["y"]},
            {"key": "extra", "operator": "Exists"}]});
        assert!(lines(deployment(&d, None)).is_empty());
        d["spec"]["selector"]["matchExpressions"][1]["key"] = json!("extra");
        assert_eq!(lines(deployment(&d, None)).len(), 1);
    }

    #[test]
    fn the_selector_is_immutable_on_update() {
        let mut new = good();
        new["spec"]["selector"]["matchLabels"]["extra"] = json!("x");
        assert_eq!(
            lines(deployment(&new, Some(&good()))),
            [
                "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"gw\", \"extra\":\"x\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
            ]
        );
        // Absent and empty lists are the same selector.
        let mut same = good();
        same["spec"]["selector"]["matchExpressions"] = json!([]);
        assert!(lines(deployment(&same, Some(&good()))).is_empty());
    }
}
