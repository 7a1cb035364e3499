//! The metrics text formats both binaries serve at `GET /metrics`: prometheus-client
//! writes OpenMetrics; scrapers and tools that do not ask for it (`promtool check
//! metrics`) get the Prometheus text format (0.0.4), rewritten from it here.

/// The `Content-Type` of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the Prometheus text format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when an `Accept` header value asks for OpenMetrics.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    accept
        .into_iter()
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Rewrites OpenMetrics text as Prometheus text: a counter family's `HELP` and `TYPE`
/// name its samples (`x_total`, where OpenMetrics names the family `x`); `UNIT` and
/// `EOF` lines, which the older format does not have, are left out.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    let mut pending_help: Option<&str> = None;
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Its name depends on the TYPE line that follows.
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let sample_name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(help) = pending_help.take() {
                let text = help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.split_once(' '))
                    .map(|(_, t)| t)
                    .unwrap_or("");
                out.push_str(&format!("# HELP {sample_name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {sample_name} {kind}\n"));
            continue;
        }
        if let Some(help) = pending_help.take() {
            out.push_str(help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
