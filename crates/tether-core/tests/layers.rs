//! Every crate's modules import only downward: each crate root (`lib.rs`, or `main.rs` for
//! the CLI) declares its layers in a `## Layers` section of its module docs, bottom up, and
//! this test reads every source file's `crate::…` paths and fails on one that names a module
//! of the same or a higher layer (which is how circles start), naming the file and the line.
//! Test modules (`#[cfg(test)] mod tests`, inline or in a `tests.rs`) may use anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const CRATES: &[(&str, &str)] = &[
    ("tether-core", "lib.rs"),
    ("tether-client", "lib.rs"),
    ("tether-server", "lib.rs"),
    ("tether-cli", "main.rs"),
];

/// The declared layers: module name → layer number, from the root's `## Layers` list.
fn declared(root: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(root).unwrap();
    let mut layers = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        let doc = doc.trim();
        if doc.starts_with("## ") {
            inside = doc == "## Layers";
            continue;
        }
        if !inside {
            continue;
        }
        let Some((number, rest)) = doc.split_once(". ") else { continue };
        let Ok(layer) = number.parse::<usize>() else { continue };
        for name in rest.split(',') {
            let name = name.trim().trim_matches('`');
            assert!(!name.is_empty(), "{}: an empty name in layer {layer}", root.display());
            layers.insert(name.to_owned(), layer);
        }
    }
    assert!(!layers.is_empty(), "{} declares no `## Layers` list", root.display());
    layers
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`hub/sweep.rs` → `hub`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// `(line number, module)` for every `crate::module` in code (not in comments), before the
/// file's test module.
fn imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String =
                after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `tether_core::…` and `$crate` are not this crate's paths.
            let before = &rest[..at];
            let foreign = before.ends_with('_') || before.ends_with('$');
            if !name.is_empty() && !foreign {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn modules_import_only_lower_layers() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut problems = Vec::new();
    for (krate, root) in CRATES {
        let src = workspace.join(krate).join("src");
        let layers = declared(&src.join(root));
        let mut files = Vec::new();
        sources(&src, &mut files);
        files.sort();
        for file in files {
            let module = module_of(&src, &file);
            if format!("{module}.rs") == *root {
                continue; // the root declares and re-exports
            }
            if file.file_name().is_some_and(|name| name == "tests.rs") {
                continue; // a test module in a file of its own
            }
            let shown = file.strip_prefix(&workspace).unwrap().display().to_string();
            let Some(&own) = layers.get(&module) else {
                problems
                    .push(format!("{shown}: module `{module}` is in no layer of {krate}'s {root}"));
                continue;
            };
            let text = std::fs::read_to_string(&file).unwrap();
            for (line, target) in imports(&text) {
                if target == module {
                    continue;
                }
                match layers.get(&target) {
                    Some(&theirs) if theirs < own => {}
                    Some(&theirs) => problems.push(format!(
                        "{shown}:{line}: `{module}` (layer {own}) imports `{target}` (layer {theirs}): \
                         only lower layers may be imported"
                    )),
                    None => problems.push(format!(
                        "{shown}:{line}: imports `{target}`, which is in no layer of {krate}'s {root}"
                    )),
                }
            }
        }
    }
    assert!(problems.is_empty(), "imports against the declared layers:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_what_it_must() {
    let text = "use crate::hub::Hub;\nlet x = tether_core::codec::x; // crate::ignored\n\
                fn f() { crate::stats::g(crate::mailbox::h) }\n#[cfg(test)]\nuse crate::late;";
    let found: Vec<String> = imports(text).into_iter().map(|(n, m)| format!("{n}:{m}")).collect();
    assert_eq!(found, ["1:hub", "3:stats", "3:mailbox"]);
}
