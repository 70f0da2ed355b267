//! serde_yaml's errors retold without the file's content.
//!
//! serde_yaml quotes what it found: `--endpoints key.pem` put the whole private key into
//! stderr and the ERROR log (`invalid type: string "-----BEGIN PRIVATE KEY----- ..."`), a link
//! to `/etc/shadow` a password line (``unknown field `root:...` ``), and a label key lands in
//! the error's path. Raw, such text also forges log lines. So an error is rebuilt from parts
//! known not to come from the file: the kind of error, the kind of node found, what the schema
//! expected (its own words), the path as far as it is made of schema field names and indexes,
//! and the line and column. The location is enough to find the content.

use super::bounds::TOO_MANY_ENDPOINTS;

/// The endpoints file's field names: the only map keys a path shows.
const FIELDS: &[&str] = &[
    "services",
    "host",
    "ports",
    "port",
    "targetPort",
    "subsets",
    "name",
    "labels",
    "endpoints",
    "address",
    "ready",
    "hbone",
    "zone",
    "weight",
    "waypoint",
    "waypoint_canary",
    "traffic_distribution",
    "traffic_policy",
    "connectionPool",
    "tcp",
    "connectTimeout",
    "maxConnections",
    "tcpKeepalive",
    "time",
    "interval",
    "probes",
    "idleTimeout",
    "maxConnectionDuration",
    "outlierDetection",
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "loadBalancer",
    "simple",
    "consistentHash",
    "useSourceIp",
    "localityLbSetting",
    "enabled",
    "warmupDurationSecs",
    "warmup",
    "duration",
    "minimumPercent",
    "aggression",
    "portLevelSettings",
    "number",
];

/// Texts serde_yaml may report that name no content (libyaml's syntax errors are its own
/// fixed texts too; they are kept when they pass [`plain`]).
const FIXED: &[&str] = &[
    "EOF while parsing a value",
    "deserializing from YAML containing more than one document is not supported",
    "recursion limit exceeded",
    "repetition limit exceeded",
    "unknown anchor",
    "empty YAML tag is not allowed",
    "failed to parse YAML number",
];

/// The error as `[path: ]what[ at line L column C]`, holding nothing read from the file.
pub fn describe(e: &serde_yaml::Error) -> String {
    let full = e.to_string();
    let at = e
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()));
    let place = at.clone().unwrap_or_default();
    let (body, at) = match at {
        Some(at) if full.ends_with(&at) => (&full[..full.len() - at.len()], at),
        // serde_yaml leaves out line 1 column 1.
        Some(at) if !full.contains(" at line ") => (full.as_str(), at),
        // libyaml's, with the location inside ("…, while parsing … at line 1 column 1").
        _ => (full.as_str(), String::new()),
    };
    let (path, what) = retell(body);
    // A message that could not be kept still says where (the location is not content).
    let at = if what == NOT_YAML && at.is_empty() {
        place
    } else {
        at
    };
    match path {
        Some(p) if !p.is_empty() => format!("{p}: {what}{at}"),
        _ => format!("{what}{at}"),
    }
}

/// Retells a message from where its phrase starts.
type Render = fn(&str) -> String;

/// serde's own messages, each with what may be kept of it.
const KINDS: &[(&str, Render)] = &[
    ("invalid type: ", |m| found("invalid type", m)),
    ("invalid value: ", |m| found("invalid value", m)),
    ("unknown field `", |m| unknown("unknown field", m)),
    ("unknown variant `", |m| unknown("unknown variant", m)),
    ("missing field `", |m| field("missing field", m)),
    ("duplicate field `", |m| field("duplicate field", m)),
    ("invalid length ", length),
    ("data did not match any variant of untagged enum", |_| {
        "none of the forms allowed here (`hbone` takes true, false or {port: N})".into()
    }),
    ("deserializing nested enum", |_| {
        "YAML tags (`!tag`) are not part of an endpoints file".into()
    }),
    (TOO_MANY_ENDPOINTS, |_| {
        format!(
            "more than {} endpoints in total, the most an endpoints file may list \
             (YAML aliases count each time they are used)",
            group(super::bounds::MAX_ENDPOINTS)
        )
    }),
];

/// Splits serde_yaml's `path: message` at the earliest known message and retells both.
fn retell(body: &str) -> (Option<String>, String) {
    let first = KINDS
        .iter()
        .filter_map(|(phrase, render)| body.find(phrase).map(|i| (i, render)))
        .min_by_key(|(i, _)| *i);
    if let Some((i, render)) = first {
        let path = body[..i].trim_end_matches(": ");
        return (Some(safe_path(path)), render(&body[i..]));
    }
    if let Some(fixed) = FIXED.iter().find(|f| body.contains(*f)) {
        return (None, (*fixed).to_string());
    }
    if plain(body) {
        // libyaml's syntax errors: "did not find expected key at line 3 column 1, while
        // parsing a block mapping at line 1 column 1".
        return (None, body.to_string());
    }
    (None, NOT_YAML.into())
}

const NOT_YAML: &str = "not valid YAML";

/// Only letters, digits and a little punctuation, as libyaml's fixed texts are (`did not
/// find expected ',' or '}'`): no double quote or backtick (which serde puts around content),
/// no control character.
fn plain(s: &str) -> bool {
    s.len() <= 300
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ,'-:.()!{}[]".contains(&b))
}

/// The leading part of serde_yaml's path (`services[2].endpoints[0]`) made of schema field
/// names and indexes; it stops at `labels` (its keys are content) and at anything unknown.
fn safe_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('.') {
        let name = part.split('[').next().unwrap_or_default();
        let indexes = &part[name.len()..];
        let indexes_ok = indexes.split_terminator(']').all(|ix| {
            ix.strip_prefix('[')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        }) && (indexes.is_empty() || indexes.ends_with(']'));
        if !FIELDS.contains(&name) || !indexes_ok {
            break;
        }
        out.push(part);
        if name == "labels" {
            break;
        }
    }
    out.join(".")
}

/// `invalid type: string "…", expected struct FileDoc` without the string.
fn found(kind: &str, m: &str) -> String {
    let rest = m.split_once(": ").map_or("", |(_, r)| r);
    let word = rest.split([' ', ',']).next().unwrap_or_default();
    let node = match word {
        "string" => "string",
        "integer" => "integer",
        "floating" => "floating point number",
        "boolean" => "boolean",
        "sequence" => "sequence",
        "map" => "map",
        "unit" | "null" => "null",
        "character" => "character",
        "byte" => "byte string",
        "enum" => "tagged value",
        _ => "value",
    };
    format!("{kind}: {node}{}", expected(m))
}

/// `unknown field `…`, expected one of `host`, …` without the unknown name.
fn unknown(kind: &str, m: &str) -> String {
    if m.ends_with(", there are no fields") || m.ends_with(", there are no variants") {
        return format!("{kind} (none is allowed here)");
    }
    format!("{kind}{}", expected(m))
}

/// `missing field `host``: the name is the schema's own (checked all the same).
fn field(kind: &str, m: &str) -> String {
    let name = m
        .split('`')
        .nth(1)
        .filter(|n| FIELDS.contains(n))
        .map(|n| format!(" `{n}`"));
    format!("{kind}{}", name.unwrap_or_default())
}

/// `invalid length 3, expected …`.
fn length(m: &str) -> String {
    let n: String = m["invalid length ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    format!("invalid length {n}{}", expected(m))
}

/// `, expected <what the schema wanted>`: serde writes it last, after anything quoted from
/// the file, so the text after the last `, expected ` is the schema's own. The Rust type
/// names of the schema read better as what they stand for.
fn expected(m: &str) -> String {
    let Some((_, exp)) = m.rsplit_once(", expected ") else {
        return String::new();
    };
    let ok = exp.len() <= 200
        && exp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" `_,'!-".contains(&b));
    if !ok {
        return String::new();
    }
    let exp = match exp {
        "struct FileDoc" => "a mapping with a `services` list",
        "struct FileService" => "a service (a mapping with `host` and `ports`)",
        "struct FilePort" => "a port (a mapping with `port`)",
        "struct FileSubset" => "a subset (a mapping with `name`)",
        "struct FileEndpoint" => "an endpoint (a mapping with `address`)",
        "struct FileHbonePort" => "a mapping with `port`",
        other => other,
    };
    format!(", expected {exp}")
}

/// 500000 as 500,000.
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct FileDoc {
            services: Vec<Svc>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Svc {
            host: String,
            #[serde(default)]
            labels: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            port: u16,
        }
        describe(&serde_yaml::from_str::<FileDoc>(text).unwrap_err())
    }

    const SECRET: &str = "SENTINEL-7f3a";

    #[test]
    fn no_content_is_retold() {
        let cases = [
            (
                format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n"),
                "invalid type: string, expected a mapping with a `services` list at line 1 column 1",
            ),
            (
                format!("services: [{{host: a, {SECRET}: 1}}]"),
                "services[0]: unknown field, expected one of `host`, `labels`, `port` at line 1",
            ),
            (
                format!("root:{SECRET}:19000:0:99999:7:::\n"),
                "unknown field, expected `services` at line 1 column 1",
            ),
            (
                format!("services: [{{host: a, labels: {{{SECRET}: [1]}}}}]"),
                "services[0].labels: invalid type: sequence, expected a string",
            ),
            (
                format!("services: [{{host: a, port: {SECRET}}}]"),
                "services[0].port: invalid type: string, expected u16",
            ),
            (
                "services: [{host: a, port: 70000}]".to_string(),
                "services[0].port: invalid value: integer, expected u16",
            ),
            (
                "services: [{port: 1}]".to_string(),
                "services[0]: missing field `host`",
            ),
            (
                "services: [{host: a, host: b}]".to_string(),
                "services[0]: duplicate field `host`",
            ),
            (
                "services: [\n".to_string(),
                "did not find expected node content",
            ),
            // An unclosed flow mapping: libyaml's text names `'}'`, kept with its place
            // (found by an audit session: it was "not valid YAML" with no location).
            (
                "services:\n  - host: a\n    labels: {version: v1\n    port: 80\n".to_string(),
                "did not find expected ',' or '}' at line 4 column 9",
            ),
        ];
        for (text, want) in cases {
            let got = err(&text);
            assert!(!got.contains(SECRET), "{text:?}: {got:?}");
            assert!(got.contains(want), "{text:?}: got {got:?}, want {want:?}");
        }
    }

    /// Content chosen to look like the parts that are kept does not get through either.
    #[test]
    fn spoofed_parts_are_not_kept() {
        let key = format!("x`, expected one of `{SECRET}");
        let got = err(&format!("services: [{{host: a, \"{key}\": 1}}]"));
        assert!(!got.contains(SECRET), "{got}");
        let got = err(&format!(
            "services: [{{host: a, labels: {{\"a.host: invalid type: {SECRET}\": [1]}}}}]"
        ));
        assert!(!got.contains(SECRET), "{got}");
        assert!(got.starts_with("services[0].labels: "), "{got}");
        let got = err(&format!(
            "services: [{{host: \"\\n{SECRET}\\u001b[31m\", port: x}}]"
        ));
        assert!(!got.contains(SECRET) && !got.contains('\n'), "{got}");
        assert_eq!(
            safe_path("services[0].endpoints[12].labels.k"),
            "services[0].endpoints[12].labels"
        );
        assert_eq!(safe_path("services[x].host"), "");
        assert_eq!(safe_path("services[0].nope.host"), "services[0]");
        assert_eq!(group(500_000), "500,000");
    }
}
