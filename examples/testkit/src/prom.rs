//! Prometheus text exposition, parsed for assertions (the way ztunnel's test `ParsedMetrics`
//! does it): one series' value by name and exact labels, or a sum over a family filtered by
//! some labels. Comments (`# HELP`, `# TYPE`, `# EOF`) and lines that are not samples are
//! skipped: tests ask for the series they expect and get `None` or 0 when it is missing.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_sample).collect(),
        }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples of one family (exact name, e.g. `gateway_connections_opened_total`).
    pub fn family<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the series with exactly this name and exactly these labels (in any
    /// order); `&[]` is the unlabelled series.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.family(name)
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// The value of a series written as it is exposed, `name{a="b"}` or `name`.
    pub fn series(&self, series: &str) -> Option<f64> {
        let (name, labels) = parse_series(series)?;
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.value(&name, &labels)
    }

    /// Sum over the samples of `name` whose labels include every pair of `filter`; 0 when
    /// none match.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.family(name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .fold(0.0, |acc, s| acc + s.value)
    }
}

/// The value of one series (written as exposed, `name{a="b"}`) in a scrape; 0 when absent,
/// as counters that were never touched are.
pub fn series_value(text: &str, series: &str) -> f64 {
    Metrics::parse(text).series(series).unwrap_or(0.0)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = split_series(line)?;
    // After the series: the value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `name{...}` alone, with nothing after it.
fn parse_series(series: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (name, labels, rest) = split_series(series.trim())?;
    rest.trim().is_empty().then_some((name, labels))
}

/// Splits `name{labels} rest` into its parts; `rest` starts right after the series.
fn split_series(s: &str) -> Option<(String, BTreeMap<String, String>, &str)> {
    let end = s
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(s.len());
    let name = &s[..end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return None;
    }
    let rest = &s[end..];
    match rest.strip_prefix('{') {
        Some(inner) => {
            let (labels, after) = parse_labels(inner)?;
            Some((name.to_string(), labels, after))
        }
        None => Some((name.to_string(), BTreeMap::new(), rest)),
    }
}

/// Parses `a="x",b="y\"z"}` (the opening brace already consumed); returns the labels and
/// the text after the closing brace.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start().trim_start_matches(',').trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = s.split_once('=')?;
        let mut chars = after_key.trim_start().strip_prefix('"')?.char_indices();
        let body = &after_key.trim_start()[1..];
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = &body[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP gateway_connections_opened Connections routed.
# TYPE gateway_connections_opened counter
gateway_connections_opened_total{sni="outbound_.80_._.catalog.istioinaction.svc.cluster.local"} 3
gateway_connections_opened_total{sni="outbound_.80_._.simple-backend.istioinaction.svc.cluster.local"} 2
gateway_connections_rejected_total{reason="no_route"} 1
gateway_connections_rejected_total{reason="not_tls"} 0
gateway_upstream_connect_failures_total 4
gateway_upstream_connect_failures_total_extra 9
weird{path="a \"quoted\" \\ value",b="x"} 1.5 1700000000000
# EOF
"#;

    #[test]
    fn value_by_name_and_exact_labels() {
        let m = Metrics::parse(SCRAPE);
        let catalog = "outbound_.80_._.catalog.istioinaction.svc.cluster.local";
        assert_eq!(
            m.value("gateway_connections_opened_total", &[("sni", catalog)]),
            Some(3.0)
        );
        assert_eq!(
            m.value("gateway_upstream_connect_failures_total", &[]),
            Some(4.0)
        );
        // A labelled series is not the unlabelled one, and a missing label set is None.
        assert_eq!(m.value("gateway_connections_opened_total", &[]), None);
        assert_eq!(
            m.value(
                "gateway_connections_rejected_total",
                &[("reason", "bad_alpn")]
            ),
            None
        );
    }

    #[test]
    fn series_as_exposed_and_name_prefixes_do_not_match() {
        let m = Metrics::parse(SCRAPE);
        assert_eq!(
            m.series(r#"gateway_connections_rejected_total{reason="no_route"}"#),
            Some(1.0)
        );
        // `..._total` must not match `..._total_extra`, in either direction.
        assert_eq!(
            m.series("gateway_upstream_connect_failures_total"),
            Some(4.0)
        );
        assert_eq!(m.series("gateway_upstream_connect"), None);
        assert_eq!(
            series_value(
                SCRAPE,
                r#"gateway_connections_rejected_total{reason="nope"}"#
            ),
            0.0
        );
    }

    #[test]
    fn escapes_and_timestamps() {
        let m = Metrics::parse(SCRAPE);
        assert_eq!(
            m.value("weird", &[("b", "x"), ("path", r#"a "quoted" \ value"#)]),
            Some(1.5)
        );
        assert_eq!(m.samples().len(), 7);
    }

    #[test]
    fn sum_over_a_family_with_a_filter() {
        let m = Metrics::parse(SCRAPE);
        assert_eq!(m.sum("gateway_connections_opened_total", &[]), 5.0);
        assert_eq!(m.sum("gateway_connections_rejected_total", &[]), 1.0);
        assert_eq!(
            m.sum(
                "gateway_connections_rejected_total",
                &[("reason", "not_tls")]
            ),
            0.0
        );
        assert_eq!(m.sum("absent_total", &[]), 0.0);
        assert_eq!(m.family("gateway_connections_opened_total").count(), 2);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let m = Metrics::parse("not a sample\n{x=\"y\"} 1\nok 2\nbad{a=\"x} 3\nnan_value x\n");
        assert_eq!(m.samples().len(), 1);
        assert_eq!(m.series("ok"), Some(2.0));
    }
}
