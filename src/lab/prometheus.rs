//! Reading the Prometheus text format a sidecar's `/metrics` serves, for
//! the demo's summary and the system tests' assertions. Only what those
//! need: sample lines, their labels and values.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} 12`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Every sample of the metric `name` in `text`; lines that do not parse are
/// skipped (a scrape is read for display, never trusted for control).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_line)
        .filter(|s| s.name == name)
        .collect()
}

/// The sum of `name`'s samples whose labels include every pair of `want`.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|s| want.iter().all(|(k, v)| s.label(k) == *v))
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (BTreeMap::new(), rest),
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        s = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP ward_authz_decisions_total Authorization decisions.
# TYPE ward_authz_decisions_total counter
ward_authz_decisions_total{decision="allow",direction="inbound",rule="web-reads-orders"} 3
ward_authz_decisions_total{decision="deny",direction="inbound",rule="default"} 1
ward_build_info{version="0.1.0"} 1
ward_odd{path="a \"quoted\" \\ value",x="1"} 2.5
ward_tcp_open_connections 4
garbage line
"#;

    #[test]
    fn reads_samples_and_labels() {
        let authz = samples(TEXT, "ward_authz_decisions_total");
        assert_eq!(authz.len(), 2);
        assert_eq!(authz[0].label("rule"), "web-reads-orders");
        assert_eq!(authz[0].value, 3.0);
        let odd = samples(TEXT, "ward_odd");
        assert_eq!(odd[0].label("path"), r#"a "quoted" \ value"#);
        assert_eq!(odd[0].label("x"), "1");
        assert_eq!(samples(TEXT, "ward_tcp_open_connections")[0].value, 4.0);
        assert!(samples(TEXT, "garbage").is_empty());
    }

    #[test]
    fn sums_matching_samples() {
        let name = "ward_authz_decisions_total";
        assert_eq!(sum(TEXT, name, &[]), 4.0);
        assert_eq!(sum(TEXT, name, &[("decision", "deny")]), 1.0);
        assert_eq!(
            sum(TEXT, name, &[("decision", "allow"), ("rule", "x")]),
            0.0
        );
    }
}
