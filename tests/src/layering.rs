//! The layering check of `tests/it/layering.rs`, in the manner of rust-analyzer's tidy
//! tests: it reads every path into the crate (`crate::a::b`, `use crate::{a, b::c}`,
//! `super::`, `self::`, and a child or, in the crate root, a top-level module named bare)
//! from a crate's source files, builds the graph of modules, and reports every cycle and
//! every reference that does not go down the declared layers.
//!
//! Test code (`#[cfg(test)]` items and modules) is left out: it may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`""` for the crate root, else `a::b`) -> the module paths it refers to.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` (a library crate's `src/`; `main.rs` and `bin/`,
/// other crates, are skipped) into a module graph.
pub fn scan_dir(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    scan(&files)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "bin") {
                collect(root, &p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> =
                rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if parts == ["main"] {
                continue;
            }
            if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
                parts.pop();
            }
            out.push((parts.join("::"), std::fs::read_to_string(&p).unwrap()));
        }
    }
}

/// Builds the graph from (module path, source) pairs.
pub fn scan(files: &[(String, String)]) -> Graph {
    let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut tests = BTreeSet::new();
    let mut tokens = BTreeMap::new();
    for (module, src) in files {
        let (toks, test_mods) = tokenize(src);
        for t in test_mods {
            tests.insert(join(module, &t));
        }
        tokens.insert(module.clone(), toks);
    }
    let live = |m: &str| !tests.iter().any(|t| m == t || m.starts_with(&format!("{t}::")));
    // `pub use a::Item` in the root: `crate::Item` is a reference to `a`.
    let mut reexports = BTreeMap::new();
    if let Some(root) = tokens.get("") {
        for path in paths(root, "", &known) {
            if let [first, .., last] = path.as_slice()
                && first != "crate"
                && known.contains(first.as_str())
            {
                reexports.insert(last.clone(), resolve(&path, "", &known, &BTreeMap::new()));
            }
        }
    }
    let mut graph = Graph::new();
    for (module, toks) in &tokens {
        if !live(module) {
            continue;
        }
        let edges = graph.entry(module.clone()).or_default();
        for path in paths(toks, module, &known) {
            let target = resolve(&path, module, &known, &reexports);
            if target != *module && live(&target) {
                edges.insert(target);
            }
        }
    }
    graph
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}::{child}") }
}

fn parent(module: &str) -> String {
    module.rsplit_once("::").map(|(p, _)| p.to_owned()).unwrap_or_default()
}

/// The module a path (as written in `module`) ends in: the longest module prefix.
fn resolve(
    path: &[String],
    module: &str,
    known: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> String {
    let mut at = module.to_owned();
    let mut rest = path;
    match path[0].as_str() {
        "crate" => {
            at = String::new();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        _ => {}
    }
    while rest.first().is_some_and(|s| s == "super") {
        at = parent(&at);
        rest = &rest[1..];
    }
    for seg in rest {
        let next = join(&at, seg);
        if known.contains(&next) {
            at = next;
        } else {
            if at.is_empty()
                && let Some(m) = reexports.get(seg)
            {
                return m.clone();
            }
            break;
        }
    }
    at
}

/// The paths into the crate written in a module: each as its segments, with `use`
/// groups expanded (`crate::{a, b::c}` gives `crate::a` and `crate::b::c`).
fn paths(toks: &[String], module: &str, known: &BTreeSet<String>) -> Vec<Vec<String>> {
    let child = |name: &str| known.contains(&join(module, name));
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let starts = (t == "crate" || t == "super" || t == "self" || child(t))
            && toks.get(i + 1).is_some_and(|n| n == "::")
            && (i == 0 || toks[i - 1] != "::");
        if starts {
            i = tree(toks, i, vec![], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a use tree from `toks[i]`, appending its paths (prefixed) to `out`; returns the
/// index after it.
fn tree(
    toks: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                loop {
                    match toks.get(i).map(String::as_str) {
                        Some("}") | None => return i + 1,
                        Some(",") => i += 1,
                        _ => i = tree(toks, i, prefix.clone(), out),
                    }
                }
            }
            Some("self") if !prefix.is_empty() => {
                out.push(prefix);
                return i + 1;
            }
            Some(t) if is_ident(t) => {
                prefix.push(t.to_owned());
                if toks.get(i + 1).is_some_and(|n| n == "::") {
                    i += 2;
                } else {
                    out.push(prefix);
                    return i + 1;
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return i;
            }
        }
    }
}

fn is_ident(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and punctuation of `src` without comments, literals and
/// `#[cfg(test)]` items; also the names of the `#[cfg(test)] mod name;` files.
fn tokenize(src: &str) -> (Vec<String>, Vec<String>) {
    let b = src.as_bytes();
    let mut toks: Vec<String> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' || ((c == b'r' || c == b'b') && raw_start(b, i).is_some()) {
            i = skip_string(b, i);
            toks.push("\"\"".into());
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else {
                let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + len) == Some(&b'\'') {
                    i += 2 + len;
                } else {
                    i += 1;
                }
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            toks.push(src[start..i].to_owned());
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            toks.push("::".into());
            i += 2;
        } else if c.is_ascii_whitespace() || !c.is_ascii() {
            i += 1;
        } else {
            toks.push((c as char).to_string());
            i += 1;
        }
    }
    strip_tests(toks)
}

/// `Some(index of the opening quote)` if a raw or byte string starts at `i`.
fn raw_start(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b[j] == b'b' {
        j += 1;
    }
    if b.get(j) == Some(&b'r') {
        j += 1;
    }
    while b.get(j) == Some(&b'#') {
        j += 1;
    }
    (j > i && b.get(j) == Some(&b'"')).then_some(j)
}

fn skip_string(b: &[u8], i: usize) -> usize {
    let open = if b[i] == b'"' { i } else { raw_start(b, i).unwrap() };
    let raw = b[i..open].contains(&b'r');
    let hashes = b[i..open].iter().filter(|&&c| c == b'#').count();
    let mut j = open + 1;
    while j < b.len() {
        if !raw && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == b'"' && b[j + 1..].iter().take(hashes).filter(|&&c| c == b'#').count() == hashes
        {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}

/// Drops each item after `# [ cfg ( test ) ]`; returns the rest and the names of
/// `mod name;` items dropped so.
fn strip_tests(toks: Vec<String>) -> (Vec<String>, Vec<String>) {
    const ATTR: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(toks.len());
    let mut mods = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks.len() >= i + ATTR.len()
            && toks[i..i + ATTR.len()].iter().zip(ATTR).all(|(a, b)| a == b)
        {
            i += ATTR.len();
            let start = i;
            let mut depth = 0usize;
            while i < toks.len() {
                match toks[i].as_str() {
                    "{" => depth += 1,
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    ";" if depth == 0 => {
                        let item = &toks[start..i];
                        if let Some(p) = item.iter().position(|t| t == "mod") {
                            mods.push(item[p + 1].clone());
                        }
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    (out, mods)
}

/// The layers, top first: each a name and the modules on it. A module is placed by the
/// longest entry that is it or one of its ancestors (`files` places `files::send`, and
/// `files::store` may have its own entry). `""` is the crate root.
pub type Layers<'a> = &'a [(&'a str, &'a [&'a str])];

/// Every problem with `graph` against `layers`: modules without a layer, entries that
/// name no module, cycles, and references that do not go to a lower layer.
pub fn check(graph: &Graph, layers: Layers<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rank = BTreeMap::new();
    for (i, (_, mods)) in layers.iter().enumerate() {
        for m in *mods {
            rank.insert(*m, layers.len() - i);
        }
    }
    for m in rank.keys() {
        if !graph.keys().any(|g| g == m || g.starts_with(&format!("{m}::"))) {
            problems.push(format!("the layer table names `{m}`, which is no module"));
        }
    }
    let place = |m: &str| -> Option<&str> {
        rank.keys()
            .filter(|e| m == **e || (!e.is_empty() && m.starts_with(&format!("{e}::"))))
            .max_by_key(|e| e.len())
            .copied()
    };
    // The graph between table entries.
    let mut entries: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut why: BTreeMap<(&str, &str), (&str, &str)> = BTreeMap::new();
    for (from, tos) in graph {
        let Some(a) = place(from) else {
            problems.push(format!(
                "module `{from}` has no layer: add it to the table in the layering test"
            ));
            continue;
        };
        entries.entry(a).or_default();
        for to in tos {
            let Some(b) = place(to) else { continue };
            if a != b {
                entries.entry(a).or_default().insert(b);
                why.entry((a, b)).or_insert((from, to));
            }
        }
    }
    for (a, bs) in &entries {
        for b in bs {
            if rank[a] <= rank[b] {
                let (from, to) = why[&(*a, *b)];
                let layer = |m: &str| layers[layers.len() - rank[m]].0;
                problems.push(format!(
                    "`{from}` uses `{to}`, but `{a}` (layer {}) may only use layers below it \
                     (`{b}` is on layer {})",
                    layer(a),
                    layer(b)
                ));
            }
        }
    }
    for cycle in cycles(&entries) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// One cycle through each strongly connected set of nodes, as a path that returns to its
/// start.
pub fn cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    for &start in graph.keys() {
        if done.contains(start) {
            continue;
        }
        // Depth-first, with the current path on a stack.
        let mut path: Vec<&str> = vec![start];
        let mut iters = vec![graph[start].iter()];
        let mut on_path: BTreeSet<&str> = BTreeSet::from([start]);
        while let Some(it) = iters.last_mut() {
            match it.next() {
                Some(&next) if on_path.contains(next) => {
                    let at = path.iter().position(|m| *m == next).unwrap();
                    let mut c = path[at..].to_vec();
                    c.push(next);
                    if !found.iter().any(|f: &Vec<&str>| {
                        let mut a = f[..f.len() - 1].to_vec();
                        let mut b = c[..c.len() - 1].to_vec();
                        a.sort_unstable();
                        b.sort_unstable();
                        a == b
                    }) {
                        found.push(c);
                    }
                }
                Some(&next) if !done.contains(next) && graph.contains_key(next) => {
                    path.push(next);
                    on_path.insert(next);
                    iters.push(graph[next].iter());
                }
                Some(_) => {}
                None => {
                    iters.pop();
                    let m = path.pop().unwrap();
                    on_path.remove(m);
                    done.insert(m);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself: paths read, cycles and upward uses found.
    #[test]
    fn checker_finds_cycles_and_upward_uses() {
        let files = |fs: &[(&str, &str)]| {
            fs.iter().map(|(m, s)| ((*m).to_owned(), (*s).to_owned())).collect::<Vec<_>>()
        };
        let g = scan(&files(&[
            ("", "pub mod a; pub mod b; pub mod c; pub use c::Thing; fn f() { a::go(); }"),
            ("a", "use crate::{b, c::{self, d::Deep}};\nmod x;"),
            (
                "a::x",
                "use super::super::c::Thing; // crate::b::nothing\n fn f() { let s = \"crate::b\"; }",
            ),
            ("b", "fn f() -> crate::Thing { todo!() }\n#[cfg(test)]\nmod tests { use crate::a; }"),
            ("c", "pub struct Thing; pub mod d; fn f<'a>(x: &'a str) -> char { 'a' }"),
            ("c::d", "pub struct Deep; fn f() { self::super::Thing; }"),
        ]));
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(g[""], set(&["a", "c"]), "the root names its modules bare");
        assert_eq!(g["a"], set(&["b", "c", "c::d"]), "use groups, self and nested paths");
        assert_eq!(g["a::x"], set(&["c"]), "super::super, comments and strings");
        assert_eq!(g["b"], set(&["c"]), "root re-exports resolved; test modules left out");
        assert_eq!(g["c::d"], set(&["c"]), "self::super");

        let fine: Layers<'_> =
            &[("root", &[""]), ("top", &["a"]), ("mid", &["b"]), ("low", &["c"])];
        assert_eq!(check(&g, fine), Vec::<String>::new());

        // b -> a closes a -> b -> a: both a cycle and an upward reference.
        let mut bad = g.clone();
        bad.get_mut("b").unwrap().insert("a".into());
        let problems = check(&bad, fine);
        assert!(
            problems.iter().any(|p| p.starts_with("import cycle: a -> b -> a")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("`b` uses `a`")), "{problems:?}");
        // A longer cycle through a nested module, with everything on one layer: the
        // layering complains of each edge, the cycle check names the circle.
        let mut ring = g.clone();
        ring.get_mut("c::d").unwrap().insert("a::x".into());
        let flat: Layers<'_> = &[("all", &["", "a", "b", "c"])];
        let problems = check(&ring, flat);
        assert!(
            problems.iter().any(|p| p.starts_with("import cycle: a -> ") && p.ends_with("c -> a")),
            "{problems:?}"
        );
        // A module missing from the table, and a table entry that names nothing.
        let partial: Layers<'_> = &[("root", &[""]), ("top", &["a", "gone"]), ("low", &["c"])];
        let problems = check(&g, partial);
        assert!(problems.iter().any(|p| p.contains("module `b` has no layer")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`gone`, which is no module")), "{problems:?}");
    }
}
