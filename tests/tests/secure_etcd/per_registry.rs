//! `ctl --config FILE`: the registries of a router's configuration file, each secured
//! with its own CA, client certificate and key, addressed by `ctl` with the
//! credentials the file gives each (one set of `--etcd-*` flags could not reach both).

use std::time::Duration;

use harness::{run, Etcd, NodeJson, TestCa, P};

/// One data centre's etcd with its own CA, holding node `id`.
fn dc(id: &str) -> (TestCa, Etcd) {
    let ca = TestCa::new(&format!("etcd CA of {id}"));
    let etcd = Etcd::secure(&ca, &[]);
    etcd.put(&format!("{P}/nodes/{id}"), &NodeJson::new(id).build());
    (ca, etcd)
}

/// The file's `[[registries]]` entry for `etcd`, signed in as root by certificate.
fn entry(name: &str, etcd: &Etcd) -> String {
    let t = etcd.tls();
    format!(
        "[[registries]]\nname = \"{name}\"\netcd = \"{}\"\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        etcd.endpoints(),
        t.ca.display(),
        t.root_cert.display(),
        t.root_key.display()
    )
}

#[test]
fn ctl_addresses_each_registry_of_the_config_file_with_its_own_credentials() {
    let (_ca_sh, sh) = dc("gw-sh");
    let (_ca_bj, bj) = dc("gw-bj");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("router.toml");
    std::fs::write(&config, entry("sh", &sh) + &entry("bj", &bj)).unwrap();
    let file = config.to_str().unwrap();

    let (status, out) = run(
        "router-server",
        &["ctl", "--config", file, "nodes"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{out}");
    for (id, dc) in [("gw-sh", "sh"), ("gw-bj", "bj")] {
        assert!(
            out.lines()
                .any(|l| l.contains(id) && l.split_whitespace().any(|w| w == dc)),
            "{id} in DC {dc}: {out}"
        );
    }

    // A registry under another prefix is named, with the flag that reaches it.
    std::fs::write(
        &config,
        entry("sh", &sh) + "prefix = \"/other/v1\"\n" + &entry("bj", &bj),
    )
    .unwrap();
    let (status, out) = run(
        "router-server",
        &["ctl", "--config", file, "nodes"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("--prefix /other/v1"), "{out}");
}
