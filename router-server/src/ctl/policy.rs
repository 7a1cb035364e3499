//! `ctl policy set|get|rm|list`: operator policy (`P/policy/{name}`), which every
//! router follows within a second (see `crate::policy`).
//!
//! A policy goes to every registry given (`--etcd` or each `--registry`), as block
//! entries do: a router reads the policies of every registry it follows. `set
//! --dry-run` prints what the change moves (the client networks it covers, the nodes it
//! excludes or lets back, the nodes of each share) and writes nothing.

use std::collections::BTreeSet;

use registry::policy::{Group, Policy, Ratio};
use registry::{Kv, Layout, NodeRecord};

use super::{change, delete_everywhere, esc, fail, refused, Target};
use crate::config::PolicyOp;
use registry::audit::Author;

/// Runs a `ctl policy` operation; returns the exit status.
pub(super) async fn run(targets: &[Target], layout: &Layout, op: PolicyOp, who: &Author) -> i32 {
    match op {
        PolicyOp::Set {
            name,
            region,
            isp,
            exclude,
            ratio,
            cap,
            dry_run,
        } => {
            let policy = Policy {
                region,
                isp,
                exclude,
                ratios: ratio,
                caps: cap,
                by: who.by.clone(),
                at_ms: registry::now_ms(),
            };
            if let Err(e) = policy.validate() {
                registry::cli::exit_invalid(e.to_string());
            }
            set(targets, layout, &name, policy, dry_run, who).await
        }
        PolicyOp::Get { name } => get(targets, layout, &name).await,
        PolicyOp::Rm { name } => rm(targets, layout, &name, who).await,
        PolicyOp::List { json } => list(targets, layout, json).await,
    }
}

/// The policy stored under `key` in `t`, if any (one that does not parse: `Err`).
async fn stored(t: &Target, key: &str) -> Result<Option<Result<Policy, String>>, i32> {
    match t.kv.get(key).await {
        Ok(v) => Ok(v.map(|kv| Policy::parse(&kv.value).map_err(|e| e.to_string()))),
        Err(e) => Err(refused(t, e)),
    }
}

async fn set(
    targets: &[Target],
    layout: &Layout,
    name: &str,
    new: Policy,
    dry_run: bool,
    who: &Author,
) -> i32 {
    let key = layout.policy_key(name);
    let mut nodes = Vec::new();
    let mut old = None;
    for t in targets {
        match stored(t, &key).await {
            Ok(Some(Ok(p))) => old = old.or(Some(p)),
            Ok(_) => {}
            Err(code) => return code,
        }
        match t.kv.list(&layout.nodes_prefix()).await {
            Ok(l) => nodes.extend(l.kvs.iter().filter_map(|kv| {
                let id = layout.node_id(&kv.key).ok()?;
                let mut r = NodeRecord::parse(id, &kv.value).ok()?;
                // A router names a node's DC by the registry holding it.
                r.dc = Some(t.name.as_str().into());
                Some(r)
            })),
            Err(e) => return refused(t, e),
        }
    }
    print!("{}", moves(name, old.as_ref(), &new, &nodes));
    if dry_run {
        println!("dry run: nothing written");
        return 0;
    }
    for t in targets {
        if let Err(code) = change(t, layout, who, "policy set", &key, Some(&new.to_json())).await {
            return code;
        }
    }
    println!("policy {name} set");
    0
}

/// The client networks a policy covers, in words.
fn network(p: &Policy) -> String {
    match &p.isp {
        Some(isp) => format!("clients of {} on {isp}", p.region),
        None => format!(
            "clients of {} (every ISP without a policy of its own)",
            p.region
        ),
    }
}

/// What replacing `old` by `new` moves, as `set --dry-run` prints it.
fn moves(name: &str, old: Option<&Policy>, new: &Policy, nodes: &[NodeRecord]) -> String {
    let mut out = String::new();
    match old {
        Some(o) if network(o) != network(new) => out.push_str(&format!(
            "policy {name}: no longer for {}; now for {}\n",
            network(o),
            network(new)
        )),
        Some(_) => out.push_str(&format!("policy {name}: for {} (replaced)\n", network(new))),
        None => out.push_str(&format!("policy {name}: for {} (new)\n", network(new))),
    }
    let excluded = |p: Option<&Policy>| -> BTreeSet<String> {
        nodes
            .iter()
            .filter(|r| p.is_some_and(|p| p.excludes(r)))
            .map(|r| r.id.clone())
            .collect()
    };
    let (before, after) = (excluded(old), excluded(Some(new)));
    let list = |ids: Vec<&String>| {
        ids.iter()
            .map(|s| esc(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let newly: Vec<&String> = after.difference(&before).collect();
    let back: Vec<&String> = before.difference(&after).collect();
    if !newly.is_empty() {
        out.push_str(&format!("  no longer answered to them: {}\n", list(newly)));
    }
    if !back.is_empty() {
        out.push_str(&format!("  answered to them again: {}\n", list(back)));
    }
    for Ratio { to, percent } in &new.ratios {
        let before = old
            .and_then(|o| o.ratios.iter().find(|r| &r.to == to))
            .map_or("none".to_string(), |r| format!("{} %", r.percent));
        let members = in_group(to, nodes);
        out.push_str(&format!(
            "  {to}: {percent} % of their answers first (was {before}), {} nodes{}\n",
            members,
            if members == 0 {
                " -- none: that share goes to the rest as without a policy"
            } else {
                ""
            }
        ));
    }
    for r in old.map_or(&[][..], |o| &o.ratios) {
        if !new.ratios.iter().any(|n| n.to == r.to) {
            out.push_str(&format!(
                "  {}: no share any more (was {} %)\n",
                r.to, r.percent
            ));
        }
    }
    for Ratio { to, percent } in &new.caps {
        let before = old
            .and_then(|o| o.caps.iter().find(|c| &c.to == to))
            .map_or("no cap".to_string(), |c| format!("{} %", c.percent));
        out.push_str(&format!(
            "  {to}: first in at most {percent} % of their answers, last in the rest (was {before}), {} nodes\n",
            in_group(to, nodes)
        ));
    }
    for c in old.map_or(&[][..], |o| &o.caps) {
        if !new.caps.iter().any(|n| n.to == c.to) {
            out.push_str(&format!(
                "  {}: no cap any more (was {} %)\n",
                c.to, c.percent
            ));
        }
    }
    out
}

fn in_group(g: &Group, nodes: &[NodeRecord]) -> usize {
    nodes.iter().filter(|r| g.contains(r)).count()
}

async fn get(targets: &[Target], layout: &Layout, name: &str) -> i32 {
    let key = layout.policy_key(name);
    let mut found = false;
    for t in targets {
        match stored(t, &key).await {
            Ok(Some(Ok(p))) => {
                found = true;
                let out = serde_json::json!({"registry": t.name, "name": name, "policy": p});
                println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            }
            Ok(Some(Err(e))) => {
                found = true;
                println!(
                    "{}: policy {name} does not parse (routers skip it): {}",
                    t.name,
                    esc(&e)
                );
            }
            Ok(None) => {}
            Err(code) => return code,
        }
    }
    if found {
        0
    } else {
        fail(&format!("no policy {name}"))
    }
}

async fn rm(targets: &[Target], layout: &Layout, name: &str, who: &Author) -> i32 {
    let key = layout.policy_key(name);
    let removed = match delete_everywhere(targets, layout, who, "policy rm", &key).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    if removed == 0 {
        return fail(&format!("no policy {name}"));
    }
    println!("policy {name} removed");
    0
}

async fn list(targets: &[Target], layout: &Layout, json: bool) -> i32 {
    let prefix = layout.policy_prefix();
    let mut listed = Vec::new();
    for t in targets {
        let l = match t.kv.list(&prefix).await {
            Ok(l) => l,
            Err(e) => return refused(t, e),
        };
        for kv in l.kvs {
            let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string();
            listed.push((
                t.name.clone(),
                name,
                Policy::parse(&kv.value).map_err(|e| e.to_string()),
            ));
        }
    }
    if json {
        let out: Vec<serde_json::Value> = listed
            .iter()
            .map(|(dc, name, p)| match p {
                Ok(p) => serde_json::json!({"registry": dc, "name": name, "policy": p}),
                Err(e) => serde_json::json!({"registry": dc, "name": name, "broken": e}),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"policies": out})).expect("json")
        );
        return 0;
    }
    println!(
        "{:<12} {:<20} {:<24} {:<28} RATIOS, CAPS (<=)",
        "DC", "NAME", "CLIENTS", "EXCLUDE"
    );
    for (dc, name, p) in &listed {
        match p {
            Ok(p) => {
                let clients = format!(
                    "{}{}",
                    p.region,
                    p.isp.as_ref().map_or(String::new(), |i| format!("/{i}"))
                );
                let exclude: Vec<String> = p.exclude.iter().map(ToString::to_string).collect();
                let ratios: Vec<String> = p
                    .ratios
                    .iter()
                    .map(|r| format!("{}={}", r.to, r.percent))
                    .chain(p.caps.iter().map(|c| format!("{}<={}", c.to, c.percent)))
                    .collect();
                println!(
                    "{:<12} {:<20} {:<24} {:<28} {}",
                    esc(dc),
                    esc(name),
                    clients,
                    exclude.join(","),
                    ratios.join(",")
                );
            }
            Err(e) => println!(
                "{:<12} {:<20} broken (routers skip it): {}",
                esc(dc),
                esc(name),
                esc(e)
            ),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, dc: &str, pool: Option<&str>) -> NodeRecord {
        let mut r = NodeRecord::new(
            id,
            "192.0.2.1".parse().unwrap(),
            registry::Ports {
                tcp: Some(1),
                ws: None,
                wss: None,
            },
            "cn-sh",
            10,
            0,
        );
        r.dc = Some(dc.into());
        if let Some(p) = pool {
            r.labels
                .insert(registry::policy::POOL_LABEL.into(), p.into());
        }
        r
    }

    #[test]
    fn a_dry_run_names_the_networks_nodes_and_shares_a_change_moves() {
        let nodes = [
            node("sh-1", "sh", Some("cdn-a")),
            node("sh-2", "sh", None),
            node("hz-1", "hz", Some("cdn-a")),
            node("hz-2", "hz", None),
        ];
        let old: Policy =
            serde_json::from_str(r#"{"region":"cn-sh","exclude":["dc:hz"]}"#).unwrap();
        let new: Policy = serde_json::from_str(
            r#"{"region":"cn-sh","isp":"cmcc","exclude":["pool:cdn-a"],"ratios":[{"to":"dc:sh","percent":70},{"to":"dc:bj","percent":30}]}"#,
        )
        .unwrap();
        let out = moves("p", Some(&old), &new, &nodes);
        assert!(
            out.contains("no longer for clients of cn-sh (every ISP"),
            "{out}"
        );
        assert!(out.contains("now for clients of cn-sh on cmcc"), "{out}");
        assert!(out.contains("no longer answered to them: sh-1\n"), "{out}");
        assert!(out.contains("answered to them again: hz-2\n"), "{out}");
        assert!(
            out.contains("dc:sh: 70 % of their answers first (was none), 2 nodes\n"),
            "{out}"
        );
        assert!(
            out.contains("dc:bj: 30 %") && out.contains("0 nodes -- none"),
            "{out}"
        );
        let fresh = moves("p", None, &old, &nodes);
        assert!(
            fresh.contains("(new)") && fresh.contains("no longer answered to them: hz-1 hz-2"),
            "{fresh}"
        );
    }
}
