//! Field validation errors and the 422 `Invalid` Status they become, worded as
//! apimachinery's `field.Error` and `errors.NewInvalid` word them.

use serde_json::{Value, json};

use crate::error::ApiError;

/// The kinds of field error the validations here produce (`field.ErrorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Invalid,
    Required,
    Duplicate,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
}

impl Kind {
    /// The Status cause `reason`.
    fn reason(self) -> &'static str {
        match self {
            Kind::Invalid => "FieldValueInvalid",
            Kind::Required => "FieldValueRequired",
            Kind::Duplicate => "FieldValueDuplicate",
            Kind::NotSupported => "FieldValueNotSupported",
            Kind::Forbidden => "FieldValueForbidden",
            Kind::TooLong => "FieldValueTooLong",
            Kind::TooMany => "FieldValueTooMany",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Invalid => "Invalid value",
            Kind::Required => "Required value",
            Kind::Duplicate => "Duplicate value",
            Kind::NotSupported => "Unsupported value",
            Kind::Forbidden => "Forbidden",
            Kind::TooLong => "Too long",
            Kind::TooMany => "Too many",
        }
    }
}

/// The offending value as the message shows it: strings quoted (Go `%q`), numbers bare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    Str(String),
    Int(i64),
}

impl From<&str> for Bad {
    fn from(s: &str) -> Bad {
        Bad::Str(s.to_string())
    }
}

impl From<i64> for Bad {
    fn from(n: i64) -> Bad {
        Bad::Int(n)
    }
}

/// One field error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub kind: Kind,
    pub field: String,
    pub value: Bad,
    pub detail: String,
}

impl FieldError {
    fn new(kind: Kind, field: &str, value: Bad, detail: &str) -> FieldError {
        FieldError {
            kind,
            field: field.to_string(),
            value,
            detail: detail.to_string(),
        }
    }

    pub fn invalid(field: &str, value: impl Into<Bad>, detail: &str) -> FieldError {
        Self::new(Kind::Invalid, field, value.into(), detail)
    }

    pub fn required(field: &str, detail: &str) -> FieldError {
        Self::new(Kind::Required, field, Bad::from(""), detail)
    }

    pub fn duplicate(field: &str, value: impl Into<Bad>) -> FieldError {
        Self::new(Kind::Duplicate, field, value.into(), "")
    }

    /// `supported` must be sorted, as Go's `sets.List` returns it.
    pub fn not_supported(field: &str, value: &str, supported: &[&str]) -> FieldError {
        let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        let detail = format!("supported values: {}", quoted.join(", "));
        Self::new(Kind::NotSupported, field, Bad::from(value), &detail)
    }

    pub fn forbidden(field: &str, detail: &str) -> FieldError {
        Self::new(Kind::Forbidden, field, Bad::from(""), detail)
    }

    pub fn too_long(field: &str, max_bytes: usize) -> FieldError {
        let detail = format!("must have at most {max_bytes} bytes");
        Self::new(Kind::TooLong, field, Bad::from(""), &detail)
    }

    pub fn too_many(field: &str, actual: usize, max: usize) -> FieldError {
        let actual = i64::try_from(actual).unwrap_or(i64::MAX);
        let detail = format!("must have at most {max} items");
        Self::new(Kind::TooMany, field, Bad::Int(actual), &detail)
    }

    /// `ErrorBody`: the cause message, e.g. `Invalid value: "x": must be ...`.
    pub fn body(&self) -> String {
        let mut s = self.kind.label().to_string();
        // These kinds never show the value.
        if !matches!(self.kind, Kind::Required | Kind::Forbidden | Kind::TooLong) {
            match &self.value {
                Bad::Str(v) => s += &format!(": {}", go_quote(v)),
                Bad::Int(n) => s += &format!(": {n}"),
            }
        }
        if !self.detail.is_empty() {
            s += &format!(": {}", self.detail);
        }
        s
    }
}

/// Go's `unicode.IsPrint`, near enough: no control characters, no space but U+0020, and no
/// invisible formatting characters (unassigned code points are not known here).
pub(crate) fn is_print(c: char) -> bool {
    let format = matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{feff}');
    !c.is_control() && (c == ' ' || !c.is_whitespace()) && !format
}

/// Go's `%q` for the strings these messages quote (`strconv.Quote`: what is not printable
/// escaped).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if is_print(c) => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// `errors.NewInvalid`: a 422 with one cause per error and the aggregate message
/// `<Kind>[.group] "<name>" is invalid: <e>` or `... is invalid: [e1, e2]`, where repeated
/// messages are shown once (as `ToAggregate` does). `Ok` when there are no errors.
pub(crate) fn into_result(
    group: &str,
    kind: &str,
    name: &str,
    errs: Vec<FieldError>,
) -> Result<(), ApiError> {
    if errs.is_empty() {
        return Ok(());
    }
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let mut rendered: Vec<String> = Vec::with_capacity(errs.len());
    for e in &errs {
        let line = format!("{}: {}", e.field, e.body());
        if !rendered.contains(&line) {
            rendered.push(line);
        }
    }
    let aggregate = match rendered.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.kind.reason(), "message": e.body(), "field": e.field}))
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
            format!("{qualified} {} is invalid: {aggregate}", go_quote(name)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_worded_like_field_error() {
        assert_eq!(
            FieldError::invalid(
                "spec.ports[0].port",
                0,
                "must be between 1 and 65535, inclusive"
            )
            .body(),
            "Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            FieldError::required("metadata.name", "name or generateName is required").body(),
            "Required value: name or generateName is required"
        );
        assert_eq!(
            FieldError::required("data[tls.key]", "").body(),
            "Required value"
        );
        assert_eq!(
            FieldError::too_long("data", 1 << 20).body(),
            "Too long: must have at most 1048576 bytes"
        );
        assert_eq!(
            FieldError::too_many("endpoints", 1001, 1000).body(),
            "Too many: 1001: must have at most 1000 items"
        );
        assert_eq!(
            FieldError::not_supported("addressType", "Foo", &["FQDN", "IPv4", "IPv6"]).body(),
            "Unsupported value: \"Foo\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
        );
        assert_eq!(
            FieldError::duplicate("ports[1].name", "http").body(),
            "Duplicate value: \"http\""
        );
        assert_eq!(go_quote("a\"b\\\n\u{1}é"), "\"a\\\"b\\\\\\n\\x01é\"");
    }

    #[test]
    fn the_status_aggregates_and_dedups_messages_but_keeps_every_cause() {
        let e = into_result(
            "rbac.authorization.k8s.io",
            "Role",
            "r",
            vec![
                FieldError::invalid("metadata.labels", "x/y/z", "bad"),
                FieldError::invalid("metadata.labels", "x/y/z", "bad"),
                FieldError::required("metadata.namespace", ""),
            ],
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "Role.rbac.authorization.k8s.io \"r\" is invalid: [metadata.labels: Invalid value: \"x/y/z\": bad, metadata.namespace: Required value]"
        );
        let d = e.details.unwrap();
        assert_eq!(d["causes"].as_array().unwrap().len(), 3);
        assert_eq!(d["causes"][2]["reason"], "FieldValueRequired");
        assert_eq!(d["group"], "rbac.authorization.k8s.io");
        assert!(into_result("", "Secret", "s", vec![]).is_ok());
    }
}
