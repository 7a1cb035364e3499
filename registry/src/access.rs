//! Least privilege in etcd for the contract's key layout: the roles and users that
//! `router-server ctl auth plan` prints and `ctl auth apply` creates.
//!
//! | who | role | may |
//! |---|---|---|
//! | router `R` | `gateway-router-R` | read `P/`; read and write `P/routers/R` and `P/outcomes/R` (plus write `P/commands/` and `P/audit/` with `--router-admin`, for the admin API and `/ops`) |
//! | agent of node `N` | `gateway-agent-N` | read and write `P/nodes/N` and `P/applied/N`; read `P/commands/N` and `P/blocklist/` |
//! | operator `O` | `gateway-operator` | read `P/`; write `P/commands/`, `P/bindings/`, `P/blocklist/`, `P/policy/` and `P/audit/` |
//!
//! Nobody but operators writes `P/bindings/` (what each node may claim),
//! `P/blocklist/` or `P/policy/`: a compromised gateway host cannot widen its own
//! binding or steer clients.
//!
//! Each user's name is what etcd authenticates: the common name of its client
//! certificate under `--client-cert-auth`, or a user with a password. An agent's user
//! is its node id, a router's its `--router-id`.
//!
//! Applying is idempotent: roles, permissions and users that exist are left as they
//! are (a password is never changed here), and what is missing is added. Nothing is
//! ever revoked or deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use etcd_client::{Permission, UserAddOptions};

use crate::etcd::EtcdKv;
use crate::keys::Layout;
use crate::kv::KvError;

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Range reads and watches.
    Read,
    /// Puts and deletes (and, through them, lease revocation).
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// etcdctl's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }

    /// Whether `self` allows everything `want` does.
    pub fn covers(self, want: Access) -> bool {
        self == Access::ReadWrite || self == want
    }
}

/// One permission: a key, or every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Perm {
    /// What it allows.
    pub access: Access,
    /// The key, or the prefix when `prefix`.
    pub key: String,
    /// Every key starting with `key`.
    pub prefix: bool,
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.access.as_str(), self.key)?;
        if self.prefix {
            f.write_str(" --prefix")?;
        }
        Ok(())
    }
}

/// A role and the permissions it must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePlan {
    /// Role name.
    pub name: String,
    /// Its permissions.
    pub perms: Vec<Perm>,
}

/// A user and the role it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlan {
    /// User name (a certificate's common name, or a password user).
    pub name: String,
    /// The role granted to it.
    pub role: String,
}

/// Who gets access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    /// Router ids (`router-server serve --router-id`).
    pub routers: Vec<String>,
    /// Node ids of agents.
    pub agents: Vec<String>,
    /// Operators' user names (for `ctl`).
    pub operators: Vec<String>,
    /// Routers serve the admin API (`--admin-token`, `/ops` buttons) and so write
    /// commands too.
    pub router_admin: bool,
}

/// The roles and users for `who` under `layout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Roles first (a user can only be granted a role that exists).
    pub roles: Vec<RolePlan>,
    /// Then users.
    pub users: Vec<UserPlan>,
}

fn perm(access: Access, key: String, prefix: bool) -> Perm {
    Perm {
        access,
        key,
        prefix,
    }
}

/// The plan for `who` under `layout`.
pub fn plan(layout: &Layout, who: &Principals) -> Plan {
    let all = layout.prefix().to_string() + "/";
    let mut roles = Vec::new();
    let mut users = Vec::new();
    for r in dedup(&who.routers) {
        let role = format!("gateway-router-{r}");
        let mut perms = vec![
            perm(Access::Read, all.clone(), true),
            perm(Access::ReadWrite, layout.router_key(r), false),
            perm(Access::ReadWrite, layout.outcome_key(r), false),
        ];
        if who.router_admin {
            perms.push(perm(Access::Write, layout.commands_prefix(), true));
            perms.push(perm(Access::Write, layout.audit_prefix(), true));
        }
        roles.push(RolePlan {
            name: role.clone(),
            perms,
        });
        users.push(UserPlan {
            name: r.clone(),
            role,
        });
    }
    for a in dedup(&who.agents) {
        let role = format!("gateway-agent-{a}");
        roles.push(RolePlan {
            name: role.clone(),
            perms: vec![
                perm(Access::ReadWrite, layout.node_key(a), false),
                perm(Access::ReadWrite, layout.applied_key(a), false),
                perm(Access::Read, layout.command_key(a), false),
                perm(Access::Read, layout.blocklist_prefix(), true),
            ],
        });
        users.push(UserPlan {
            name: a.clone(),
            role,
        });
    }
    let operators = dedup(&who.operators);
    if !operators.is_empty() {
        roles.push(RolePlan {
            name: "gateway-operator".into(),
            perms: vec![
                perm(Access::Read, all, true),
                perm(Access::Write, layout.commands_prefix(), true),
                perm(Access::Write, layout.bindings_prefix(), true),
                perm(Access::Write, layout.blocklist_prefix(), true),
                perm(Access::Write, layout.policy_prefix(), true),
                perm(Access::Write, layout.audit_prefix(), true),
            ],
        });
        for o in operators {
            users.push(UserPlan {
                name: o.clone(),
                role: "gateway-operator".into(),
            });
        }
    }
    Plan { roles, users }
}

fn dedup(names: &[String]) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    names.iter().filter(|n| seen.insert(n.as_str())).collect()
}

/// What etcd holds now: each role's permissions, each user's roles.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// Role name → permissions.
    pub roles: BTreeMap<String, Vec<Perm>>,
    /// User name → roles.
    pub users: BTreeMap<String, Vec<String>>,
}

impl Existing {
    fn has_perm(&self, role: &str, want: &Perm) -> bool {
        self.roles.get(role).is_some_and(|perms| {
            perms.iter().any(|p| {
                p.key == want.key && p.prefix == want.prefix && p.access.covers(want.access)
            })
        })
    }
}

/// One change `apply` makes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `etcdctl role add NAME`.
    AddRole(String),
    /// `etcdctl role grant-permission ROLE ACCESS KEY [--prefix]`.
    Grant(String, Perm),
    /// `etcdctl user add NAME` (a certificate identity, or with a generated password).
    AddUser(String),
    /// `etcdctl user grant-role USER ROLE`.
    GrantRole(String, String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddRole(r) => write!(f, "role add {r}"),
            Step::Grant(r, p) => write!(f, "role grant-permission {r} {p}"),
            Step::AddUser(u) => write!(f, "user add {u}"),
            Step::GrantRole(u, r) => write!(f, "user grant-role {u} {r}"),
        }
    }
}

/// The steps that take `existing` to `plan`; what already holds is left out.
pub fn steps(plan: &Plan, existing: &Existing) -> Vec<Step> {
    let mut out = Vec::new();
    for r in &plan.roles {
        if !existing.roles.contains_key(&r.name) {
            out.push(Step::AddRole(r.name.clone()));
        }
        for p in &r.perms {
            if !existing.has_perm(&r.name, p) {
                out.push(Step::Grant(r.name.clone(), p.clone()));
            }
        }
    }
    for u in &plan.users {
        let roles = existing.users.get(&u.name);
        if roles.is_none() {
            out.push(Step::AddUser(u.name.clone()));
        }
        if !roles.is_some_and(|rs| rs.contains(&u.role)) {
            out.push(Step::GrantRole(u.name.clone(), u.role.clone()));
        }
    }
    out
}

/// Reads every role's permissions and every user's roles from etcd (the caller must be
/// `root`, or auth disabled).
pub async fn existing(kv: &EtcdKv) -> Result<Existing, KvError> {
    let roles = kv
        .with_client("role list", |mut c| async move { c.role_list().await })
        .await?
        .roles()
        .to_vec();
    let mut out = Existing::default();
    for role in roles {
        let r = role.clone();
        let resp = kv
            .with_client("role get", move |mut c| {
                let r = r.clone();
                async move { c.role_get(r).await }
            })
            .await?;
        let perms = resp
            .permissions()
            .iter()
            .filter_map(|p| {
                let access = match p.get_type() {
                    0 => Access::Read,
                    1 => Access::Write,
                    2 => Access::ReadWrite,
                    _ => return None,
                };
                Some(perm(access, p.key_str().ok()?.to_string(), p.is_prefix()))
            })
            .collect();
        out.roles.insert(role, perms);
    }
    let users = kv
        .with_client("user list", |mut c| async move { c.user_list().await })
        .await?
        .users()
        .to_vec();
    for user in users {
        let u = user.clone();
        let resp = kv
            .with_client("user get", move |mut c| {
                let u = u.clone();
                async move { c.user_get(u).await }
            })
            .await?;
        out.users.insert(user, resp.roles().to_vec());
    }
    Ok(out)
}

/// Applies one step. A user is added with `password`, or as a certificate identity
/// (no password) without one.
pub async fn apply(kv: &EtcdKv, step: &Step, password: Option<&str>) -> Result<(), KvError> {
    let step = step.clone();
    let password = password.map(str::to_string);
    kv.with_client("auth", move |mut c| {
        let (step, password) = (step.clone(), password.clone());
        async move {
            match step {
                Step::AddRole(r) => c.role_add(r).await.map(drop),
                Step::Grant(r, p) => {
                    let mut perm = match p.access {
                        Access::Read => Permission::read(p.key),
                        Access::Write => Permission::write(p.key),
                        Access::ReadWrite => Permission::read_write(p.key),
                    };
                    if p.prefix {
                        perm = perm.with_prefix();
                    }
                    c.role_grant_permission(r, perm).await.map(drop)
                }
                Step::AddUser(u) => match password {
                    Some(pw) => c.user_add(u, pw, None).await.map(drop),
                    None => c
                        .user_add(u, "", Some(UserAddOptions::new().with_no_pwd()))
                        .await
                        .map(drop),
                },
                Step::GrantRole(u, r) => c.user_grant_role(u, r).await.map(drop),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Principals {
        Principals {
            routers: vec!["r1".into()],
            agents: vec!["gw-1".into(), "gw-2".into(), "gw-1".into()],
            operators: vec!["alice".into()],
            router_admin: false,
        }
    }

    #[test]
    fn each_principal_gets_only_its_part_of_the_layout() {
        let p = plan(&Layout::new("/g"), &who());
        let names: Vec<&str> = p.roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway-router-r1",
                "gateway-agent-gw-1",
                "gateway-agent-gw-2",
                "gateway-operator"
            ]
        );
        let text = |r: &RolePlan| r.perms.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            text(&p.roles[0]),
            [
                "read /g/ --prefix",
                "readwrite /g/routers/r1",
                "readwrite /g/outcomes/r1"
            ]
        );
        assert_eq!(
            text(&p.roles[1]),
            [
                "readwrite /g/nodes/gw-1",
                "readwrite /g/applied/gw-1",
                "read /g/commands/gw-1",
                "read /g/blocklist/ --prefix"
            ]
        );
        assert_eq!(
            text(&p.roles[3]),
            [
                "read /g/ --prefix",
                "write /g/commands/ --prefix",
                "write /g/bindings/ --prefix",
                "write /g/blocklist/ --prefix",
                "write /g/policy/ --prefix",
                "write /g/audit/ --prefix"
            ]
        );
        // Only operators write bindings and the block list; an agent writes neither.
        for r in &p.roles {
            let writes = |key: &str| {
                r.perms
                    .iter()
                    .any(|p| key.starts_with(&p.key) && p.access.covers(Access::Write))
            };
            let operator = r.name == "gateway-operator";
            assert_eq!(writes("/g/bindings/gw-1"), operator, "{}", r.name);
            assert_eq!(writes("/g/blocklist/k"), operator, "{}", r.name);
            assert_eq!(writes("/g/policy/k"), operator, "{}", r.name);
        }
        let users: Vec<(&str, &str)> = p
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.role.as_str()))
            .collect();
        assert_eq!(
            users,
            [
                ("r1", "gateway-router-r1"),
                ("gw-1", "gateway-agent-gw-1"),
                ("gw-2", "gateway-agent-gw-2"),
                ("alice", "gateway-operator")
            ]
        );
        let admin = plan(
            &Layout::new("/g"),
            &Principals {
                router_admin: true,
                ..who()
            },
        );
        let perms: Vec<String> = admin.roles[0]
            .perms
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            perms[perms.len() - 2..],
            ["write /g/commands/ --prefix", "write /g/audit/ --prefix"]
        );
    }

    #[test]
    fn steps_add_only_what_is_missing() {
        let p = plan(&Layout::new("/g"), &who());
        let all = steps(&p, &Existing::default());
        assert_eq!(all.len(), 5 + 2 + 4 + 4 + 6 + 4 * 2);
        let mut existing = Existing::default();
        existing.roles.insert(
            "gateway-agent-gw-1".into(),
            vec![
                // readwrite covers read.
                perm(Access::ReadWrite, "/g/commands/gw-1".into(), false),
                perm(Access::ReadWrite, "/g/nodes/gw-1".into(), false),
            ],
        );
        existing
            .users
            .insert("gw-1".into(), vec!["gateway-agent-gw-1".into()]);
        let rest = steps(&p, &existing);
        let gw1: Vec<String> = rest
            .iter()
            .map(|s| s.to_string())
            .filter(|s| s.contains("gw-1"))
            .collect();
        // A role made before the block list existed gains its read on the next apply.
        assert_eq!(
            gw1,
            [
                "role grant-permission gateway-agent-gw-1 readwrite /g/applied/gw-1",
                "role grant-permission gateway-agent-gw-1 read /g/blocklist/ --prefix"
            ]
        );
        // A read where a write is wanted is not enough.
        existing.roles.insert(
            "gateway-operator".into(),
            vec![perm(Access::Read, "/g/commands/".into(), true)],
        );
        assert!(steps(&p, &existing).iter().any(|s| s.to_string()
            == "role grant-permission gateway-operator write /g/commands/ --prefix"));
    }
}
