//! The HTTP API in-process (`oneshot`): every error path of the contract, readiness,
//! client-IP and region resolution, CORS, limits, and the admin API on the in-memory
//! registry.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use governor::clock::FakeRelativeClock;
use http_body_util::BodyExt;
use registry::memory::MemoryKv;
use registry::{Kv, Layout, NodeRecord, NodeState, Ports};
use router_server::clock::LimiterClock;
use router_server::config::FileConfig;
use router_server::http::{router, Api};
use router_server::schedule::Snapshot;
use router_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

fn node(id: &str, region: &str, conns: u64) -> NodeRecord {
    NodeRecord {
        domain: Some(format!("{id}.example.com")),
        ..NodeRecord::new(
            id,
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(8000),
                ws: Some(8080),
                wss: None,
            },
            region,
            1000,
            conns,
        )
    }
}

/// Router state serving `nodes` (revision 7), or not ready when `None`.
fn state_with(config: FileConfig, nodes: Option<Vec<NodeRecord>>) -> AppState {
    state_on(config, nodes, LimiterClock::default())
}

/// [`state_with`], the per-client limiters on `clock`.
fn state_on(config: FileConfig, nodes: Option<Vec<NodeRecord>>, clock: LimiterClock) -> AppState {
    let state = AppState::with_clock(config, clock);
    if let Some(nodes) = nodes {
        let snap = Snapshot::build(nodes.into_iter().map(Arc::new), None, 7, false);
        state.serving.snapshot.store(Some(Arc::new(snap)));
    }
    state
}

fn app_with(config: FileConfig, nodes: Option<Vec<NodeRecord>>, peer: &str) -> (Router, AppState) {
    let state = state_with(config, nodes);
    let peer: SocketAddr = peer.parse().unwrap();
    (
        router(Api::new(&state), None).layer(MockConnectInfo(peer)),
        state,
    )
}

/// `GET /gateways` forwarded for `ip` by the peer.
fn forwarded(ip: &str) -> Request<Body> {
    Request::get("/gateways")
        .header("x-forwarded-for", ip)
        .body(Body::empty())
        .unwrap()
}

fn retry_after(headers: &axum::http::HeaderMap) -> u64 {
    headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    get_with(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn get_with(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn fleet() -> Vec<NodeRecord> {
    vec![
        node("sh-1", "cn-sh", 500),
        node("sh-2", "cn-sh", 100),
        node("bj-1", "cn-bj", 0),
        node("gz-1", "cn-gz", 10),
    ]
}

#[tokio::test]
async fn answer_has_the_contract_shape() {
    let cfg = FileConfig::parse(
        "[regions]\ncidrs = { \"127.0.0.0/8\" = \"cn-sh\" }\nfallbacks = { cn-sh = [\"cn-gz\"] }",
    )
    .unwrap();
    let (app, _) = app_with(cfg, Some(fleet()), "127.0.0.1:5000");
    let (status, headers, body) = get(&app, "/gateways").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let ids: Vec<&str> = body["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sh-2", "sh-1", "gz-1"],
        "region, then fallback, least loaded first"
    );
    let g = &body["gateways"][0];
    assert_eq!(g["ip"], "192.0.2.1");
    assert_eq!(g["port"], 8000);
    assert_eq!(g["proto"], "tcp");
    assert_eq!(g["domain"], "sh-2.example.com");
    assert_eq!(g["load"], 0.1);
    assert_eq!(body["region"], "cn-sh");
    assert_eq!(body["ttl_secs"], 300);
    assert_eq!(body["heartbeat_secs"], 240);
    assert_eq!(body["backoff"]["factor"], 1.6);
    assert_eq!(body["revision"], 7);
    assert_eq!(body["stale"], false);
    // ?region overrides the CIDR lookup; ws port when asked.
    let (_, _, body) = get(&app, "/gateways?region=cn-bj&count=1&proto=ws").await;
    assert_eq!(body["gateways"][0]["id"], "bj-1");
    assert_eq!(body["gateways"][0]["port"], 8080);
    assert_eq!(body["region"], "cn-bj");
}

#[tokio::test]
async fn every_400() {
    let (app, _) = app_with(FileConfig::default(), Some(fleet()), "127.0.0.1:5000");
    for q in [
        "proto=udp",
        "proto=",
        "count=0",
        "count=11",
        "count=abc",
        "count=2.5",
        "region=",
        "region=%2Fetc",
        "ip_version=5",
        "ip_version=v4",
        "count=1&count=2",
        "proto=%ff",
    ] {
        let (status, _, body) = get(&app, &format!("/gateways?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{q}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn not_ready_before_the_first_snapshot() {
    let (app, state) = app_with(FileConfig::default(), None, "127.0.0.1:5000");
    let (status, _, body) = get(&app, "/gateways").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(
        get(&app, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    state.serving.snapshot.store(Some(Arc::new(Snapshot::build(
        fleet().into_iter().map(Arc::new),
        None,
        1,
        false,
    ))));
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn no_gateways_has_retry_after() {
    let mut full = node("full", "r", 960);
    full.capacity = 1000;
    let mut draining = node("d", "r", 0);
    draining.state = NodeState::Draining;
    let (app, _) = app_with(
        FileConfig::default(),
        Some(vec![full, draining]),
        "127.0.0.1:5000",
    );
    let (status, headers, body) = get(&app, "/gateways").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "no_gateways");
    assert!(retry_after(&headers) >= 1);
    let (app, _) = app_with(FileConfig::default(), Some(fleet()), "127.0.0.1:5000");
    let (status, _, body) = get(&app, "/gateways?proto=wss").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from("no_gateways"))
    );
    let (status, _, _) = get(&app, "/gateways?ip_version=6").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no IPv6 addresses in the fleet"
    );
}

#[tokio::test]
async fn rate_limit_429_per_client_ip_with_retry_after() {
    let cfg = FileConfig::parse(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[rate_limit]\nper_ip_per_sec = 1\nburst = 2",
    )
    .unwrap();
    let (app, state) = app_with(cfg, Some(fleet()), "10.0.0.1:5000");
    assert_eq!(
        get_with(&app, forwarded("203.0.113.1")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&app, forwarded("203.0.113.1")).await.0,
        StatusCode::OK
    );
    let (status, headers, body) = get_with(&app, forwarded("203.0.113.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(retry_after(&headers) >= 1);
    // Another client behind the same proxy has its own budget.
    assert_eq!(
        get_with(&app, forwarded("203.0.113.2")).await.0,
        StatusCode::OK
    );
    assert_eq!(state.metrics.edge.rate_limited.get(), 1);
}

/// A reconnect storm of 10,000 clients behind one carrier-grade NAT address passes at
/// the default limit; one address still cannot go on without bound. The limiter runs on
/// a fake clock, so the storm takes no time however slow the machine is, and the refill
/// is exactly what the test advances.
#[tokio::test]
async fn the_default_limit_lets_a_nat_storm_through() {
    let cfg = FileConfig::parse("trusted_proxies = [\"10.0.0.0/8\"]").unwrap();
    // Room for the whole storm, so only the limit can refuse.
    let big = NodeRecord {
        capacity: 1_000_000,
        ..node("big", "cn-sh", 0)
    };
    let clock = FakeRelativeClock::default();
    let state = state_on(cfg, Some(vec![big]), LimiterClock::Fake(clock.clone()));
    let app = router(Api::new(&state), None).layer(MockConnectInfo(
        "10.0.0.1:5000".parse::<SocketAddr>().unwrap(),
    ));
    for i in 0..10_000 {
        let (status, _, body) = get_with(&app, forwarded("198.51.100.7")).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let (status, headers, _) = get_with(&app, forwarded("198.51.100.7")).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the limit holds past the storm"
    );
    assert_eq!(
        retry_after(&headers),
        1,
        "the next token is 1 ms away: wait 1 s"
    );
    assert_eq!(state.metrics.edge.rate_limited.get(), 1);
    // The sustained rate: 1,000 a second, one a millisecond.
    clock.advance(std::time::Duration::from_millis(10));
    let mut ok = 0;
    for _ in 0..20 {
        if get_with(&app, forwarded("198.51.100.7")).await.0 == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "10 ms refill 10 requests");
    assert_eq!(state.metrics.edge.rate_limited.get(), 11);
}

/// IPv6 clients are limited per /64: rotating addresses inside one buys nothing.
#[tokio::test]
async fn ipv6_clients_share_a_budget_per_64() {
    let cfg = FileConfig::parse(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[rate_limit]\nper_ip_per_sec = 1\nburst = 2",
    )
    .unwrap();
    let (app, _) = app_with(cfg, Some(fleet()), "10.0.0.1:5000");
    for ip in ["2001:db8:0:1::1", "2001:db8:0:1::2"] {
        assert_eq!(get_with(&app, forwarded(ip)).await.0, StatusCode::OK);
    }
    assert_eq!(
        get_with(&app, forwarded("2001:db8:0:1:ffff::3")).await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "same /64"
    );
    assert_eq!(
        get_with(&app, forwarded("2001:db8:0:2::1")).await.0,
        StatusCode::OK,
        "another /64"
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let cfg = FileConfig::parse(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[regions]\ncidrs = { \"203.0.113.0/24\" = \"cn-bj\", \"10.0.0.0/8\" = \"cn-gz\" }",
    )
    .unwrap();
    let req = |peer_trusted: bool| {
        let (app, _) = app_with(
            cfg.clone(),
            Some(fleet()),
            if peer_trusted {
                "10.0.0.1:1"
            } else {
                "198.51.100.1:1"
            },
        );
        (app, forwarded("203.0.113.9"))
    };
    let (app, r) = req(true);
    assert_eq!(get_with(&app, r).await.2["region"], "cn-bj");
    let (app, r) = req(false);
    assert_eq!(
        get_with(&app, r).await.2["region"],
        Value::Null,
        "untrusted peer: its own address, no CIDR match"
    );
}

/// A balancer missing from `trusted_proxies` is counted: requests with X-Forwarded-For
/// from a peer it does not list, never those from a listed one or without the header.
#[tokio::test]
async fn forwarded_for_from_an_unlisted_peer_is_counted() {
    let cfg = FileConfig::parse("trusted_proxies = [\"10.0.0.0/8\"]").unwrap();
    let counted = |state: &AppState| state.metrics.edge.forwarded_untrusted.get();
    let (app, state) = app_with(cfg.clone(), Some(fleet()), "198.51.100.1:1");
    for _ in 0..3 {
        get_with(&app, forwarded("203.0.113.9")).await;
    }
    get(&app, "/gateways").await;
    assert_eq!(counted(&state), 3);
    let (app, state) = app_with(cfg, Some(fleet()), "10.0.0.1:1");
    get_with(&app, forwarded("203.0.113.9")).await;
    assert_eq!(counted(&state), 0, "a listed balancer");
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_ipv4() {
    let cfg = FileConfig::parse(
        "trusted_proxies = [\"10.0.0.0/8\"]\n[regions]\ncidrs = { \"203.0.113.0/24\" = \"cn-bj\" }",
    )
    .unwrap();
    // A `[::]` listener reports IPv4 peers as IPv4-mapped IPv6 addresses.
    let (app, _) = app_with(cfg.clone(), Some(fleet()), "[::ffff:203.0.113.9]:1");
    assert_eq!(get(&app, "/gateways").await.2["region"], "cn-bj");
    // Also a trusted proxy's, and the hops it forwards.
    let (app, _) = app_with(cfg, Some(fleet()), "[::ffff:10.0.0.1]:1");
    let r = forwarded("::ffff:203.0.113.9");
    assert_eq!(get_with(&app, r).await.2["region"], "cn-bj");
}

#[tokio::test]
async fn a_server_without_peer_addresses_answers_500_not_a_guess() {
    let state = state_with(FileConfig::default(), Some(fleet()));
    // Served without `into_make_service_with_connect_info`: a wiring mistake.
    let app = router(Api::new(&state), None);
    let (status, _, body) = get(&app, "/gateways").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "internal");
}

#[tokio::test]
async fn oversized_uri_and_unknown_routes() {
    let (app, _) = app_with(FileConfig::default(), Some(fleet()), "127.0.0.1:5000");
    let long = format!("/gateways?pad={}", "x".repeat(5000));
    let (status, _, body) = get(&app, &long).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_eq!(body["error"]["code"], "uri_too_long");
    let (status, _, body) = get(&app, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    // Admin routes do not exist without a token.
    assert_eq!(get(&app, "/admin/nodes").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cors_for_configured_origins() {
    let cfg = FileConfig::parse("[http]\ncors_origins = [\"https://app.example.com\"]").unwrap();
    let (app, _) = app_with(cfg, Some(fleet()), "127.0.0.1:5000");
    let req = |origin: &str| {
        Request::get("/gateways")
            .header(header::ORIGIN, origin)
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, _) = get_with(&app, req("https://app.example.com")).await;
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    let (_, h, _) = get_with(&app, req("https://evil.example.com")).await;
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn metrics_name_what_the_router_sees() {
    let (app, _) = app_with(FileConfig::default(), Some(fleet()), "127.0.0.1:5000");
    get(&app, "/gateways").await;
    get(&app, "/gateways?count=0").await;
    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        "router_http_requests_total{route=\"/gateways\",status=\"200\"} 1",
        "router_http_requests_total{route=\"/gateways\",status=\"400\"} 1",
        "router_http_request_duration_seconds_bucket",
        "router_registry_connected",
        "router_snapshot_revision",
        "router_protect_active",
        "router_invalid_records",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

const TOKEN: &str = "s3cret-s3cret-s3cret";

fn admin_app(kv: Arc<MemoryKv>) -> Router {
    let state = AppState::new(FileConfig::default());
    let target = router_server::admin::Target {
        name: "default".into(),
        kv,
        layout: Layout::default(),
    };
    let admin = router_server::admin::router(
        &state,
        vec![target],
        0,
        router_server::admin::Tokens::flag(TOKEN).unwrap(),
    );
    router(Api::new(&state), Some(admin)).layer(MockConnectInfo(
        "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
    ))
}

async fn post(app: &Router, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let (status, _, body) = get_with(app, req.body(Body::from(body.to_string())).unwrap()).await;
    (status, body)
}

#[tokio::test]
async fn admin_rejections_write_nothing() {
    let kv = MemoryKv::new();
    let layout = Layout::default();
    kv.put(
        &layout.node_key("sh-1"),
        node("sh-1", "cn-sh", 1).to_json(),
        None,
    )
    .await
    .unwrap();
    let app = admin_app(kv.clone());
    let longer = format!("{TOKEN}-");
    for token in [
        None,
        Some("wrong"),
        Some(&TOKEN[..TOKEN.len() - 1]),
        Some(longer.as_str()),
    ] {
        let (status, body) = post(&app, "/admin/nodes/sh-1/drain", token, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, body) = post(&app, "/admin/nodes/nobody/drain", Some(TOKEN), "").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &Value::from("unknown_node"))
    );
    for bad in [
        r#"{"percent":0}"#,
        r#"{"percent":101}"#,
        r#"{"percent":-3}"#,
        r#"{"percent":"x"}"#,
        "{}",
        "nope",
    ] {
        let (status, body) = post(&app, "/admin/nodes/sh-1/migrate", Some(TOKEN), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    assert!(
        kv.list(&layout.commands_prefix())
            .await
            .unwrap()
            .kvs
            .is_empty(),
        "nothing written"
    );
    let (status, body) = post(
        &app,
        "/admin/nodes/sh-1/migrate",
        Some(TOKEN),
        r#"{"percent":30}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let stored = kv.get(&layout.command_key("sh-1")).await.unwrap().unwrap();
    let cmd = registry::Command::parse(&stored.value).unwrap();
    assert_eq!(cmd.percent, Some(30));
    assert_eq!(body["command"]["id"], cmd.id.as_str());
}

/// A DNS query for `gw.example.test. A`, as DoH carries it.
fn dns_query() -> Vec<u8> {
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["gw", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn doh_post(body: Body, declared: Option<usize>) -> Request<Body> {
    let mut req =
        Request::post("/dns-query").header(header::CONTENT_TYPE, "application/dns-message");
    if let Some(len) = declared {
        req = req.header(header::CONTENT_LENGTH, len);
    }
    req.body(body).unwrap()
}

/// A body that never sends a byte: reading it would hang the request.
fn never() -> Body {
    Body::from_stream(futures::stream::pending::<
        Result<axum::body::Bytes, std::io::Error>,
    >())
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_they_are_read() {
    let config = FileConfig::parse("[dns]\nzone = \"gw.example.test\"\n").unwrap();
    let (app, _) = app_with(config, Some(fleet()), "127.0.0.1:9");
    let within = |req| async {
        tokio::time::timeout(std::time::Duration::from_secs(5), get_with(&app, req))
            .await
            .expect("answered without reading the body")
    };
    // A declared 2 MB DoH body (and one byte over a DNS message's 65,535): 413 at once.
    for declared in [2_000_000, 65_536] {
        let (status, _, body) = within(doh_post(never(), Some(declared))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{declared}: {body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    }
    // A chunked one is cut where it crosses the limit.
    let chunks = futures::stream::iter(
        (0..7).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 10_000]))),
    );
    let (status, _, body) = within(doh_post(Body::from_stream(chunks), None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // A real query is answered.
    let q = dns_query();
    let len = q.len();
    let resp = app
        .clone()
        .oneshot(doh_post(Body::from(q), Some(len)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/dns-message"
    );
    // Every other route takes 64 KiB at most: the admin API's JSON is small.
    let admin = admin_app(MemoryKv::new());
    let migrate = |body: Body, declared: Option<usize>| {
        let mut req = Request::post("/admin/nodes/sh-1/migrate")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(len) = declared {
            req = req.header(header::CONTENT_LENGTH, len);
        }
        req.body(body).unwrap()
    };
    let big = format!("{{\"percent\": 5, \"pad\": \"{}\"}}", "x".repeat(64 * 1024));
    for req in [
        migrate(never(), Some(1_000_000)),
        migrate(Body::from(big), None),
    ] {
        let (status, _, body) =
            tokio::time::timeout(std::time::Duration::from_secs(5), get_with(&admin, req))
                .await
                .expect("answered without reading the body");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    }
}

/// With an admin listener, the public application answers clients and health only:
/// the operator's routes are 404 `not_found` there, and served on the operator's one,
/// which answers no client route.
#[tokio::test]
async fn an_admin_listener_takes_the_operator_routes_off_the_public_one() {
    let state = state_with(FileConfig::default(), Some(fleet()));
    let peer = MockConnectInfo("127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let api = Api::new(&state);
    let public = router_server::http::routes::public_app(api.clone())
        .router
        .layer(peer);
    let operator = router_server::http::routes::operator_app(api, None)
        .router
        .layer(peer);
    for path in [
        "/ops",
        "/ops/ops.js",
        "/ops/fleet.json",
        "/ops/blocks.json",
        "/ops/summary.json",
        "/metrics",
        "/admin/nodes",
    ] {
        let (status, _, body) = get(&public, path).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{path} on the public listener"
        );
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    for path in ["/gateways", "/healthz", "/readyz"] {
        let (status, _, body) = get(&public, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    for path in [
        "/ops",
        "/ops/fleet.json",
        "/ops/blocks.json",
        "/ops/summary.json",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        let (status, _, body) = get(&operator, path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path} on the admin listener: {body}"
        );
    }
    let (status, _, _) = get(&operator, "/gateways").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no client route on the admin listener"
    );
}

/// Ten wrong tokens from a network are 401; the eleventh, and then every request from
/// that network (the right token too), is 429 `rate_limited` with Retry-After until the
/// budget refills; another network is not affected. Counted in
/// `router_admin_throttled_total`.
#[tokio::test]
async fn failed_admin_tokens_are_throttled_per_network() {
    let state = AppState::new(FileConfig::default());
    let target = router_server::admin::Target {
        name: "default".into(),
        kv: MemoryKv::new(),
        layout: Layout::default(),
    };
    let clock = FakeRelativeClock::default();
    let admin = router_server::admin::router_with_throttle(
        &state,
        vec![target],
        0,
        router_server::admin::Tokens::flag(TOKEN).unwrap(),
        router_server::admin::Throttle::new(LimiterClock::Fake(clock.clone())),
    );
    let app = router(Api::new(&state), Some(admin));
    let from = |ip: &str| {
        app.clone().layer(MockConnectInfo(
            format!("{ip}:9").parse::<SocketAddr>().unwrap(),
        ))
    };
    let (guesser, neighbour, elsewhere) = (
        from("198.51.100.7"),
        from("198.51.100.8"),
        from("198.51.101.7"),
    );
    let nodes = |token: &str| {
        Request::get("/admin/nodes")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    for i in 0..10 {
        let (status, _, _) = get_with(&guesser, nodes(&format!("guess-{i:012}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let (status, headers, body) = get_with(&guesser, nodes("guess-number-eleven")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let wait = retry_after(&headers);
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    // The right token from the same /24 is refused too: no token is compared.
    let (status, _, _) = get_with(&neighbour, nodes(TOKEN)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another network is served.
    let (status, _, body) = get_with(&elsewhere, nodes(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once the wait is over, the right token works again.
    clock.advance(std::time::Duration::from_secs(wait));
    let (status, _, body) = get_with(&neighbour, nodes(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = state.metrics.render_prometheus();
    assert!(
        text.lines().any(|l| l == "router_admin_throttled_total 2"),
        "{text}"
    );
}

/// A trusted network (`[edge] allow`) is not throttled for wrong admin tokens: twenty
/// wrong ones are all 401, and the right one is then served.
#[tokio::test]
async fn a_trusted_network_is_not_throttled_for_wrong_tokens() {
    let config = FileConfig::parse("[edge]\nallow = [\"198.51.100.0/24\"]").unwrap();
    let state = AppState::new(config);
    let target = router_server::admin::Target {
        name: "default".into(),
        kv: MemoryKv::new(),
        layout: Layout::default(),
    };
    let admin = router_server::admin::router(
        &state,
        vec![target],
        0,
        router_server::admin::Tokens::flag(TOKEN).unwrap(),
    );
    let app = router(Api::new(&state), Some(admin)).layer(MockConnectInfo(
        "198.51.100.7:9".parse::<SocketAddr>().unwrap(),
    ));
    let nodes = |token: &str| {
        Request::get("/admin/nodes")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    for i in 0..20 {
        let (status, _, _) = get_with(&app, nodes(&format!("guess-{i:012}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let (status, _, body) = get_with(&app, nodes(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
