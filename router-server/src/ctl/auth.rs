//! `ctl auth plan` / `ctl auth apply`: least privilege in etcd (see
//! [`registry::access`] for the roles).

use std::io::Write;
use std::path::Path;

use registry::access::{self, Existing, Plan, Principals, Step};
use registry::etcd::EtcdKv;
use registry::{Kv, Layout};

use crate::config::{AuthOp, AuthWho};

/// Why `ctl auth` stops before etcd's roles are read or while it applies them.
#[derive(Debug, thiserror::Error)]
enum AuthError {
    /// Listing the registered nodes failed.
    #[error("listing {prefix}: {source}")]
    List {
        prefix: String,
        #[source]
        source: registry::KvError,
    },
    /// A password file cannot be created (it exists, or the directory is not writable).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A password file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `op`; returns the exit status.
pub(super) async fn run(kv: &EtcdKv, layout: &Layout, op: AuthOp) -> i32 {
    let (who, password_dir, apply) = match op {
        AuthOp::Plan(who) => (who, None, false),
        AuthOp::Apply { who, password_dir } => (who, password_dir, true),
    };
    let principals = match principals(kv, layout, who).await {
        Ok(p) => p,
        Err(e) => return fail(&e.to_string()),
    };
    if principals.routers.is_empty()
        && principals.agents.is_empty()
        && principals.operators.is_empty()
    {
        return fail("nobody to grant: give --routers, --agents (or --registered), --operators");
    }
    let plan = access::plan(layout, &principals);
    print_plan(layout, &plan);
    let existing = match access::existing(kv).await {
        Ok(e) => e,
        Err(e) if !apply => {
            println!("\n(could not read etcd's roles and users: {e}; every step is listed)");
            Existing::default()
        }
        Err(e) => {
            return fail(&format!(
                "cannot read etcd's roles and users (ctl must run as root): {e}"
            ))
        }
    };
    let steps = access::steps(&plan, &existing);
    if steps.is_empty() {
        println!("\nnothing to do: etcd already holds all of this");
        return 0;
    }
    if !apply {
        println!("\nto apply ({} steps, as etcdctl would):", steps.len());
        for s in &steps {
            println!("  etcdctl {s}");
        }
        return 0;
    }
    if let Some(dir) = &password_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(&format!("cannot create {}: {e}", dir.display()));
        }
    }
    println!("\napplying {} steps:", steps.len());
    for s in &steps {
        let password = match (s, &password_dir) {
            (Step::AddUser(u), Some(dir)) => match new_password_file(dir, u) {
                Ok(p) => Some(p),
                Err(e) => return fail(&e.to_string()),
            },
            _ => None,
        };
        if let Err(e) = access::apply(kv, s, password.as_deref()).await {
            return fail(&format!(
                "etcdctl {s}: {e} (steps before it were applied; running apply again finishes the rest)"
            ));
        }
        match (s, &password_dir) {
            (Step::AddUser(u), Some(dir)) => println!(
                "  done: {s} (password in {})",
                dir.join(format!("{u}.password")).display()
            ),
            (Step::AddUser(u), None) => println!(
                "  done: {s} (no password: authenticated by a client certificate whose CN is {u})"
            ),
            _ => println!("  done: {s}"),
        }
    }
    0
}

/// The principals named, plus every registered node with `--registered`.
async fn principals(kv: &EtcdKv, layout: &Layout, who: AuthWho) -> Result<Principals, AuthError> {
    let mut agents = who.agents;
    if who.registered {
        for prefix in [layout.nodes_prefix(), layout.applied_prefix()] {
            let listing = kv.list(&prefix).await.map_err(|source| AuthError::List {
                prefix: prefix.clone(),
                source,
            })?;
            for e in listing.kvs {
                if let Some(id) = e.key.strip_prefix(&prefix) {
                    if registry::record::validate_id(id).is_ok() && !agents.iter().any(|a| a == id)
                    {
                        agents.push(id.to_string());
                    }
                }
            }
        }
    }
    Ok(Principals {
        routers: who.routers,
        agents,
        operators: who.operators,
        router_admin: who.router_admin,
    })
}

fn print_plan(layout: &Layout, plan: &Plan) {
    println!(
        "least privilege under {} ({} roles, {} users):",
        layout.prefix(),
        plan.roles.len(),
        plan.users.len()
    );
    for r in &plan.roles {
        let perms: Vec<String> = r.perms.iter().map(|p| p.to_string()).collect();
        println!("  role {}: {}", r.name, perms.join("; "));
    }
    for u in &plan.users {
        println!("  user {} -> {}", u.name, u.role);
    }
}

/// Writes a new random password to `dir/user.password` (mode 0600, never over an
/// existing file) and returns it.
fn new_password_file(dir: &Path, user: &str) -> Result<String, AuthError> {
    use rand::distr::{Alphanumeric, SampleString};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{user}.password"));
    let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| AuthError::Create {
            path: path.clone(),
            source,
        })?;
    writeln!(f, "{password}").map_err(|source| AuthError::Write { path, source })?;
    Ok(password)
}

fn fail(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    1
}
