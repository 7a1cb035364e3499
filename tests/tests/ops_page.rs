//! The fleet page in a real browser: headless Chromium driven through chromedriver
//! (Debian's `chromium` and `chromium-driver`), against a real router following real
//! agents in a real etcd. What the page shows must match the registry, follow it
//! without a reload, and drive the admin API only once a token is entered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use harness::{free_port, wait_until, Etcd, Proc, RouterProc, P};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token-0123";

/// chromedriver on a free loopback port, stopped with the test.
fn chromedriver() -> (Proc, String) {
    assert!(
        harness::which("chromedriver").is_some() && harness::which("chromium").is_some(),
        "chromium and chromedriver are needed: apt-get install chromium chromium-driver \
         (scripts/deps.sh --test installs them)"
    );
    let port = free_port();
    let arg = format!("--port={port}");
    let p = Proc::external("chromedriver", &[&arg, "--allowed-ips=127.0.0.1"]);
    p.wait_for_output("started successfully", Duration::from_secs(20));
    (p, format!("http://127.0.0.1:{port}"))
}

async fn browser(webdriver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": harness::which("chromium").unwrap(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        }),
    );
    // chromedriver listens on loopback over plain HTTP.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("a chromium session")
}

/// Evaluates `expr` in the page until it is `true`, or panics after `secs`.
async fn until(c: &Client, secs: u64, what: &str, expr: &str) {
    let start = Instant::now();
    let script = format!("return Boolean({expr});");
    loop {
        if c.execute(&script, vec![]).await.ok() == Some(Value::Bool(true)) {
            return;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let html = c.source().await.unwrap_or_default();
            panic!("timed out after {secs}s waiting for {what} ({expr}); page:\n{html}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eval(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return {expr};"), vec![]).await.unwrap()
}

fn row(id: &str) -> String {
    format!("document.querySelector('tr[data-node=\"{id}\"]')")
}

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target).unwrap();
    target.join("ops-page.png")
}

/// chromedriver and a Chromium session on the router's `/ops` page.
async fn open_ops(router: &RouterProc) -> (Proc, Client) {
    let base = format!("http://{}", router.addr);
    let (driver, webdriver) = chromedriver();
    let c = browser(&webdriver).await;
    c.goto(&format!("{base}/ops")).await.unwrap();
    (driver, c)
}

/// Four agents (gw-u unhealthy) and one record that does not parse, followed by a
/// router with a DNS zone and an admin token. Fields drop in order: router, agents,
/// load files, etcd.
struct SmallFleet {
    router: RouterProc,
    dns: std::net::SocketAddr,
    _agents: Vec<Proc>,
    /// gw-a's load file, which the test changes.
    a_load: PathBuf,
    _dir: tempfile::TempDir,
    _etcd: Etcd,
}

impl SmallFleet {
    fn start() -> SmallFleet {
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let load = |id: &str, n: u64| {
            let p = dir.path().join(id);
            std::fs::write(&p, n.to_string()).unwrap();
            p
        };
        let a_load = load("gw-a", 100);
        let b_load = load("gw-b", 500);
        let c_load = load("gw-c", 900);
        let file = |p: &PathBuf| format!("file:{}", p.display());
        let common = ["--port", "tcp=7000", "--report-min-change", "0"];
        let with = |load: &str, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = common.iter().map(|s| s.to_string()).collect();
            v.extend(["--load".to_string(), load.to_string()]);
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let spawn = |id: &str, region: &str, args: Vec<String>| {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::agent(&etcd, id, region, &refs)
        };
        let agents = vec![
            spawn("gw-a", "cn-sh", with(&file(&a_load), &[])),
            spawn("gw-b", "cn-sh", with(&file(&b_load), &[])),
            spawn("gw-c", "us-west", with(&file(&c_load), &[])),
            // Its health probe targets a port nothing listens on: unhealthy.
            spawn(
                "gw-u",
                "us-west",
                with("static:10", &["--health", "tcp:127.0.0.1:1"]),
            ),
        ];
        etcd.put(&format!("{P}/nodes/bad-node"), "this is not json");
        wait_until(Duration::from_secs(15), "agents registered", || {
            etcd.keys(&format!("{P}/nodes/")).len() == 5
        });
        let router = RouterProc::start(
            &etcd,
            "[dns]\nlisten = \"127.0.0.1:0\"\nzone = \"gw.example.test\"\n",
            &["--admin-token", TOKEN],
        );
        let dns = router
            .proc
            .wait_for_addr("answering DNS", Duration::from_secs(10));
        SmallFleet {
            router,
            dns,
            _agents: agents,
            a_load,
            _dir: dir,
            _etcd: etcd,
        }
    }
}

/// What the registry holds, as the page shows it: nodes and their states and loads,
/// regions, the invalid record, the data centre.
async fn shows_the_registry(c: &Client) {
    until(
        c,
        20,
        "four nodes",
        "document.querySelectorAll('tr[data-node]').length === 4",
    )
    .await;
    until(
        c,
        20,
        "gw-u unhealthy",
        &format!("{}.dataset.state === 'unhealthy'", row("gw-u")),
    )
    .await;
    for (id, state, load) in [
        ("gw-a", "serving", "0.1000"),
        ("gw-b", "serving", "0.5000"),
        ("gw-c", "serving", "0.9000"),
    ] {
        until(
            c,
            10,
            id,
            &format!(
                "{r}.dataset.state === '{state}' && {r}.querySelector('.bar').dataset.load === '{load}'",
                r = row(id)
            ),
        )
        .await;
    }
    assert_eq!(
        eval(
            c,
            "document.querySelector('section[data-region=\"cn-sh\"]') !== null"
        )
        .await,
        true
    );
    assert_eq!(
        eval(
            c,
            &format!("{}.closest('section').dataset.region", row("gw-c"))
        )
        .await,
        "us-west"
    );
    until(
        c,
        10,
        "the invalid record's key",
        "document.getElementById('invalid-list').textContent.includes('/nodes/bad-node')",
    )
    .await;
    until(
        c,
        10,
        "registry connected",
        "document.getElementById('status').dataset.connected === 'true'",
    )
    .await;
    // The data centres: the one registry, named `default`, connected; regions carry it.
    until(
        c,
        10,
        "the registry's row",
        "document.querySelector('#dc-list tr[data-registry=\"default\"] td[data-state=\"connected\"]') !== null",
    )
    .await;
    assert_eq!(
        eval(
            c,
            "document.querySelector('section[data-region=\"cn-sh\"]').dataset.dc"
        )
        .await,
        "default"
    );
}

/// DNS: the zone's answers by response code, counted as dig asks.
async fn shows_the_dns_answers(c: &Client, dns: std::net::SocketAddr) {
    for name in ["cn-sh.gw.example.test", "nowhere.gw.example.test"] {
        let out = std::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &dns.port().to_string(),
                name,
                "A",
                "+tries=1",
            ])
            .output()
            .expect("dig (apt-get install bind9-dnsutils; scripts/deps.sh --test installs it)");
        assert!(out.status.success());
    }
    until(
        c,
        10,
        "the DNS answers",
        "!document.getElementById('dns').hidden \
         && document.querySelector('#dns-list tr[data-dns=\"NOERROR\"] td[data-total=\"1\"]') !== null \
         && document.querySelector('#dns-list tr[data-dns=\"NXDOMAIN\"] td[data-total=\"1\"]') !== null",
    )
    .await;
    assert_eq!(
        eval(c, "document.getElementById('dns-zone').textContent").await,
        "gw.example.test"
    );
}

/// A load change moves the bar without a reload (the marker survives).
async fn follows_a_load_change(c: &Client, a_load: &Path) {
    c.execute("window.__sameDocument = 42; return 0;", vec![])
        .await
        .unwrap();
    std::fs::write(a_load, "700").unwrap();
    until(
        c,
        10,
        "gw-a's bar at 70 %",
        &format!(
            "{}.querySelector('.bar').dataset.load === '0.7000'",
            row("gw-a")
        ),
    )
    .await;
    let width = eval(
        c,
        &format!("{}.querySelector('.fill').style.width", row("gw-a")),
    )
    .await;
    assert_eq!(width, "70%", "the bar is 70 % wide");
    assert_eq!(eval(c, "window.__sameDocument").await, 42, "no reload");
}

/// The page redraws every second by patching what is there: the element `css` finds
/// before a poll is still in the page after it (with rows rebuilt instead, a click
/// whose press and release straddle a poll is lost, and a test's click finds a stale
/// element).
async fn survives_a_poll(c: &Client, css: &str) {
    let mark = format!(
        "window.__before = document.querySelector(\"{css}\"); \
         window.__polled = document.body.dataset.polled; return 0;"
    );
    c.execute(&mark, vec![]).await.unwrap();
    until(
        c,
        10,
        "a poll after the element was found",
        "document.body.dataset.polled !== window.__polled",
    )
    .await;
    assert_eq!(
        eval(
            c,
            &format!("window.__before === document.querySelector(\"{css}\")")
        )
        .await,
        Value::Bool(true),
        "{css}: the same element after a poll"
    );
}

/// A migrate percentage being typed keeps its value and the focus across polls, and
/// across its row's moves: gw-b served, then drained again, through the admin API goes
/// behind gw-a (problem nodes first, then the most loaded), then ahead of it again.
async fn keeps_what_is_typed(c: &Client, router: &RouterProc) {
    let field = c
        .find(Locator::Css("input[data-percent='gw-a']"))
        .await
        .unwrap();
    field.clear().await.unwrap();
    field.send_keys("35").await.unwrap();
    survives_a_poll(c, "input[data-percent='gw-a']").await;
    for (action, state) in [("serve", "serving"), ("drain", "draining")] {
        let path = format!("/admin/nodes/gw-b/{action}");
        let (code, body) =
            harness::http_request(router.addr, "POST", &path, Some(TOKEN), "").unwrap();
        assert_eq!(code, 202, "{action}: {body}");
        until(
            c,
            15,
            state,
            &format!("{}.dataset.state === '{state}'", row("gw-b")),
        )
        .await;
    }
    let after = format!(
        "{}.compareDocumentPosition({}) & Node.DOCUMENT_POSITION_FOLLOWING",
        row("gw-b"),
        row("gw-a")
    );
    assert_ne!(
        eval(c, &after).await,
        0,
        "gw-a's row is behind gw-b's again"
    );
    let typed = "document.querySelector(\"input[data-percent='gw-a']\")";
    assert_eq!(eval(c, &format!("{typed}.value")).await, "35");
    assert_eq!(
        eval(c, &format!("document.activeElement === {typed}")).await,
        Value::Bool(true),
        "still focused"
    );
}

/// The token enables the actions; drain gw-b through its button.
async fn drains_through_its_button(c: &Client, router: &RouterProc) {
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("token-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let drain = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(
            "button[data-action='drain'][data-node='gw-b']",
        ))
        .await
        .unwrap();
    survives_a_poll(c, "button[data-action='drain'][data-node='gw-b']").await;
    drain.click().await.unwrap();
    until(
        c,
        10,
        "drain accepted",
        "document.getElementById('action-result').dataset.status === '202'",
    )
    .await;
    until(
        c,
        15,
        "gw-b draining",
        &format!("{}.dataset.state === 'draining'", row("gw-b")),
    )
    .await;
    let answers = router.ids("/gateways?region=cn-sh&count=10");
    assert!(!answers.contains(&"gw-b".to_string()), "{answers:?}");
    assert!(answers.contains(&"gw-a".to_string()), "{answers:?}");
    assert_eq!(
        eval(c, "sessionStorage.getItem('gateway-router-admin-token')").await,
        TOKEN,
        "kept in the tab's session storage"
    );
}

/// The drain just made is under "Recent changes" (the audit trail, read with the
/// token); a gateway this client's network reports it cannot reach is listed as
/// demoted for it once the router judges the reports (every 5 s by default).
async fn lists_the_change_and_a_demotion(c: &Client, router: &RouterProc) {
    until(
        c,
        15,
        "the drain in the recent changes",
        "document.querySelector(\"tr[data-audit='drain']\") !== null \
         && !document.getElementById('audit').hidden",
    )
    .await;
    let failing = r#"{"gateway":"gw-a","result":"timeout","ms":250}"#;
    let report = format!(r#"{{"outcomes":[{}]}}"#, vec![failing; 20].join(","));
    let (code, body) =
        harness::http_request(router.addr, "POST", "/outcomes", None, &report).unwrap();
    assert_eq!(code, 204, "{body}");
    until(
        c,
        15,
        "gw-a demoted for this network",
        "document.getElementById('router').textContent.includes('demoted: gw-a for')",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_the_registry_follows_it_and_drains_through_its_button() {
    let fleet = SmallFleet::start();
    let (_driver, c) = open_ops(&fleet.router).await;
    shows_the_registry(&c).await;
    shows_the_dns_answers(&c, fleet.dns).await;
    // Read-only without a token: no action anywhere.
    assert_eq!(
        eval(
            &c,
            "document.querySelectorAll('button[data-action]').length"
        )
        .await,
        0
    );
    follows_a_load_change(&c, &fleet.a_load).await;
    drains_through_its_button(&c, &fleet.router).await;
    keeps_what_is_typed(&c, &fleet.router).await;
    lists_the_change_and_a_demotion(&c, &fleet.router).await;

    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshot_path(), &png).unwrap();
    c.close().await.unwrap();
}

/// Without `--admin-token` the page offers no action and the admin API is not there.
#[test]
fn without_an_admin_token_the_page_is_read_only() {
    let etcd = Etcd::start();
    let router = RouterProc::start(&etcd, "", &[]);
    let (status, fleet) = harness::get_json(router.addr, "/ops/fleet.json").unwrap();
    assert_eq!(status, 200);
    assert_eq!(fleet["router"]["admin"], false, "{fleet}");
    assert!(fleet["router"]["dns"].is_null(), "no zone, no DNS: {fleet}");
    let (status, _) = harness::http_get(router.addr, "/ops").unwrap();
    assert_eq!(status, 200);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer anything",
            &format!("http://{}/admin/nodes/x/drain", router.addr),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

/// 5,000 nodes in ten regions; region-07 holds one draining node (gw-00007) and one
/// full one (gw-00017).
async fn put_a_large_fleet(etcd: &Etcd, nodes: usize) {
    use registry::etcd::{EtcdKv, EtcdOptions};
    use registry::kv::Kv;
    let kv = EtcdKv::connect(&etcd.endpoint_list(), &EtcdOptions::default())
        .await
        .unwrap();
    let record = |i: usize| {
        let region = format!("region-{:02}", i % 10);
        // In region-07: one node draining, one full (over max_load).
        let (state, conns) = match i {
            7 => ("draining", 100),
            17 => ("serving", 999),
            _ => ("serving", (i as u64 * 37) % 800),
        };
        format!(
            r#"{{"id":"gw-{i:05}","ip":"10.0.{}.{}","ports":{{"tcp":7000}},"region":"{region}","state":"{state}","capacity":1000,"connections":{conns}}}"#,
            i / 250,
            i % 250 + 1
        )
    };
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(250) {
        let puts = chunk.iter().map(|&i| {
            let kv = &kv;
            let value = record(i).into_bytes();
            async move { kv.put(&format!("{P}/nodes/gw-{i:05}"), value, None).await }
        });
        for r in futures::future::join_all(puts).await {
            r.unwrap();
        }
    }
}

/// What a poll costs: region lines only, against the whole fleet.
fn polls_stay_small(router: &RouterProc) {
    let size = |path: &str| {
        let (status, body) = harness::http_get(router.addr, path).unwrap();
        assert_eq!(status, 200, "{path}");
        body.len()
    };
    let (summary, fleet) = (size("/ops/summary.json"), size("/ops/fleet.json"));
    assert!(
        summary * 50 < fleet,
        "a summary poll is {summary} B, the fleet {fleet} B"
    );
    let opened = size("/ops/summary.json?open=region-03");
    assert!(
        opened < 100_000,
        "one region opened: {opened} B (100 nodes listed)"
    );
    let (status, _) = harness::http_get(router.addr, "/ops/summary.json?limit=0").unwrap();
    assert_eq!(status, 400, "limit out of range");
}

/// Ten region lines and no node; problem first: region-07's line leads and counts its
/// two problem nodes.
async fn region_lines_problem_first(c: &Client) {
    until(
        c,
        20,
        "ten region lines, no node listed",
        "document.querySelectorAll('section[data-region]').length === 10 \
         && document.querySelectorAll('tr[data-node]').length === 0",
    )
    .await;
    assert_eq!(
        eval(
            c,
            "document.querySelector('section[data-region]').dataset.region"
        )
        .await,
        "region-07"
    );
    let counts = eval(
        c,
        "document.querySelector('section[data-region=\"region-07\"] .counts').textContent",
    )
    .await;
    let counts = counts.as_str().unwrap();
    assert!(
        counts.contains("1 overloaded")
            && counts.contains("1 draining")
            && counts.contains("498 serving"),
        "{counts}"
    );
}

/// Drill down: a click lists the region's nodes, the full and the draining first.
async fn a_click_opens_a_region(c: &Client) {
    c.find(Locator::Css("h2[data-toggle='region-07']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        c,
        20,
        "region-07's nodes",
        "document.querySelectorAll('section[data-region=\"region-07\"] tr[data-node]').length === 100",
    )
    .await;
    let mut first = Vec::new();
    for k in 1..=2 {
        let nth = format!(
            "document.querySelector('section[data-region=\"region-07\"] tbody tr:nth-child({k})').dataset.node"
        );
        first.push(eval(c, &nth).await);
    }
    assert_eq!(first, [json!("gw-00017"), json!("gw-00007")]);
    assert_eq!(
        eval(
            c,
            "document.querySelector('section[data-region=\"region-07\"] .more').dataset.more"
        )
        .await,
        "400"
    );
}

/// Search: a node of a closed region, by id.
async fn the_search_finds_a_node_of_a_closed_region(c: &Client) {
    c.find(Locator::Id("search"))
        .await
        .unwrap()
        .send_keys("gw-04321")
        .await
        .unwrap();
    until(
        c,
        20,
        "the search's one match",
        "!document.getElementById('found').hidden \
         && document.querySelectorAll('#found tr[data-node]').length === 1 \
         && document.querySelector('#found tr[data-node]').dataset.node === 'gw-04321'",
    )
    .await;
    assert_eq!(
        eval(
            c,
            "document.querySelector('section[data-region=\"region-01\"]').dataset.open"
        )
        .await,
        "false"
    );
}

/// At 5,000 nodes the page polls region lines, not the fleet: a region with problem
/// nodes comes first and says what they are, a region's nodes appear when its line is
/// clicked (problem nodes first), the search finds a node in a closed region, and each
/// poll stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fleet_is_summarised_by_region_opened_on_demand_and_searchable() {
    let etcd = Etcd::start();
    let nodes = 5_000;
    put_a_large_fleet(&etcd, nodes).await;
    let router = RouterProc::start(&etcd, "", &[]);
    wait_until(Duration::from_secs(30), "every node followed", || {
        harness::get_json(router.addr, "/ops/summary.json")
            .is_some_and(|(_, s)| s["nodes"] == nodes)
    });
    polls_stay_small(&router);

    let (_driver, c) = open_ops(&router).await;
    region_lines_problem_first(&c).await;
    a_click_opens_a_region(&c).await;
    the_search_finds_a_node_of_a_closed_region(&c).await;
    c.close().await.unwrap();
}
