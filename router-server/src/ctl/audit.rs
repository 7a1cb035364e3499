//! `ctl audit`: the audit trail (`P/audit/`) of every registry given, newest first.

use registry::audit::{self, AuditEntry};
use registry::Layout;
use serde::Serialize;

use super::{esc, refused, Target};

/// One entry, with the registry it is in.
#[derive(Serialize)]
struct Listed {
    registry: String,
    #[serde(flatten)]
    entry: AuditEntry,
}

/// Prints the newest `limit` entries; returns the exit status.
pub(super) async fn run(targets: &[Target], layout: &Layout, limit: u64, json: bool) -> i32 {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut listed = Vec::new();
    let mut broken = 0usize;
    for t in targets {
        let (entries, bad) = match audit::newest(&t.kv, layout, limit).await {
            Ok(found) => found,
            Err(e) => return refused(t, e),
        };
        broken += bad;
        listed.extend(entries.into_iter().map(|entry| Listed {
            registry: t.name.clone(),
            entry,
        }));
    }
    listed.sort_by_key(|l| std::cmp::Reverse(l.entry.at_ms));
    listed.truncate(limit);
    if json {
        let out = serde_json::json!({"entries": listed, "broken": broken});
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return 0;
    }
    print!("{}", table(&listed, targets.len() > 1, registry::now_ms()));
    if broken > 0 {
        println!("{broken} entries do not parse (not shown)");
    }
    0
}

/// A value in one line, at most 60 characters.
fn short(v: &Option<serde_json::Value>) -> String {
    let s = match v {
        None => "-".to_string(),
        Some(v) => v.to_string(),
    };
    let s = esc(&s).into_owned();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn table(listed: &[Listed], with_dc: bool, now_ms: u64) -> String {
    let mut out = String::new();
    let dc = |name: &str| {
        if with_dc {
            format!("{:<10} ", esc(name))
        } else {
            String::new()
        }
    };
    out.push_str(&format!(
        "{}{:<10} {:<16} {:<10} {:<12} {:<40} CHANGE\n",
        dc("DC"),
        "AGO",
        "BY",
        "VIA",
        "ACTION",
        "KEY"
    ));
    for l in listed {
        let e = &l.entry;
        out.push_str(&format!(
            "{}{:<10} {:<16} {:<10} {:<12} {:<40} {} -> {}\n",
            dc(&l.registry),
            format!("{}s", now_ms.saturating_sub(e.at_ms) / 1000),
            esc(&e.by),
            esc(&e.via),
            esc(&e.action),
            esc(&e.key),
            short(&e.before),
            short(&e.after)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_who_what_and_both_values_in_one_line_each() {
        let entry = |by: &str, action: &str, before, after| Listed {
            registry: "sh".into(),
            entry: AuditEntry {
                at_ms: 1_000,
                by: by.into(),
                via: "ctl".into(),
                action: action.into(),
                key: "/g/policy/p".into(),
                before,
                after,
            },
        };
        let long = serde_json::json!({"x": "y".repeat(100)});
        let t = table(
            &[
                entry(
                    "alice",
                    "policy set",
                    None,
                    Some(serde_json::json!({"a": 1})),
                ),
                entry("bob\u{1b}[2J", "policy rm", Some(long), None),
            ],
            true,
            61_000,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].contains("60s")
                && lines[1].contains("alice")
                && lines[1].contains(r#"- -> {"a":1}"#),
            "{t}"
        );
        assert!(
            lines[2].contains("...") && lines[2].ends_with("-> -"),
            "{t}"
        );
        assert!(!t.contains('\u{1b}'), "{t}");
    }
}
