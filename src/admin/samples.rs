//! The metrics as numbers again: `/metrics`' text read back into samples, so that the
//! status page shows exactly what Prometheus scrapes, from one source.

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn matches(&self, name: &str, filter: &[(&str, &str)]) -> bool {
        self.name == name && filter.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// Every sample of one rendering.
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<Sample>);

impl Samples {
    /// Reads Prometheus' text format; lines it cannot read are skipped.
    pub(crate) fn parse(text: &str) -> Samples {
        Samples(text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(sample).collect())
    }

    /// The sum of `name`'s samples whose labels include `filter`.
    pub(crate) fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.0.iter().filter(|s| s.matches(name, filter)).fold(0.0, |sum, s| sum + s.value)
    }

    /// `name`'s samples matching `filter`, summed by the value of `label`, in order of
    /// first appearance.
    pub(crate) fn by(&self, name: &str, label: &str, filter: &[(&str, &str)]) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in self.0.iter().filter(|s| s.matches(name, filter)) {
            let key = s.label(label).unwrap_or("").to_string();
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v += s.value,
                None => out.push((key, s.value)),
            }
        }
        out
    }
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// `a="x",b="y \"q\""` into pairs.
fn labels(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if text.is_empty() {
            return Some(out);
        }
        let (key, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.to_string(), value));
        text = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP portcullis_connections_total Client connections
# TYPE portcullis_connections_total counter
portcullis_connections_total{listener="mx",verdict="accepted",rule="default"} 7
portcullis_connections_total{listener="mx",verdict="rejected",rule="a \"quoted\" rule"} 2
portcullis_connections_total{listener="sub",verdict="accepted",rule="default"} 1
portcullis_sessions_open 3
portcullis_backend_reply_seconds_sum{backend="127.0.0.1:25"} 0.5
portcullis_backend_reply_seconds_count{backend="127.0.0.1:25"} 4
"#;

    #[test]
    fn reads_back_what_the_recorder_renders() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.sum("portcullis_connections_total", &[("listener", "mx")]), 9.0);
        assert_eq!(s.sum("portcullis_connections_total", &[("verdict", "accepted")]), 8.0);
        assert_eq!(s.sum("portcullis_sessions_open", &[]), 3.0);
        let rules = s.by("portcullis_connections_total", "rule", &[("verdict", "rejected")]);
        assert_eq!(rules, vec![("a \"quoted\" rule".to_string(), 2.0)]);
        assert_eq!(s.sum("portcullis_backend_reply_seconds_count", &[("backend", "127.0.0.1:25")]), 4.0);
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        let s = Samples::parse("x{a=\"unterminated} 1\ny{a=\"1\"} notanumber\nz 2\n");
        assert_eq!(s.sum("z", &[]), 2.0);
        assert_eq!(s.sum("x", &[]), 0.0);
    }
}
