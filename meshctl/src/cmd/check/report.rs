//! What `check` prints: the items (scope, check, status, detail, hint), collected in order,
//! rendered as the human checklist or as JSON. No judging and no I/O here.

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run: it needs data from a cluster meshctl cannot read (the detail says why).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `cluster <ctx>`, `secret for <A> in <B>`, or `mesh`.
    pub scope: String,
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The items so far; a hint is kept only on what did not pass.
#[derive(Debug, Default)]
pub struct Report {
    pub items: Vec<Item>,
}

impl Report {
    fn add(
        &mut self,
        scope: &str,
        check: &str,
        status: Status,
        detail: impl Into<String>,
        hint: Option<String>,
    ) {
        self.items.push(Item {
            scope: scope.into(),
            check: check.into(),
            status,
            detail: detail.into(),
            hint: if status == Status::Pass { None } else { hint },
        });
    }
    pub fn pass(&mut self, scope: &str, check: &str, detail: impl Into<String>) {
        self.add(scope, check, Status::Pass, detail, None);
    }
    pub fn fail(
        &mut self,
        scope: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(scope, check, Status::Fail, detail, Some(hint.into()));
    }
    pub fn skip(&mut self, scope: &str, check: &str, reason: impl Into<String>) {
        self.add(scope, check, Status::Skip, reason, None);
    }
    pub fn warn(
        &mut self,
        scope: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(scope, check, Status::Warn, detail, Some(hint.into()));
    }
    pub fn failed(&self) -> usize {
        self.items
            .iter()
            .filter(|i| i.status == Status::Fail)
            .count()
    }
}

/// `{"ok": .., "checks": [..]}` for `-o json`.
pub fn render_json(items: &[Item]) -> Result<String> {
    Ok(serde_json::to_string_pretty(&document(items))?)
}

/// The same document for `-o yaml`.
pub fn render_yaml(items: &[Item]) -> Result<String> {
    Ok(serde_yaml::to_string(&document(items))?)
}

fn document(items: &[Item]) -> serde_json::Value {
    let ok = !items.iter().any(|i| i.status == Status::Fail);
    json!({"ok": ok, "checks": items})
}

/// The human checklist: ✔ pass, ! warning, ✘ failure (with its hint), - skipped (with why).
pub fn render_text(items: &[Item]) -> String {
    let mut out = String::new();
    let mut scope = "";
    // One block per scope, in the order scopes first appear (the checks of a scope are
    // added at several stages: the rotation and trust checks after the others).
    let mut order: Vec<&str> = Vec::new();
    for i in items {
        if !order.contains(&i.scope.as_str()) {
            order.push(&i.scope);
        }
    }
    let mut grouped: Vec<&Item> = items.iter().collect();
    grouped.sort_by_key(|i| order.iter().position(|s| *s == i.scope));
    for i in grouped {
        if i.scope != scope {
            scope = &i.scope;
            out.push_str(&format!("{scope}\n"));
        }
        let mark = match i.status {
            Status::Pass => "✔",
            Status::Warn => "!",
            Status::Fail => "✘",
            Status::Skip => "-",
        };
        if i.detail.is_empty() {
            out.push_str(&format!("  {mark} {}\n", i.check));
        } else {
            out.push_str(&format!("  {mark} {}: {}\n", i.check, i.detail));
        }
        if let Some(h) = &i.hint {
            out.push_str(&format!("      hint: {h}\n"));
        }
    }
    let count = |s| items.iter().filter(|i| i.status == s).count();
    out.push_str(&format!(
        "{} checks: {} passed, {} warnings, {} failed, {} skipped\n",
        items.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_only_on_what_did_not_pass_and_the_summary_counts() {
        let mut r = Report::default();
        r.pass("cluster west", "network label", "west-net");
        r.fail(
            "cluster west",
            "gateway pods ready",
            "0 of 1 ready",
            "describe",
        );
        r.warn("mesh", "token expiry", "expires in 2h", "renew");
        r.skip("mesh", "roots identical across clusters", "cannot compare");
        assert_eq!(r.failed(), 1);
        let text = render_text(&r.items);
        assert_eq!(
            text,
            "cluster west\n  ✔ network label: west-net\n  ✘ gateway pods ready: 0 of 1 ready\n      \
             hint: describe\nmesh\n  ! token expiry: expires in 2h\n      hint: renew\n  - roots \
             identical across clusters: cannot compare\n4 checks: 1 passed, 1 warnings, 1 failed, \
             1 skipped\n"
        );
        let v: serde_json::Value = serde_json::from_str(&render_json(&r.items).unwrap()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][1]["status"], "fail");
        assert!(v["checks"][0].get("hint").is_none());
        r.items.remove(1);
        let v: serde_json::Value = serde_json::from_str(&render_json(&r.items).unwrap()).unwrap();
        assert_eq!(v["ok"], true);
    }
}
