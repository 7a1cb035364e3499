//! What `/gateways` answers and refuses: the contract's shape and errors, readiness,
//! unknown routes, CORS, metrics.

use super::*;

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
