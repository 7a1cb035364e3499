//! `ctl block`, `ctl unblock` and `ctl blocks`: the dynamic block list
//! (`P/blocklist/`), which every router follows and refuses within a second.
//!
//! An entry goes to every registry given (`--etcd` or each `--registry`): a router
//! refuses what any registry it follows lists, so an operator addressing several DCs
//! blocks everywhere at once.

use std::time::Duration;

use ipnet::IpNet;
use registry::blocklist::BlockEntry;
use registry::{Kv, Layout};
use serde::Serialize;

use super::{change, delete_everywhere, esc, fail, refused, Target};
use crate::config::CtlOp;
use registry::audit::Author;

/// Runs `ctl block`, `ctl unblock` or `ctl blocks`; returns the exit status.
pub(super) async fn run(targets: &[Target], layout: &Layout, op: CtlOp, who: &Author) -> i32 {
    match op {
        CtlOp::Block { cidr, reason, ttl } => block(targets, layout, cidr, reason, ttl, who).await,
        CtlOp::Unblock { cidr } => unblock(targets, layout, cidr, who).await,
        CtlOp::Blocks { json } => list(targets, layout, json).await,
        _ => unreachable!("only block operations come here"),
    }
}

async fn block(
    targets: &[Target],
    layout: &Layout,
    cidr: IpNet,
    reason: String,
    ttl: Option<Duration>,
    who: &Author,
) -> i32 {
    let now = registry::now_ms();
    let entry = BlockEntry {
        cidr: cidr.trunc(),
        reason,
        expires_ms: ttl.map_or(0, |t| now.saturating_add(t.as_millis() as u64)),
        by: who.by.clone(),
        at_ms: now,
    };
    if let Err(e) = entry.validate() {
        registry::cli::exit_invalid(e.to_string());
    }
    let key = layout.blocklist_key(&BlockEntry::key_for(&entry.cidr));
    for t in targets {
        if let Err(code) = change(t, layout, who, "block", &key, Some(&entry.to_json())).await {
            return code;
        }
    }
    let until = match ttl {
        Some(t) => format!("for {}", humantime::format_duration(t)),
        None => "until unblocked".into(),
    };
    println!("blocked {} {until}", entry.cidr);
    0
}

async fn unblock(targets: &[Target], layout: &Layout, cidr: IpNet, who: &Author) -> i32 {
    let key = layout.blocklist_key(&BlockEntry::key_for(&cidr));
    let removed = match delete_everywhere(targets, layout, who, "unblock", &key).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    if removed == 0 {
        return fail(&format!("{} is not on the block list", cidr.trunc()));
    }
    println!("unblocked {}", cidr.trunc());
    0
}

/// One listed entry.
#[derive(Serialize)]
struct Listed {
    registry: String,
    #[serde(flatten)]
    entry: BlockEntry,
}

async fn list(targets: &[Target], layout: &Layout, json: bool) -> i32 {
    let prefix = layout.blocklist_prefix();
    let now = registry::now_ms();
    let mut listed = Vec::new();
    let mut broken = Vec::new();
    for t in targets {
        let l = match t.kv.list(&prefix).await {
            Ok(l) => l,
            Err(e) => return refused(t, e),
        };
        for kv in l.kvs {
            match BlockEntry::parse(&kv.value) {
                Ok(entry) => listed.push(Listed {
                    registry: t.name.clone(),
                    entry,
                }),
                Err(e) => broken.push(serde_json::json!({
                    "registry": t.name, "key": kv.key, "reason": e.to_string(),
                })),
            }
        }
    }
    if json {
        let out = serde_json::json!({"blocks": listed, "broken": broken});
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return 0;
    }
    print!("{}", table(&listed, targets.len() > 1, now));
    for b in &broken {
        println!(
            "broken entry {}: {} (routers skip it)",
            esc(b["key"].as_str().unwrap_or("")),
            esc(b["reason"].as_str().unwrap_or(""))
        );
    }
    0
}

/// The `ctl blocks` table: expired entries say so (routers ignore them).
fn table(listed: &[Listed], with_dc: bool, now_ms: u64) -> String {
    let mut out = String::new();
    let row = |out: &mut String, dc: &str, cols: [&str; 5]| {
        if with_dc {
            out.push_str(&format!("{dc:<12} "));
        }
        out.push_str(&format!(
            "{:<22} {:<12} {:<16} {:<20} {}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4]
        ));
    };
    row(&mut out, "DC", ["CIDR", "EXPIRES", "BY", "ADDED", "REASON"]);
    for l in listed {
        let e = &l.entry;
        let expires = match e.expires_ms {
            0 => "never".to_string(),
            t if t <= now_ms => "expired".to_string(),
            t => format!("in {}s", (t - now_ms).div_ceil(1000)),
        };
        let added = match e.at_ms {
            0 => "-".to_string(),
            t => format!("{}s ago", now_ms.saturating_sub(t) / 1000),
        };
        row(
            &mut out,
            &l.registry,
            [
                &e.cidr.to_string(),
                &expires,
                &esc(&e.by),
                &added,
                &esc(&e.reason),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_when_entries_expire() {
        let entry = |cidr: &str, expires_ms| Listed {
            registry: "default".into(),
            entry: BlockEntry {
                cidr: cidr.parse().unwrap(),
                reason: "scraper\u{1b}[2J".into(),
                expires_ms,
                by: "alice".into(),
                at_ms: 1_000,
            },
        };
        let t = table(
            &[
                entry("192.0.2.0/24", 0),
                entry("198.51.100.0/24", 5_000),
                entry("203.0.113.0/24", 61_000),
            ],
            false,
            10_000,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("192.0.2.0/24") && lines[1].contains("never"));
        assert!(lines[2].contains("expired"), "{t}");
        assert!(lines[3].contains("in 51s"), "{t}");
        assert!(lines[1].contains("9s ago"), "{t}");
        assert!(!t.contains('\u{1b}'), "escaped: {t}");
    }
}
