//! Label and field selectors, as in `?labelSelector=` and `?fieldSelector=`.

use crate::error::ApiError;
use crate::field_errors::go_quote;
use crate::resources::ResourceType;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn set_values(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |p: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: {p:?}: invalid label selector"
            ))
        };
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let r = if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set_values(v).ok_or_else(|| bad(part))?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Req::In(k.trim().into(), set_values(v).ok_or_else(|| bad(part))?)
            } else if part.contains(char::is_whitespace) || part.contains('(') {
                return Err(bad(part));
            } else {
                Req::Exists(part.to_string())
            };
            reqs.push(r);
        }
        Ok(LabelSelector(reqs))
    }

    /// Selects everything (`labels.Everything()`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// The field labels a kind's lists and watches accept, as the real server converts them
/// (`runtime.Scheme.ConvertFieldLabel`).
#[derive(Clone, Debug)]
pub(crate) enum FieldLabels {
    /// A built-in kind with its own conversion function (`pkg/apis/core/v1/conversion.go`):
    /// these labels (and old names for some), anything else `field label not supported: X`.
    Kind {
        accepted: &'static [&'static str],
        renamed: &'static [(&'static str, &'static str)],
    },
    /// A built-in kind without one: `DefaultMetaV1FieldSelectorConversion`, name and
    /// namespace only.
    Meta,
    /// A custom resource (`apiextensions-apiserver` `crConverter.ConvertFieldLabel`): name,
    /// namespace when namespaced, and the CRD's `selectableFields`.
    Custom {
        namespaced: bool,
        selectable: Vec<String>,
    },
}

const POD_LABELS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];

impl FieldLabels {
    /// The field labels of `rt`'s objects; `selectable`: a CRD's `selectableFields`.
    pub(crate) fn of(rt: &ResourceType, selectable: Vec<String>) -> FieldLabels {
        if rt.custom {
            return FieldLabels::Custom {
                namespaced: rt.namespaced,
                selectable,
            };
        }
        let kind = |accepted| FieldLabels::Kind {
            accepted,
            renamed: &[],
        };
        match (rt.group.as_str(), rt.kind.as_str()) {
            ("", "Pod") => FieldLabels::Kind {
                accepted: POD_LABELS,
                // "for backwards compatibility with old v1 clients which send spec.host"
                renamed: &[("spec.host", "spec.nodeName")],
            },
            ("", "Node") => kind(&["metadata.name", "spec.unschedulable"]),
            ("", "Namespace") => kind(&["status.phase", "metadata.name"]),
            ("", "Secret") => kind(&["type", "metadata.namespace", "metadata.name"]),
            ("", "Service") => kind(&[
                "metadata.namespace",
                "metadata.name",
                "spec.clusterIP",
                "spec.type",
            ]),
            _ => FieldLabels::Meta,
        }
    }

    /// The label a selector's `label` is evaluated as, or the real server's 400.
    fn convert(&self, label: &str) -> Result<String, ApiError> {
        let not_supported = || {
            Err(ApiError::bad_request(format!(
                "field label not supported: {label}"
            )))
        };
        match self {
            FieldLabels::Kind { accepted, renamed } => {
                if accepted.contains(&label) {
                    return Ok(label.to_string());
                }
                match renamed.iter().find(|(old, _)| *old == label) {
                    Some((_, new)) => Ok(new.to_string()),
                    None => not_supported(),
                }
            }
            FieldLabels::Meta => match label {
                "metadata.name" | "metadata.namespace" => Ok(label.to_string()),
                _ => Err(ApiError::bad_request(format!(
                    "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                    go_quote(label)
                ))),
            },
            FieldLabels::Custom {
                namespaced,
                selectable,
            } => {
                if label == "metadata.name"
                    || (*namespaced && label == "metadata.namespace")
                    || selectable.iter().any(|s| s == label)
                {
                    Ok(label.to_string())
                } else {
                    not_supported()
                }
            }
        }
    }
}

/// A parsed field selector: `path=value`, `path==value`, `path!=value`, comma-separated,
/// each path one its kind supports ([`FieldSelector::convert`]), evaluated against the
/// object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            reqs.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// The selector with its labels as the kind's conversion function maps them, or the 400
    /// the real list and watch handlers answer for an unsupported one
    /// (`fieldSelector.Transform` in `endpoints/handlers/get.go`).
    pub(crate) fn convert(self, labels: &FieldLabels) -> Result<Self, ApiError> {
        let reqs = self
            .0
            .into_iter()
            .map(|(k, eq, v)| Ok((labels.convert(&k)?, eq, v)))
            .collect::<Result<_, ApiError>>()?;
        Ok(FieldSelector(reqs))
    }

    /// Selects everything (`fields.Everything()`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let ptr = format!("/{}", path.replace('.', "/"));
            // Boolean fields are selected as `strconv.FormatBool` prints them, unset false.
            let bool_field = matches!(path.as_str(), "spec.hostNetwork" | "spec.unschedulable");
            let got = match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if bool_field => "false".into(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_ops() {
        let o = json!({"metadata": {"labels": {"app": "gw", "tier": "edge"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=gw"));
        assert!(m("app==gw,tier"));
        assert!(m("app in (gw, x),tier notin (core)"));
        assert!(m("!missing"));
        assert!(m("app!=x"));
        assert!(m(""));
        assert!(!m("app=x"));
        assert!(!m("app notin (gw)"));
        assert!(!m("!app"));
        assert!(!m("missing"));
        assert!(!m("missing in (a)"));
        assert!(m("missing notin (a)"));
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn field_selector() {
        let o = json!({"metadata": {"name": "a", "namespace": "ns"}, "type": "Opaque"});
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=x,type==Opaque").unwrap();
        assert!(f.matches(&o));
        assert!(!FieldSelector::parse("metadata.name=b").unwrap().matches(&o));
    }
}
