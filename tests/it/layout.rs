//! The module layout's rules, checked on the source: data flows one way
//! (HTTP → core → model), `model/` imports nothing else of the crate, the
//! server and the core never reach training code, and no two files import
//! each other, directly or around a loop. Regression test for the cycles
//! `state → auth → state` and `state → replay → state` of the old server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, by module path (`infer::sessions::store`).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|p| !p.ends_with("main.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .collect()
}

/// The module a path names: its longest prefix that is a file.
fn resolve(mods: &BTreeMap<String, PathBuf>, segs: &[String]) -> Option<String> {
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

/// The paths a file imports (re-exports with `pub use` and `mod` lines are
/// not imports), made absolute from `crate`, `super` or `self`.
fn imports(module: &str, text: &str) -> Vec<Vec<String>> {
    let here: Vec<String> = module.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with("pub use"))
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b'$') {
                continue;
            }
            let mut base: Vec<String> = match start {
                "crate::" => vec![],
                "super::" => here[..here.len().saturating_sub(1)].to_vec(),
                _ => here.clone(),
            };
            let rest = &code[from..];
            let end = rest
                .find(|c: char| {
                    !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{' || c == ',' || c == ' ' || c == '\n')
                })
                .unwrap_or(rest.len());
            let path = &rest[..end];
            let (prefix, group) = match path.find('{') {
                Some(b) => (&path[..b], path[b + 1..].split([',', '}']).collect::<Vec<_>>()),
                None => (path, vec![""]),
            };
            base.extend(
                prefix
                    .split("::")
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
            for g in group {
                let mut p = base.clone();
                p.extend(
                    g.split("::")
                        .map(str::trim)
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(String::from),
                );
                out.push(p);
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in &mods {
        let text = std::fs::read_to_string(path).unwrap();
        // A file's unit tests (`mod tests` with `use super::*`) are not its imports.
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default()
            .to_string();
        let entry = g.entry(m.clone()).or_default();
        let mut paths = imports(m, &text);
        // A parent names its children without a prefix (`metrics::handle()`).
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("pub use"))
            .collect();
        for child in mods
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{m}::")).filter(|c| !c.contains("::")))
        {
            let needle = format!("{child}::");
            let named = code.match_indices(&needle).any(|(i, _)| {
                i == 0 || !code.as_bytes()[i - 1].is_ascii_alphanumeric() && !b":_".contains(&code.as_bytes()[i - 1])
            });
            if named {
                paths.push(format!("{m}::{child}").split("::").map(String::from).collect());
            }
        }
        for p in paths {
            if let Some(t) = resolve(&mods, &p) {
                if &t != m {
                    entry.insert(t);
                }
            }
        }
    }
    g
}

#[test]
fn model_imports_nothing_else_of_the_crate() {
    for (m, deps) in graph() {
        if m == "model" || m.starts_with("model::") {
            let bad: Vec<_> = deps
                .iter()
                .filter(|d| !(*d == "model" || d.starts_with("model::")))
                .collect();
            assert!(bad.is_empty(), "{m} imports {bad:?}");
        }
    }
}

#[test]
fn serving_never_reaches_training_and_the_core_knows_no_http() {
    let training = ["metasgd", "tasks", "eval", "bench"];
    let g = graph();
    for (m, deps) in &g {
        let top = m.split("::").next().unwrap_or("");
        if top != "server" && top != "infer" {
            continue;
        }
        for d in deps {
            let dtop = d.split("::").next().unwrap_or("");
            assert!(!training.contains(&dtop), "{m} imports training code {d}");
            assert!(
                !(top == "infer" && dtop == "server"),
                "the core {m} imports the server's {d}"
            );
        }
    }
    let core_text: String = modules()
        .iter()
        .filter(|(m, _)| m.starts_with("infer"))
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .collect();
    for http in ["axum", "hyper", "StatusCode", "tower"] {
        assert!(!core_text.contains(http), "the core mentions {http}");
    }
}

/// Regression test for `tasks/*` importing `Episode` back from
/// `metasgd::meta`: training's imports go one way, the run code (`metasgd`)
/// → task families and evaluation (`tasks`, `eval`) → `model`.
#[test]
fn training_imports_go_one_way() {
    for (m, deps) in graph() {
        let top = m.split("::").next().unwrap_or("");
        if top != "tasks" && top != "eval" {
            continue;
        }
        for d in deps {
            let dtop = d.split("::").next().unwrap_or("");
            assert!(dtop != "metasgd", "{m} imports the training loop's {d}");
        }
    }
}

#[test]
fn no_import_cycles() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Vec<String> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        let mut found = Vec::new();
        for d in g.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(d.clone());
                    found.push(cycle.join(" → "));
                }
                0 => found.extend(visit(d, g, state, stack)),
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        found
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            cycles.extend(visit(n, &g, &mut state, &mut Vec::new()));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    assert!(g.len() > 40, "the walk found {} modules", g.len());
}
