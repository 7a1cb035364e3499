//! `ctl bind` and `ctl bindings`: the operator's limits on what each node may claim.

use ipnet::IpNet;
use registry::binding::{Binding, BindingError};
use registry::{Kv, Layout, NodeRecord};
use serde::Serialize;

use super::{change, esc, fail, Target};
use crate::config::CtlOp;
use registry::audit::Author;

/// What `ctl bind ID` writes, before it is checked.
struct Wanted {
    ips: Vec<IpNet>,
    regions: Vec<String>,
    isps: Vec<String>,
    max_capacity: Option<u64>,
    domain_suffixes: Vec<String>,
}

impl Wanted {
    /// The binding, checked as routers will read it (list lengths and the rest).
    fn binding(&self) -> Result<Binding, BindingError> {
        let mut v = serde_json::Map::new();
        let mut list = |key: &str, items: Vec<String>| {
            if !items.is_empty() {
                v.insert(key.into(), items.into());
            }
        };
        list("ips", self.ips.iter().map(|n| n.to_string()).collect());
        list("regions", self.regions.clone());
        list("isps", self.isps.clone());
        list("domain_suffixes", self.domain_suffixes.clone());
        if let Some(max) = self.max_capacity {
            v.insert("max_capacity".into(), max.into());
        }
        let bytes = serde_json::to_vec(&v).expect("a JSON object serializes");
        Binding::parse(&bytes)
    }
}

/// Runs `ctl bind` or `ctl bindings` over the targets; returns the exit status.
pub(super) async fn run(targets: &[Target], layout: &Layout, op: CtlOp, who: &Author) -> i32 {
    match op {
        CtlOp::Bindings { json } => list(targets, layout, json).await,
        CtlOp::Bind {
            id,
            ips,
            regions,
            isps,
            max_capacity,
            domain_suffixes,
            remove,
        } => {
            if remove {
                return unbind(targets, layout, &id, who).await;
            }
            let wanted = Wanted {
                ips,
                regions,
                isps,
                max_capacity,
                domain_suffixes,
            };
            let binding = match wanted.binding() {
                Ok(b) => b,
                Err(e) => registry::cli::exit_invalid(e),
            };
            bind(targets, layout, &id, &binding, who).await
        }
        _ => unreachable!("only bind and bindings come here"),
    }
}

/// The targets holding `key`, or the exit status of a registry that failed.
async fn holders(targets: &[Target], key: &str) -> Result<Vec<usize>, i32> {
    let mut found = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        match t.kv.get(key).await {
            Ok(Some(_)) => found.push(i),
            Ok(None) => {}
            Err(e) => return Err(fail(&format!("registry {} ({}): {e}", t.name, t.spec))),
        }
    }
    Ok(found)
}

/// Writes the binding into the registry that holds the node (or its binding).
async fn bind(
    targets: &[Target],
    layout: &Layout,
    id: &str,
    binding: &Binding,
    who: &Author,
) -> i32 {
    let key = layout.binding_key(id);
    let i = if targets.len() == 1 {
        0
    } else {
        let nodes = match holders(targets, &layout.node_key(id)).await {
            Ok(h) => h,
            Err(code) => return code,
        };
        let found = if nodes.is_empty() {
            // Not registered yet: where its binding already is, if anywhere.
            match holders(targets, &key).await {
                Ok(h) => h,
                Err(code) => return code,
            }
        } else {
            nodes
        };
        match found.as_slice() {
            [i] => *i,
            [] => {
                return fail(&format!(
                    "node {id} is in no registry: give only the one to bind it in with --registry"
                ))
            }
            many => {
                let names: Vec<&str> = many.iter().map(|&i| targets[i].name.as_str()).collect();
                return fail(&format!(
                    "node {id} is in registries {}: give only the one to address with --registry",
                    names.join(" and ")
                ));
            }
        }
    };
    let t = &targets[i];
    let value = binding.to_json();
    if let Err(code) = change(t, layout, who, "bind", &key, Some(&value)).await {
        return code;
    }
    let at = if targets.len() > 1 {
        format!(" in registry {}", t.name)
    } else {
        String::new()
    };
    println!("bound {id}{at}: {}", String::from_utf8_lossy(&value));
    // Say now what routers are about to do with the node's current record.
    if let Ok(Some(kv)) = t.kv.get(&layout.node_key(id)).await {
        if let Ok(record) = NodeRecord::parse(id, &kv.value) {
            match binding.check(&record) {
                Ok(()) => println!("{id}'s current record is inside the binding"),
                Err(v) => println!(
                    "{id}'s current record is outside the binding ({}): routers refuse it until it or the binding changes",
                    esc(&v.to_string())
                ),
            }
        }
    }
    0
}

/// Deletes the node's binding from the registry that holds it.
async fn unbind(targets: &[Target], layout: &Layout, id: &str, who: &Author) -> i32 {
    let key = layout.binding_key(id);
    let found = match holders(targets, &key).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    match found.as_slice() {
        [] => fail(&format!("node {id} has no binding")),
        [i] => match change(&targets[*i], layout, who, "unbind", &key, None).await {
            Ok(_) => {
                println!("binding of {id} removed");
                0
            }
            Err(code) => code,
        },
        many => {
            let names: Vec<&str> = many.iter().map(|&i| targets[i].name.as_str()).collect();
            fail(&format!(
                "node {id} has bindings in registries {}: give only the one to address with --registry",
                names.join(" and ")
            ))
        }
    }
}

/// One stored binding, as listed.
#[derive(Serialize)]
struct Listed {
    registry: String,
    id: String,
    binding: Binding,
}

/// A stored value that does not parse (routers refuse its node's records).
#[derive(Serialize)]
struct Broken {
    registry: String,
    key: String,
    reason: String,
}

/// `ctl bindings`: every registry's bindings, with a DC column when there are several.
async fn list(targets: &[Target], layout: &Layout, json: bool) -> i32 {
    let prefix = layout.bindings_prefix();
    let mut listed = Vec::new();
    let mut broken = Vec::new();
    for t in targets {
        let l = match t.kv.list(&prefix).await {
            Ok(l) => l,
            Err(e) => {
                return fail(&format!(
                    "etcd at {} is unreachable or refused the request: {e}",
                    t.spec
                ))
            }
        };
        for kv in l.kvs {
            let id = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string();
            match Binding::parse(&kv.value) {
                Ok(binding) => listed.push(Listed {
                    registry: t.name.clone(),
                    id,
                    binding,
                }),
                Err(e) => broken.push(Broken {
                    registry: t.name.clone(),
                    key: kv.key.clone(),
                    reason: e.to_string(),
                }),
            }
        }
    }
    if json {
        let out = serde_json::json!({"bindings": listed, "broken": broken});
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return 0;
    }
    print!("{}", table(&listed, targets.len() > 1));
    for b in &broken {
        println!(
            "broken binding {}: {} (routers refuse the node's records)",
            esc(&b.key),
            esc(&b.reason)
        );
    }
    0
}

/// The `ctl bindings` table; a claim left unbound shows `*`.
fn table(listed: &[Listed], with_dc: bool) -> String {
    fn cell<T: ToString>(items: &Option<Vec<T>>) -> String {
        match items {
            None => "*".into(),
            Some(v) => v
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
    let dc_width = listed
        .iter()
        .map(|l| l.registry.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut out = String::new();
    let row = |out: &mut String, dc: &str, cols: [&str; 6]| {
        if with_dc {
            out.push_str(&format!("{dc:<dc_width$} "));
        }
        out.push_str(&format!(
            "{:<24} {:<34} {:<12} {:<12} {:>12} {}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]
        ));
    };
    row(
        &mut out,
        "DC",
        [
            "ID",
            "IPS",
            "REGIONS",
            "ISPS",
            "MAX_CAPACITY",
            "DOMAIN_SUFFIXES",
        ],
    );
    for l in listed {
        let b = &l.binding;
        let max = b
            .max_capacity
            .map(|m| m.to_string())
            .unwrap_or_else(|| "*".into());
        row(
            &mut out,
            &esc(&l.registry),
            [
                &esc(&l.id),
                &cell(&b.ips),
                &cell(&b.regions),
                &cell(&b.isps),
                &max,
                &cell(&b.domain_suffixes),
            ],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, value: &str) -> Listed {
        Listed {
            registry: "default".into(),
            id: id.into(),
            binding: Binding::parse(value.as_bytes()).unwrap(),
        }
    }

    #[test]
    fn table_shows_each_claim_and_escapes_ids() {
        let t = table(
            &[
                listed(
                    "gw-1",
                    r#"{"ips":["203.0.113.0/28"],"regions":["cn-sh"],"max_capacity":1000}"#,
                ),
                listed("evil\u{1b}[2J", "{}"),
            ],
            false,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID "), "{t}");
        assert!(lines[1].contains("203.0.113.0/28") && lines[1].contains("cn-sh"));
        assert!(lines[1].contains("1000"));
        assert!(!t.contains('\u{1b}'), "{t:?}");
        assert!(lines[2].starts_with("evil\\x1b[2J"), "{t}");
    }

    #[test]
    fn wanted_bindings_are_checked_like_stored_ones() {
        let w = Wanted {
            ips: vec!["203.0.113.0/28".parse().unwrap()],
            regions: vec!["cn-sh".into()],
            isps: vec![],
            max_capacity: Some(5),
            domain_suffixes: vec![".gw.example.com".into()],
        };
        let b = w.binding().unwrap();
        assert_eq!(b.isps, None, "a flag not given leaves the claim unbound");
        assert_eq!(b.max_capacity, std::num::NonZeroU64::new(5));
        let too_many = Wanted {
            ips: vec![],
            regions: (0..65).map(|i| format!("r{i}")).collect(),
            isps: vec![],
            max_capacity: None,
            domain_suffixes: vec![],
        };
        assert!(matches!(
            too_many.binding().unwrap_err(),
            BindingError::Invalid {
                field: "regions",
                ..
            }
        ));
    }
}
