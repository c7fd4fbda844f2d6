//! The crate's layers, checked on the source: every `crate::<module>` a file names must sit in a
//! lower layer than the file's own top-level module, so there is no import cycle between modules
//! and `sys` depends on nothing of the domain.
//!
//! ```text
//!   leaves (domain, alert_kind, chain, failback_guard, timing)  <-  sys  <-  config, status, cluster, metrics
//!     <-  alert  <-  web, storage  <-  farm, cli  <-  logging, error  <-  app  (<- main, the binary)
//! ```

use std::collections::BTreeSet;
use std::path::Path;

/// The layer of each top-level module: a module may only name modules of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("alert_kind", 0),
    ("chain", 0),
    ("failback_guard", 0),
    ("timing", 0),
    ("sys", 1),
    ("config", 2),
    ("status", 2),
    ("cluster", 2),
    ("metrics", 2),
    ("alert", 3),
    ("web", 4),
    ("storage", 4),
    ("farm", 5),
    ("cli", 5),
    ("logging", 6),
    ("error", 6),
    ("app", 7),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level modules named by `crate::x` and `crate::{x, y::z}` in `text`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                out.extend(first_ident(item.trim()));
            }
        } else {
            out.extend(first_ident(rest));
        }
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let id: String = s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!id.is_empty() && id != "self").then_some(id)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if matches!(top, "lib" | "main" | "layering_tests") {
            continue;
        }
        let Some(own) = layer(top) else {
            problems.push(format!("{}: module {top} has no layer in LAYERS", rel.display()));
            continue;
        };
        for m in named_modules(&std::fs::read_to_string(f).unwrap()) {
            match layer(&m) {
                _ if m == top => {}
                Some(l) if l < own => {}
                Some(_) => problems.push(format!("{}: {top} (layer {own}) uses crate::{m}", rel.display())),
                None => problems.push(format!("{}: crate::{m} has no layer in LAYERS", rel.display())),
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

#[test]
fn named_modules_reads_paths_and_groups() {
    let text = "use crate::alert::{AlertKind, Role};\nuse crate::{status, sys::fsutil};\nlet x = crate::chain::render_chain(&e);";
    let got: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(got, ["alert", "chain", "status", "sys"]);
}
