//! `router-server ctl`: the on-call engineer's command line.

use std::time::Duration;

use registry::audit::Author;
use registry::etcd::{connect_at_start, EtcdOptions};
use registry::security::EtcdSecurity;
use registry::{CommandAction, Kv, Layout, NodeRecord};
use tokio::time::Instant;

use crate::config::{AuthOp, CtlArgs, CtlOp, FileConfig};

mod audit;
mod auth;
mod bind;
mod block;
mod explain;
mod policy;
mod write;

use crate::ops::{self, OpsError, PlanStep};
use write::{change, delete_everywhere};

/// How long each of `ctl`'s calls keeps trying while no etcd member can answer it (a
/// cluster electing a leader after its leader was cut off, say): an election takes
/// one to two election timeouts, 1 s each by default, so a command issued at a cut
/// lands once the majority has a leader rather than failing.
const PATIENCE: Duration = Duration::from_secs(5);

/// How long `ctl` waits for etcd to answer at all before giving up: [`PATIENCE`] and
/// one last attempt.
const REACH_TIMEOUT: Duration = Duration::from_secs(7);

/// One registry `ctl` talks to.
struct Target {
    name: String,
    spec: String,
    kv: registry::etcd::EtcdKv,
}

/// Runs one `ctl` operation; returns the process exit status.
pub async fn run(args: CtlArgs) -> i32 {
    if let CtlOp::Explain(x) = &args.op {
        return explain::run(x).await;
    }
    let layout = Layout::new(&args.prefix);
    let targets = match connect(&args, &layout).await {
        Ok(targets) => targets,
        Err(code) => return code,
    };
    let several = targets.len() > 1;
    let operator = operator(&args);
    let author = Author {
        by: operator.clone(),
        via: "ctl",
    };
    let result = match args.op {
        CtlOp::Auth { op } => return auth_each(&targets, &layout, op).await,
        op @ (CtlOp::Bind { .. } | CtlOp::Bindings { .. }) => {
            return bind::run(&targets, &layout, op, &author).await
        }
        op @ (CtlOp::Block { .. } | CtlOp::Unblock { .. } | CtlOp::Blocks { .. }) => {
            return block::run(&targets, &layout, op, &author).await
        }
        CtlOp::Policy { op } => return policy::run(&targets, &layout, op, &author).await,
        CtlOp::Audit { limit, json } => return audit::run(&targets, &layout, limit, json).await,
        op if !several => execute(&targets[0].kv, &layout, op, &author)
            .await
            .map_err(|e| (0, e)),
        CtlOp::Nodes { json } => nodes_by_dc(&targets, &layout, json).await,
        CtlOp::Rebalance { dry_run, json } => {
            rebalance_each(&targets, &layout, dry_run, json, &author).await
        }
        op => return command_to_holder(&targets, &layout, op, &author).await,
    };
    exit_status(&targets, result)
}

/// Every registry to address: `--etcd` (named `default`) and `--registry` with the
/// `--etcd-*` flags' credentials, then the `[[registries]]` of `--config` with their
/// own, as `serve` follows them.
fn wanted(args: &CtlArgs) -> Vec<(String, String, EtcdSecurity)> {
    let security = args.etcd_security.security();
    let mut wanted: Vec<(String, String, EtcdSecurity)> = args
        .etcd
        .iter()
        .map(|e| ("default".to_string(), e.clone(), security.clone()))
        .collect();
    wanted.extend(
        args.registries
            .iter()
            .map(|(name, spec)| (name.clone(), spec.clone(), security.clone())),
    );
    if let Some(path) = &args.config {
        let config = FileConfig::load(path).unwrap_or_else(|e| registry::cli::exit_invalid(e));
        for r in &config.registries {
            if let Some(p) = r.prefix.as_ref().filter(|p| **p != args.prefix) {
                registry::cli::exit_invalid(format!(
                    "registry {:?} of {} keeps its keys under {p:?}: give ctl --prefix {p} to address it",
                    r.name,
                    path.display()
                ));
            }
            wanted.push((r.name.clone(), r.etcd.clone(), r.security()));
        }
    }
    if wanted.is_empty() {
        registry::cli::exit_invalid(
            "give --etcd URL[,URL...], --registry NAME=URL[,URL...] or --config FILE with [[registries]]",
        );
    }
    wanted
}

/// Connects to every registry [`wanted`] names, and checks that each answers; `Err`:
/// the exit status (after saying why on stderr).
async fn connect(args: &CtlArgs, layout: &Layout) -> Result<Vec<Target>, i32> {
    let mut targets = Vec::new();
    for (name, spec, security) in wanted(args) {
        if targets.iter().any(|t: &Target| t.name == name) {
            registry::cli::exit_invalid(format!("registry {name:?} is given twice"));
        }
        let endpoints: Vec<String> = spec.split(',').map(str::to_string).collect();
        if let Err(e) = security.check(&endpoints) {
            registry::cli::exit_invalid(e);
        }
        // A wrong CA, an expired certificate, a wrong password: named as such.
        let opts = EtcdOptions {
            security: security.clone(),
            retry_for: PATIENCE,
            ..EtcdOptions::default()
        };
        let kv = match connect_at_start(&endpoints, opts, &layout.nodes_prefix()).await {
            Ok(kv) => kv,
            Err(e) => return Err(fail(&e.to_string())),
        };
        reach(&kv, layout, &spec).await?;
        targets.push(Target { name, spec, kv });
    }
    Ok(targets)
}

/// Checks that etcd at `spec` answers within [`REACH_TIMEOUT`]; `Err`: the exit
/// status. (The client retries on its own; an operator wants a verdict in seconds.)
async fn reach(kv: &registry::etcd::EtcdKv, layout: &Layout, spec: &str) -> Result<(), i32> {
    match tokio::time::timeout(REACH_TIMEOUT, kv.get(&layout.nodes_prefix())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(fail(&format!("cannot reach etcd at {spec}: {e}"))),
        Err(_) => Err(fail(&format!(
            "cannot reach etcd at {spec} (no answer within {}s)",
            REACH_TIMEOUT.as_secs()
        ))),
    }
}

/// Who is acting, for what ctl writes down (block entries): the etcd user when there
/// is one, else the login name.
fn operator(args: &CtlArgs) -> String {
    args.etcd_security
        .etcd_user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "ctl".into())
}

/// `ctl auth` on each registry in turn, stopping at the first that fails; returns the
/// exit status.
async fn auth_each(targets: &[Target], layout: &Layout, op: AuthOp) -> i32 {
    let several = targets.len() > 1;
    for t in targets {
        if several {
            println!("== registry {} ==", t.name);
        }
        let code = auth::run(&t.kv, layout, op.clone()).await;
        if code != 0 {
            return code;
        }
    }
    0
}

/// `ctl rebalance` on each registry in turn, stopping at the first that fails.
async fn rebalance_each(
    targets: &[Target],
    layout: &Layout,
    dry_run: bool,
    json: bool,
    who: &Author,
) -> Result<(), (usize, OpsError)> {
    let mut r = Ok(());
    for (i, t) in targets.iter().enumerate() {
        println!("== registry {} ==", t.name);
        r = execute(&t.kv, layout, CtlOp::Rebalance { dry_run, json }, who)
            .await
            .map_err(|e| (i, e));
        if r.is_err() {
            break;
        }
    }
    r
}

/// A command (drain, migrate, serve) sent to the one registry that holds the node;
/// returns the exit status.
async fn command_to_holder(targets: &[Target], layout: &Layout, op: CtlOp, who: &Author) -> i32 {
    let id = match &op {
        CtlOp::Drain { id, .. } | CtlOp::Migrate { id, .. } | CtlOp::Serve { id } => id.clone(),
        _ => unreachable!("nodes, rebalance, bind and auth are handled above"),
    };
    let mut holders = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match t.kv.get(&layout.node_key(&id)).await {
            Ok(Some(_)) => holders.push(i),
            Ok(None) => {}
            Err(e) => return fail(&format!("registry {} ({}): {e}", t.name, t.spec)),
        }
    }
    let result = match holders.as_slice() {
        [] => Err((0, OpsError::UnknownNode(id))),
        [i] => {
            println!("{id} is in registry {}", targets[*i].name);
            execute(&targets[*i].kv, layout, op, who)
                .await
                .map_err(|e| (*i, e))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|&i| targets[i].name.as_str()).collect();
            return fail(&format!(
                "node {id} is in registries {}: give only the one to address with --registry",
                names.join(" and ")
            ));
        }
    };
    exit_status(targets, result)
}

/// The exit status of an operation on `targets` (the index says which registry
/// failed), after saying why on stderr.
fn exit_status(targets: &[Target], result: Result<(), (usize, OpsError)>) -> i32 {
    match result {
        Ok(()) => 0,
        Err((i, OpsError::Registry(e))) => fail(&format!(
            "etcd at {} is unreachable or refused the request: {e}",
            targets[i].spec
        )),
        Err((_, e)) => fail(&e.to_string()),
    }
}

/// `ctl nodes` over several registries: one table with a DC column.
async fn nodes_by_dc(
    targets: &[Target],
    layout: &Layout,
    json: bool,
) -> Result<(), (usize, OpsError)> {
    let mut all = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let (nodes, invalid) = ops::list_nodes(&t.kv, layout)
            .await
            .map_err(|e| (i, OpsError::Registry(e)))?;
        all.push((t.name.as_str(), nodes, invalid));
    }
    if json {
        let out: Vec<serde_json::Value> = all
            .iter()
            .map(|(name, nodes, invalid)| {
                serde_json::json!({
                    "registry": name,
                    "nodes": nodes,
                    "invalid": invalid.iter().map(|(k, r)| serde_json::json!({"key": k, "reason": r})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "registries": out })).expect("json")
        );
        return Ok(());
    }
    let width = all
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let now = registry::now_ms();
    for (k, (name, nodes, _)) in all.iter().enumerate() {
        for (j, line) in nodes_table(nodes, now).lines().enumerate() {
            match (j, k) {
                (0, 0) => println!("{:<width$} {line}", "DC"),
                (0, _) => {}
                _ => println!("{name:<width$} {line}"),
            }
        }
    }
    for (name, _, invalid) in &all {
        for (key, reason) in invalid {
            println!("invalid record {}:{}: {}", esc(name), esc(key), esc(reason));
        }
    }
    // A node id in two registries: routers serve the first one's.
    let mut seen: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (name, nodes, _) in &all {
        for n in nodes {
            seen.entry(n.id.as_str()).or_default().push(name);
        }
    }
    for (id, names) in seen.iter().filter(|(_, names)| names.len() > 1) {
        println!(
            "duplicate node id {} in registries {} (routers serve the first they follow)",
            esc(id),
            esc(&names.join(" and "))
        );
    }
    Ok(())
}

/// `s` with its control characters written as escapes (`\x1b`, `\u{9b}`): what `ctl`
/// prints came from etcd, where an agent (or anyone with write access) may have put
/// terminal escapes that would otherwise act on the operator's terminal.
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn fail(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    1
}

/// Exit status 1 for `t`'s etcd failing a request, with the error.
fn refused(t: &Target, e: impl std::fmt::Display) -> i32 {
    fail(&format!(
        "etcd at {} is unreachable or refused the request: {e}",
        t.spec
    ))
}

async fn execute(kv: &dyn Kv, layout: &Layout, op: CtlOp, who: &Author) -> Result<(), OpsError> {
    match op {
        CtlOp::Nodes { json } => {
            let (nodes, invalid) = ops::list_nodes(kv, layout).await?;
            if json {
                let out = serde_json::json!({
                    "nodes": nodes,
                    "invalid": invalid.iter().map(|(k, r)| serde_json::json!({"key": k, "reason": r})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            } else {
                print!("{}", nodes_table(&nodes, registry::now_ms()));
                for (key, reason) in invalid {
                    println!("invalid record {}: {}", esc(&key), esc(&reason));
                }
            }
            Ok(())
        }
        CtlOp::Drain { id, wait, timeout } => {
            let cmd = ops::issue(kv, layout, &id, CommandAction::Drain, None, who).await?;
            println!("drain issued to {id} (command {})", cmd.id);
            if wait {
                wait_drained(kv, layout, &id, &cmd.id, Duration::from_secs(timeout)).await?;
            }
            Ok(())
        }
        CtlOp::Migrate { id, percent } => {
            let cmd = ops::issue(
                kv,
                layout,
                &id,
                CommandAction::Migrate,
                Some(percent as i64),
                who,
            )
            .await?;
            println!("migrate {percent}% issued to {id} (command {})", cmd.id);
            Ok(())
        }
        CtlOp::Serve { id } => {
            let cmd = ops::issue(kv, layout, &id, CommandAction::Serve, None, who).await?;
            println!("serve issued to {id} (command {})", cmd.id);
            Ok(())
        }
        CtlOp::Auth { .. }
        | CtlOp::Bind { .. }
        | CtlOp::Bindings { .. }
        | CtlOp::Block { .. }
        | CtlOp::Unblock { .. }
        | CtlOp::Blocks { .. }
        | CtlOp::Policy { .. }
        | CtlOp::Audit { .. }
        | CtlOp::Explain(_) => {
            unreachable!("ctl auth, bind and bindings run before execute")
        }
        CtlOp::Rebalance { dry_run, json } => {
            let (plan, issued) =
                ops::rebalance(kv, layout, ops::DEFAULT_TOLERANCE, dry_run, who).await?;
            if json {
                let out = serde_json::json!({"dry_run": dry_run, "plan": plan.steps,
                    "pending": plan.pending,
                    "issued": issued.iter().map(|(n, c)| serde_json::json!({"node": n, "command": c.id})).collect::<Vec<_>>()});
                println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            } else {
                if !plan.pending.is_empty() {
                    println!("in flight (counted, not issued again):");
                    print!("{}", pending_table(&plan.pending));
                }
                print!("{}", plan_table(&plan.steps));
                if plan.steps.is_empty() {
                    println!(
                        "every node is within {:.0} load points of its pool's mean or has a move in flight; nothing to issue",
                        ops::DEFAULT_TOLERANCE * 100.0
                    );
                } else if dry_run {
                    println!("dry run: no command issued");
                } else {
                    for (node, cmd) in &issued {
                        println!("migrate issued to {node} (command {})", cmd.id);
                    }
                }
            }
            Ok(())
        }
    }
}

/// Follows the node until it reports 0 connections (or vanishes), printing progress.
async fn wait_drained(
    kv: &dyn Kv,
    layout: &Layout,
    id: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<(), OpsError> {
    let start = Instant::now();
    let key = layout.node_key(id);
    let mut last: Option<(u64, bool)> = None;
    loop {
        let record = match kv.get(&key).await? {
            Some(kv) => NodeRecord::parse(id, &kv.value).ok(),
            None => {
                println!("{id} deregistered; drained");
                return Ok(());
            }
        };
        if let Some(r) = record {
            let applied = r.applied_command.as_deref() == Some(cmd);
            if last != Some((r.connections, applied)) {
                let state = if applied {
                    r.state.as_str()
                } else {
                    "command not yet applied"
                };
                println!(
                    "{id}: {} connections ({state}, {:.0}s)",
                    r.connections,
                    start.elapsed().as_secs_f64()
                );
                last = Some((r.connections, applied));
            }
            if applied && r.connections == 0 {
                println!("{id} drained");
                return Ok(());
            }
        }
        if start.elapsed() >= timeout {
            let conns = last
                .map(|(c, _)| c.to_string())
                .unwrap_or_else(|| "an unknown number of".into());
            return Err(OpsError::GaveUp(format!(
                "{id} still has {conns} connections after {}s; it keeps draining",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `ctl nodes` table.
pub fn nodes_table(nodes: &[NodeRecord], now_ms: u64) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<9} {:<9} {:>21} {:>6} {:>6} {:<24} {}\n",
        "ID", "REGION", "STATE", "HEALTH", "CONNECTIONS/CAPACITY", "LOAD", "AGE", "APPLIED", "HOOK"
    );
    for n in nodes {
        let age = n
            .updated_ms
            .map(|u| format!("{}s", now_ms.saturating_sub(u) / 1000))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<24} {:<10} {:<9} {:<9} {:>21} {:>5.1}% {:>6} {:<24} {}\n",
            esc(&n.id),
            esc(&n.region),
            n.state.as_str(),
            if n.healthy { "healthy" } else { "UNHEALTHY" },
            format!("{}/{}", n.connections, n.capacity),
            n.load() * 100.0,
            age,
            esc(n.applied_command.as_deref().unwrap_or("-")),
            esc(&hook_cell(n, now_ms)),
        ));
    }
    out
}

/// The hook column: the delivery state of the last migrate signal, with how long it
/// has been retrying and why.
fn hook_cell(n: &NodeRecord, now_ms: u64) -> String {
    let Some(h) = &n.hook else {
        return "-".into();
    };
    let mut cell = format!("{} {}", h.command, h.state.as_str());
    if h.state == registry::HookState::Retrying {
        cell.push_str(&format!(
            " for {}s ({} attempts): {}",
            now_ms.saturating_sub(h.since_ms) / 1000,
            h.attempts,
            h.error.as_deref().unwrap_or("?")
        ));
    }
    cell
}

/// The commands a rebalance found in flight.
pub fn pending_table(pending: &[ops::Pending]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<24} {:>8} {:>12} {:>10} {}\n",
        "NODE", "REGION", "COMMAND", "PERCENT", "CONNECTIONS", "PROJECTED", "STATE"
    );
    for p in pending {
        out.push_str(&format!(
            "{:<24} {:<10} {:<24} {:>7}% {:>12} {:>10} {}\n",
            p.node, p.region, p.command, p.percent, p.connections, p.projected_connections, p.state
        ));
    }
    out
}

/// The rebalance plan table.
pub fn plan_table(plan: &[PlanStep]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:>6} {:>6} {:>8} {:>8}\n",
        "NODE", "REGION", "LOAD", "MEAN", "MOVE", "PERCENT"
    );
    for s in plan {
        out.push_str(&format!(
            "{:<24} {:<10} {:>5.1}% {:>5.1}% {:>8} {:>7}%\n",
            s.node,
            s.region,
            s.load * 100.0,
            s.region_mean * 100.0,
            s.move_connections,
            s.percent
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_values_escape_control_characters() {
        assert_eq!(esc("cn-sh"), "cn-sh");
        assert_eq!(esc("a\u{1b}[31mb\u{7}"), "a\\x1b[31mb\\x07");
        assert_eq!(esc("\u{9b}2J"), "\\u{9b}2J");
        // A record written before records were bounded, or by hand: the table
        // still shows it without letting it act on the terminal.
        let mut n = NodeRecord::new(
            "gw-1",
            "203.0.113.10".parse().unwrap(),
            registry::Ports {
                tcp: Some(1),
                ..Default::default()
            },
            "\u{1b}]0;owned\u{7}",
            10,
            1,
        );
        n.applied_command = Some("c\u{1b}".into());
        let t = nodes_table(&[n], 0);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("\\x1b]0;owned\\x07"), "{t}");
    }
}
