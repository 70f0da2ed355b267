//! The crate's modules form a layered graph: no module reaches itself through `crate::`
//! paths. A cycle means two concerns were not really separated (the token controller inside
//! the store once made `store` and `auth` import each other).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name → the sibling modules it depends on (comments skipped): those it names
/// through `crate::`, and those whose `impl Store` methods it calls. `Store`'s methods are
/// spread over several modules, so a call is a dependency a `use` line does not show.
fn crate_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).expect("read module"));
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let methods = store_methods(&files);
    files
        .iter()
        .map(|(name, text)| {
            let mut deps = BTreeSet::new();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (method, home) in &methods {
                    let called = ["self.", "store.", "Store::"]
                        .iter()
                        .any(|recv| line.contains(&format!("{recv}{method}(")));
                    if called && home != name {
                        deps.insert(home.clone());
                    }
                }
                for (i, _) in line.match_indices("crate::") {
                    let rest = &line[i + "crate::".len()..];
                    let inner = rest
                        .strip_prefix('{')
                        .map(|r| r.split('}').next().unwrap_or(""));
                    let paths: Vec<&str> = match inner {
                        Some(group) => group.split(',').collect(),
                        None => vec![rest],
                    };
                    for p in paths {
                        let first: String = p
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if modules.contains(&first) && first != *name {
                            deps.insert(first);
                        }
                    }
                }
            }
            (name.clone(), deps)
        })
        .collect()
}

/// Method name → the module of the `impl Store` block that defines it (names defined in more
/// than one module are left out).
fn store_methods(files: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut homes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in files {
        let mut in_impl = false;
        for line in text.lines() {
            if line.starts_with("impl Store {") {
                in_impl = true;
            } else if line == "}" {
                in_impl = false;
            } else if in_impl {
                let decl = line.trim_start();
                let decl = decl
                    .strip_prefix("pub(crate) ")
                    .or_else(|| decl.strip_prefix("pub "))
                    .unwrap_or(decl);
                if line.starts_with("    ")
                    && !line.starts_with("     ")
                    && let Some(rest) = decl.strip_prefix("fn ")
                {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    homes.entry(name).or_default().insert(module.clone());
                }
            }
        }
    }
    homes
        .into_iter()
        .filter(|(_, m)| m.len() == 1)
        .map(|(name, m)| (name, m.into_iter().next().unwrap()))
        .collect()
}

/// The first cycle found, as a path `a -> b -> ... -> a`.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(dep, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn cycle_finder_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn source_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = crate_imports(&src);
    assert!(graph.len() > 10, "read the modules of src/: {graph:?}");
    assert!(
        graph["http"].contains("store"),
        "the parser sees imports: {graph:?}"
    );
    assert!(
        graph["bootstrap"].contains("write"),
        "the parser sees calls of Store methods defined elsewhere: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}\ngraph: {graph:#?}", cycle.join(" -> "));
    }
}
