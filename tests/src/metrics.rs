//! Reading samples from a Prometheus metrics text.

/// True when the metrics text `text` has the sample line `line` exactly (a substring
/// test would also match a HELP line such as `# HELP router_protect_active 1 while ...`).
pub fn has_sample(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The value of the sample whose line starts with `series` (name and labels) in the
/// metrics text `text`, or 0 when it is not there yet.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .find_map(|rest| rest.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
