//! The router's layers, checked: each top-level module of `src/` belongs to one layer
//! and may import (`crate::...`) only modules of its own layer or below, and the
//! modules' imports form no loop; inside a module, its files' imports of each other
//! (`super::name`, `crate::module::name`) form no loop either. A new module must be
//! given a layer here; an import that breaks the rule fails this test with the file
//! that makes it. The other crates of the workspace are held to the same rule for
//! loops.
//!
//! Layers, bottom to top (see ARCHITECTURE.md):
//!
//! 1. facts every layer may use: `clock`, `identity`, `config`, `metrics`, `tls`, `answer`
//!    (and `testkv`, the unit tests' store)
//! 2. decisions, pure over a snapshot: `herd`, `schedule`
//! 3. the fleet as the router believes it: `membership`, `peers`, `lag`, `alarms`, `guard`,
//!    `policy`, `feedback`, `state`, `explain`
//! 4. edges: `http`, `dns`, `admin`, `ops`, `ctl`
//! 5. the binary's glue and tools: `lib` (the crate root), `reload`, `demo`, `sim`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u8)] = &[
    ("clock", 1),
    ("identity", 1),
    ("config", 1),
    ("metrics", 1),
    ("tls", 1),
    ("answer", 1),
    ("testkv", 1),
    ("herd", 2),
    ("schedule", 2),
    ("membership", 3),
    ("peers", 3),
    ("lag", 3),
    ("alarms", 3),
    ("guard", 3),
    ("policy", 3),
    ("feedback", 3),
    ("state", 3),
    ("explain", 3),
    ("http", 4),
    ("dns", 4),
    ("admin", 4),
    ("ops", 4),
    ("ctl", 4),
    ("lib", 5),
    ("demo", 5),
    ("reload", 5),
    ("sim", 5),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its test module (tests may reach
/// anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names the crate root re-exports and the module each comes from
/// (`pub use module::{A, B};` in `lib.rs`), so an import through the root
/// (`crate::A`) counts as an import of that module.
fn root_exports(src: &Path) -> BTreeMap<String, String> {
    let lib = code(&std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default());
    let mut out = BTreeMap::new();
    for (i, _) in lib.match_indices("pub use ") {
        let rest = &lib[i + "pub use ".len()..];
        let stmt = &rest[..rest.find(';').unwrap_or(rest.len())];
        let stmt = stmt.trim_start_matches("crate::");
        let module: String = stmt
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let names = match stmt.find('{') {
            Some(b) => &stmt[b + 1..],
            None => stmt.rsplit("::").next().unwrap_or(""),
        };
        for name in names.split([',', '}', ' ', '\n']) {
            let name = name.rsplit("::").next().unwrap_or("").trim();
            if name.chars().next().is_some_and(char::is_uppercase) {
                out.insert(name.to_string(), module.clone());
            }
        }
    }
    out
}

/// The modules named by the path after one `crate::`: `a::B` names `a`; `{a::B, C}`
/// names `a` and the module the root re-exports `C` from; `C` alone, that module.
fn named_modules(after: &str, exports: &BTreeMap<String, String>) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let one = |item: &str| -> Option<String> {
        let first = ident(item);
        if first.chars().next()?.is_lowercase() {
            Some(first)
        } else {
            exports.get(&first).cloned()
        }
    };
    match after.strip_prefix('{') {
        Some(list) => list[..list.find('}').unwrap_or(list.len())]
            .split(',')
            .filter_map(one)
            .collect(),
        None => one(after).into_iter().collect(),
    }
}

/// The top-level modules each top-level module imports, with a file that does.
/// Imports through the crate root's re-exports count as imports of the module the
/// name comes from; a `pub use` (a re-export that gives a name a public path) does
/// not count.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let exports = root_exports(src);
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "bin" {
            // A binary: a crate of its own over the library.
            continue;
        }
        let text: String = code(&std::fs::read_to_string(&file).unwrap())
            .lines()
            .filter(|l| !l.trim_start().starts_with("pub use "))
            .collect::<Vec<_>>()
            .join("\n");
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            for name in named_modules(&text[i + "crate::".len()..], &exports) {
                if name != top && !name.is_empty() {
                    deps.entry(name).or_insert_with(|| rel.to_path_buf());
                }
            }
        }
    }
    graph
}

/// Loops in a module graph: a depth-first walk, each loop named once.
fn loops(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Vec<String> {
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeMap<String, PathBuf>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        loops: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m);
            loops.push(cycle.join(" -> "));
            return;
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for dep in graph.get(m).into_iter().flat_map(|d| d.keys()) {
            if graph.contains_key(dep) {
                visit(dep, graph, path, done, loops);
            }
        }
        path.pop();
    }
    let mut loops = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, graph, &mut Vec::new(), &mut done, &mut loops);
    }
    loops
        .into_iter()
        .map(|l| format!("import loop: {l}"))
        .collect()
}

/// What breaks the rules in `graph`: a module without a layer, an import up a layer,
/// a loop.
fn problems(graph: &BTreeMap<String, BTreeMap<String, PathBuf>>) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for (module, deps) in graph {
        let Some(&own) = layer.get(module.as_str()) else {
            problems.push(format!(
                "module `{module}` has no layer: add it to LAYERS in {}",
                file!()
            ));
            continue;
        };
        for (dep, file) in deps {
            match layer.get(dep.as_str()) {
                Some(&l) if l > own => problems.push(format!(
                    "{}: `{module}` (layer {own}) imports `{dep}` (layer {l})",
                    file.display()
                )),
                Some(_) => {}
                None if graph.contains_key(dep) => problems.push(format!(
                    "module `{dep}` has no layer: add it to LAYERS in {}",
                    file!()
                )),
                // Not a module (a macro or a type at the root).
                None => {}
            }
        }
    }
    problems.extend(loops(graph));
    problems
}

/// Loops between the files of one folder: each file (not `mod.rs`, which declares
/// them all) against the sibling files and folders it imports through `super::NAME`
/// or `crate::PATH::NAME`.
fn file_loops(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let dir = file.parent().unwrap();
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        if name == "mod" || name == "lib" || name == "main" || dir == src {
            continue;
        }
        let module_path = dir
            .strip_prefix(src)
            .unwrap()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().to_string())
            .collect::<Vec<_>>()
            .join("::");
        let text = code(&std::fs::read_to_string(file).unwrap());
        let own = dir.join(&name);
        let deps = graph.entry(own.clone()).or_default();
        for prefix in ["super::".to_string(), format!("crate::{module_path}::")] {
            for (i, _) in text.match_indices(&prefix) {
                if prefix == "super::" && i > 0 && text[..i].ends_with("::") {
                    continue; // `super::super::...`, or a longer path
                }
                let sibling: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let target = dir.join(&sibling);
                let exists = target.with_extension("rs").is_file() || target.is_dir();
                if exists && target != own {
                    deps.insert(target);
                }
            }
        }
    }
    // Any cycle, by a depth-first walk; each is reported once, from its least file.
    fn walk<'a>(
        f: &'a PathBuf,
        graph: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<&'a PathBuf>,
        done: &mut BTreeSet<&'a PathBuf>,
        found: &mut Vec<Vec<&'a PathBuf>>,
    ) {
        if let Some(i) = path.iter().position(|p| *p == f) {
            found.push(path[i..].to_vec());
            return;
        }
        if !done.insert(f) {
            return;
        }
        path.push(f);
        for dep in graph.get(f).into_iter().flatten() {
            walk(dep, graph, path, done, found);
        }
        path.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for f in graph.keys() {
        walk(f, &graph, &mut Vec::new(), &mut done, &mut found);
    }
    let show = |p: &PathBuf| p.strip_prefix(src).unwrap().display().to_string();
    let mut loops = Vec::new();
    for cycle in found {
        let names: Vec<String> = cycle.iter().map(|p| show(p)).collect();
        loops.push(format!(
            "import loop between files: {} -> {}",
            names.join(" -> "),
            names[0]
        ));
    }
    loops
}

#[test]
fn the_files_of_a_module_import_each_other_in_one_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let loops = file_loops(&src);
    assert!(loops.is_empty(), "{}", loops.join("\n"));
}

#[test]
fn the_file_check_finds_two_files_importing_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("http")).unwrap();
    std::fs::write(src.join("http/mod.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("http/a.rs"), "use super::b::B;\n").unwrap();
    std::fs::write(src.join("http/b.rs"), "use crate::http::a::A;\n").unwrap();
    std::fs::write(src.join("http/c.rs"), "use super::a::A;\n").unwrap();
    assert_eq!(
        file_loops(src),
        ["import loop between files: http/a -> http/b -> http/a"]
    );
}

#[test]
fn no_import_reaches_up_a_layer_or_closes_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    let problems = problems(&graph);
    assert!(
        problems.is_empty(),
        "the router's layers are broken:\n{}",
        problems.join("\n")
    );
    // The check sees the real graph: the edges layer 4 is built on are there.
    assert!(graph["http"].contains_key("schedule"));
    assert!(graph["dns"].contains_key("guard"));
}

#[test]
fn the_check_finds_an_upward_import_and_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("config.rs"), "use crate::http::ApiError;\n").unwrap();
    std::fs::create_dir(src.join("http")).unwrap();
    std::fs::write(
        src.join("http/mod.rs"),
        "// crate::state in a comment does not count\nuse crate::config::FileConfig;\n#[cfg(test)]\nmod tests { use crate::sim; }\n",
    )
    .unwrap();
    std::fs::write(src.join("brand_new.rs"), "").unwrap();
    let graph = imports(src);
    assert_eq!(graph["config"].keys().collect::<Vec<_>>(), ["http"]);
    assert_eq!(graph["http"].keys().collect::<Vec<_>>(), ["config"]);
    let found = problems(&graph);
    assert!(
        found
            .iter()
            .any(|p| p.contains("`config` (layer 1) imports `http` (layer 4)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("import loop: ")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("module `brand_new` has no layer")),
        "{found:?}"
    );
}

/// The other crates have no layers table, but the same rule for loops: their
/// top-level modules, and the files inside each module, import each other in one
/// direction.
#[test]
fn the_other_crates_modules_import_each_other_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for krate in [
        "httpdns-client",
        "bindings",
        "gateway-agent",
        "registry",
        "gateway-api",
    ] {
        let src = root.join(krate).join("src");
        let graph = imports(&src);
        assert!(
            graph.len() > 1 || krate == "gateway-api",
            "{krate}: {graph:?}"
        );
        for p in loops(&graph).into_iter().chain(file_loops(&src)) {
            found.push(format!("{krate}: {p}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn an_import_through_the_crate_root_counts_and_a_re_export_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(
        src.join("lib.rs"),
        "mod client;\nmod connection;\npub use client::{Client,\n    Info};\npub use connection::Connection;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("client.rs"),
        "use crate::{Connection, error::E};\n",
    )
    .unwrap();
    std::fs::write(src.join("connection.rs"), "use crate::Info;\n").unwrap();
    std::fs::write(src.join("other.rs"), "pub use crate::client::Client;\n").unwrap();
    let graph = imports(src);
    assert_eq!(
        graph["client"].keys().collect::<Vec<_>>(),
        ["connection", "error"]
    );
    assert_eq!(graph["connection"].keys().collect::<Vec<_>>(), ["client"]);
    assert!(graph["other"].is_empty(), "a re-export is no import");
    assert_eq!(
        loops(&graph),
        ["import loop: client -> connection -> client"]
    );
}
