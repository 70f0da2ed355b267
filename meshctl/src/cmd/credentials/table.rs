//! The human tables of `credentials status` and `refresh`: aligned columns, no tokens.

use super::Row;
use super::refresh::Outcome;

/// Left-aligned columns, two spaces apart.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn status(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no remote secrets found\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.stored_in.clone(),
                r.secret.clone(),
                match &r.reads_context {
                    Some(c) if *c != r.cluster => format!("{} (context {c})", r.cluster),
                    _ => r.cluster.clone(),
                },
                r.server.clone(),
                r.method.clone(),
                r.expires.clone().unwrap_or_else(|| "-".into()),
                r.remaining.clone(),
            ]
        })
        .collect();
    render(
        &[
            "STORED IN",
            "SECRET",
            "READS CLUSTER",
            "SERVER",
            "CREDENTIAL",
            "EXPIRES",
            "REMAINING",
        ],
        &cells,
    )
}

pub fn refresh(outcomes: &[Outcome]) -> String {
    if outcomes.is_empty() {
        return "no remote secrets found\n".into();
    }
    let cells: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.stored_in.clone(),
                o.secret.clone(),
                o.cluster.clone(),
                o.action.to_string(),
                o.reason.clone(),
            ]
        })
        .collect();
    render(
        &["STORED IN", "SECRET", "READS CLUSTER", "ACTION", "WHY"],
        &cells,
    )
}
