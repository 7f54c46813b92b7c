//! Reading a `/metrics` text (OpenMetrics): the samples a selector names, by exact name and
//! label values, PromQL-style (`name` or `name{label="value",…}`; labels not given are summed
//! over). A name that is no sample of any metric panics instead of reading as 0 or as the sum of
//! other metrics that share its prefix.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

type Labels = Vec<(String, String)>;

/// The sum of the samples `selector` names.
pub fn sum(text: &str, selector: &str) -> f64 {
    let (name, wanted) = match selector.split_once('{') {
        None => (selector, Vec::new()),
        Some((name, rest)) => match parse_labels(rest) {
            Some((labels, "")) => (name, labels),
            _ => panic!("bad metric selector {selector:?}: write name{{label=\"value\",…}}"),
        },
    };
    check_name(text, name);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(n, labels, _)| *n == name && wanted.iter().all(|w| labels.iter().any(|l| l == w)))
        .map(|(_, _, value)| value)
        .sum()
}

/// `name{labels} value` or `name value` (a timestamp after the value is ignored).
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let end = line.find(['{', ' '])?;
    let (name, rest) = line.split_at(end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(rest) => parse_labels(rest)?,
        None => (Vec::new(), rest),
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// `a="x",b="y"}` and what follows the `}`; values unescaped (`\"`, `\\`, `\n`).
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = Vec::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &rest[close + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// The sample names each OpenMetrics type has, after its family's name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
        "summary" => &["", "_sum", "_count", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Panic unless `name` is a sample name of a metric: of a family in the text (by its type), or,
/// for a family the text does not show (a labelled one with no series yet), of a family the
/// server registers.
fn check_name(text: &str, name: &str) {
    let families: Vec<(&str, &str)> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
    let sample_of = |(family, kind): &(&str, &str)| {
        name.strip_prefix(family).is_some_and(|rest| suffixes(kind).contains(&rest))
    };
    if families.iter().any(sample_of) {
        return;
    }
    // The families `name` could belong to: itself, or itself less a sample suffix.
    let candidates: Vec<&str> = std::iter::once(name)
        .chain(["_total", "_bucket", "_sum", "_count"].iter().filter_map(|s| name.strip_suffix(s)))
        .collect();
    let shown: Vec<String> = families
        .iter()
        .filter(|(family, _)| candidates.contains(family))
        .flat_map(|(family, kind)| suffixes(kind).iter().map(move |s| format!("{family}{s}")))
        .collect();
    if shown.is_empty() && candidates.iter().any(|c| registered().contains(*c)) {
        return;
    }
    panic!(
        "no metric sample is named {name:?}{}; give a sample's exact name (a counter's ends in \
         _total; a histogram's in _bucket, _sum or _count)",
        match shown.is_empty() {
            true => String::new(),
            false => format!(" (its family's samples: {shown:?})"),
        }
    );
}

/// The metric families tether-server registers: the string after each `.register(` in its
/// source.
pub fn registered() -> &'static BTreeSet<String> {
    static NAMES: OnceLock<BTreeSet<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = BTreeSet::new();
        let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tether-server/src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let source = std::fs::read_to_string(&path).unwrap();
                for call in source.split(".register(").skip(1) {
                    if let Some(name) =
                        call.trim_start().strip_prefix('"').and_then(|c| c.split('"').next())
                    {
                        names.insert(name.to_owned());
                    }
                }
            }
        }
        assert!(
            names.contains("tether_connections_open"),
            "no metric found in tether-server's source"
        );
        names
    })
}
