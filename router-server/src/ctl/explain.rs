//! `ctl explain IP`: asks a router's admin API (`GET /admin/explain`) why the address
//! gets the gateways it gets, or none, and prints a short report (or the JSON).
//! Everything printed that an agent or an operator wrote is escaped ([`esc`]).

use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::esc;
use crate::config::ExplainArgs;
use crate::schedule::Reason;

/// How long the router has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes listed per reason before the rest are counted.
const PER_REASON: usize = 20;

/// Runs `ctl explain`; returns the exit status.
pub(super) async fn run(args: &ExplainArgs) -> i32 {
    let token = match token(args) {
        Ok(t) => t,
        Err(e) => registry::cli::exit_invalid(e),
    };
    let client = match client(args) {
        Ok(c) => c,
        Err(e) => registry::cli::exit_invalid(e),
    };
    let url = format!("{}/admin/explain?{}", args.router, query(args));
    let resp = match client.get(&url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot reach the router at {}: {e}", args.router)),
    };
    let status = resp.status();
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => return fail(&format!("the router at {}: {e}", args.router)),
    };
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if !status.is_success() {
        let why = parsed
            .as_ref()
            .and_then(|v| serde_json::from_value::<gateway_api::ErrorBody>(v.clone()).ok())
            .map(|e| format!("{}: {}", e.error.code, e.error.message))
            .unwrap_or_else(|| body.chars().take(200).collect());
        return fail(&format!("the router answered {status}: {}", esc(&why)));
    }
    let Some(v) = parsed else {
        return fail("the router's answer is not JSON");
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", report(&v));
    }
    0
}

fn fail(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    1
}

/// The token of --admin-token or --admin-token-file.
fn token(args: &ExplainArgs) -> Result<String, String> {
    let token = match (&args.admin_token, &args.admin_token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => {
            let text = registry::security::read_secret(path)
                .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?;
            token_of_file(&text)
                .ok_or_else(|| format!("--admin-token-file {}: no token in it", path.display()))?
        }
        (None, None) => {
            return Err(
                "give --admin-token or --admin-token-file: ctl explain asks the \
                        router's admin API"
                    .into(),
            )
        }
    };
    crate::config::check_token(&token).map_err(|e| format!("the admin token {e}"))?;
    Ok(token)
}

/// The first token of a file: a line holding it alone, or a `name:token` line.
fn token_of_file(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let token = line.split_once(':').map_or(line, |(_, t)| t.trim());
    Some(token.to_string())
}

fn client(args: &ExplainArgs) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some(path) = &args.router_cacert {
        let pem =
            std::fs::read(path).map_err(|e| format!("--router-cacert {}: {e}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("--router-cacert {}: {e}", path.display()))?;
        b = b.add_root_certificate(ca);
    }
    b.build().map_err(|e| e.to_string())
}

/// The endpoint's query string.
fn query(args: &ExplainArgs) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("ip", args.ip.to_string())];
    let optional = [
        ("region", args.region.clone()),
        ("isp", args.isp.clone()),
        ("proto", args.proto.clone()),
        ("count", args.count.map(|n| n.to_string())),
        ("ip_version", args.ip_version.clone()),
    ];
    pairs.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    serde_urlencoded::to_string(pairs).expect("strings encode")
}

/// A string field of `v`, escaped; `-` when absent.
fn s<'a>(v: &'a Value, key: &str) -> std::borrow::Cow<'a, str> {
    v[key].as_str().map_or("-".into(), esc)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The human report of an explanation.
pub(super) fn report(v: &Value) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "address   {} (network {}, request budget {})",
        s(v, "ip"),
        s(v, "network"),
        s(v, "request_network")
    );
    let _ = writeln!(w, "guard     {}", guard_line(&v["guard"]));
    let _ = writeln!(w, "region    {}", region_line(v));
    if v["isp"].is_string() {
        let _ = writeln!(
            w,
            "isp       {} (its line first in each region)",
            s(v, "isp")
        );
    }
    let family = match v["ip_version"].as_u64() {
        Some(n) => format!("IPv{n} only"),
        None => "any address family".into(),
    };
    let _ = writeln!(
        w,
        "asked     proto {}, count {}, {family}",
        s(v, "proto"),
        v["count"]
    );
    let _ = writeln!(w, "outcome   {}", outcome_line(v));
    let answer = v["answer"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(w, "\nanswer ({}):", answer.len());
    for (i, a) in answer.iter().enumerate() {
        let _ = writeln!(
            w,
            "  {}. {:<24} {:<10} {}:{:<5} load {:.3} (reported {:.3}) {}{}",
            i + 1,
            s(a, "id"),
            s(a, "region"),
            s(a, "ip"),
            a["port"],
            num(a, "load"),
            num(a, "reported_load"),
            s(a, "tier"),
            if a["held"] == true { ", HELD" } else { "" }
        );
    }
    passed_over(w, v);
    let invalid = v["invalid"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !invalid.is_empty() {
        let _ = writeln!(w, "\ninvalid records, not served ({}):", invalid.len());
        for r in invalid {
            let _ = writeln!(
                w,
                "  {:<24} {:<9} {}",
                s(r, "id"),
                s(r, "kind"),
                s(r, "reason")
            );
        }
    }
    out
}

/// The nodes left out, grouped by reason in the order the selection applies them.
fn passed_over(w: &mut String, v: &Value) {
    let passed = v["passed_over"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let _ = writeln!(w, "\npassed over ({}):", passed.len());
    for reason in Reason::ALL {
        let nodes: Vec<&Value> = passed
            .iter()
            .filter(|p| p["reason"] == reason.as_str())
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let _ = writeln!(w, "  {} ({}):", reason.as_str(), nodes.len());
        for p in nodes.iter().take(PER_REASON) {
            let _ = writeln!(
                w,
                "    {:<24} {:<10} {}",
                s(p, "id"),
                s(p, "region"),
                s(p, "detail")
            );
        }
        if nodes.len() > PER_REASON {
            let _ = writeln!(
                w,
                "    ... and {} more (--json lists all)",
                nodes.len() - PER_REASON
            );
        }
    }
}

fn guard_line(g: &Value) -> String {
    let b = &g["blocked"];
    if b.is_object() {
        let until = match b["expires_ms"].as_u64() {
            Some(0) | None => "until removed".to_string(),
            Some(ms) => format!("until {ms} ms"),
        };
        return format!(
            "BLOCKED by {} (source {}, reason {:?}, by {}, {until})",
            s(b, "cidr"),
            s(b, "source"),
            s(b, "reason"),
            s(b, "by"),
        );
    }
    match g["allowed"].as_str() {
        Some(net) => format!("not blocked; allow list {} (exempt from budgets)", esc(net)),
        None => "not blocked".into(),
    }
}

fn region_line(v: &Value) -> String {
    let from = match v["region_from"].as_str() {
        Some("query") => "from the region asked for".to_string(),
        Some("cidr") => format!("from [regions] cidrs {}", s(v, "region_cidr")),
        Some("default") => "from [regions] default (no network matched)".into(),
        _ => return "none (no network matched, no default): nodes of any region".into(),
    };
    let fallbacks: Vec<String> = v["fallbacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|f| esc(f).into_owned())
        .collect();
    let order = if fallbacks.is_empty() {
        "then any region".to_string()
    } else {
        format!("then {}, then any region", fallbacks.join(", "))
    };
    format!("{} ({from}); {order}", s(v, "region"))
}

fn outcome_line(v: &Value) -> String {
    let mut line = match v["outcome"].as_str() {
        Some("answered") => "answered".to_string(),
        Some("blocked") => "403 blocked (the answer below is what it would get unblocked)".into(),
        Some("no_gateways") => {
            "503 no_gateways: every node is passed over for a reason below".into()
        }
        Some("not_ready") => "503 not_ready: the router has no snapshot yet".into(),
        _ => s(v, "outcome").into_owned(),
    };
    if let Some(rev) = v["revision"].as_i64() {
        let _ = write!(line, ", revision {rev}");
    }
    if v["stale"] == true {
        line.push_str(", STALE");
    }
    let _ = write!(line, ", max_load {}", v["max_load"]);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_holds_a_token_or_name_token_lines() {
        assert_eq!(
            token_of_file("# ops\n\n  0123456789abcdef \n").as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(
            token_of_file("alice: 0123456789abcdef\nbob:x").as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(token_of_file("# nothing\n"), None);
    }

    #[test]
    fn the_report_groups_reasons_and_escapes_what_agents_wrote() {
        let v = serde_json::json!({
            "ip": "198.51.100.7", "network": "198.51.100.0/24", "request_network": "198.51.100.7/32",
            "guard": {"blocked": null, "allowed": null},
            "region": "cn-sh", "region_from": "cidr", "region_cidr": "198.51.100.0/24",
            "fallbacks": ["cn-bj"], "isp": null, "proto": "tcp", "count": 3, "ip_version": null,
            "outcome": "answered", "revision": 9, "stale": false, "max_load": 0.95,
            "answer": [{"id": "sh-1", "region": "cn-sh", "dc": null, "ip": "192.0.2.1", "port": 8000,
                        "load": 0.1, "reported_load": 0.1, "tier": "region", "held": false}],
            "passed_over": [
                {"id": "evil\u{1b}[2J", "region": "cn-sh", "dc": null, "isp": null, "reason": "draining",
                 "detail": "state draining: takes no new clients", "load": 0.0, "reported_load": 0.0, "tier": "region"},
                {"id": "bj-1", "region": "cn-bj", "dc": null, "isp": null, "reason": "other_region",
                 "detail": "region cn-bj is ...", "load": 0.0, "reported_load": 0.0, "tier": "fallback"},
                {"id": "sh-9", "region": "cn-sh", "dc": null, "isp": null, "reason": "full",
                 "detail": "reported load 0.990 is at or above max_load 0.95", "load": 0.99, "reported_load": 0.99, "tier": "region"}
            ],
            "invalid": [{"key": "/p/nodes/x", "id": "x", "kind": "binding", "reason": "binding: \u{7}"}]
        });
        let r = report(&v);
        assert!(!r.contains('\u{1b}') && !r.contains('\u{7}'), "{r}");
        assert!(r.contains("evil\\x1b[2J"), "{r}");
        assert!(
            r.contains("cn-sh (from [regions] cidrs 198.51.100.0/24); then cn-bj, then any region"),
            "{r}"
        );
        let order: Vec<usize> = [
            "draining (1)",
            "full (1)",
            "other_region (1)",
            "invalid records",
        ]
        .iter()
        .map(|k| r.find(k).unwrap_or_else(|| panic!("{k} missing: {r}")))
        .collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "{r}");
    }
}
