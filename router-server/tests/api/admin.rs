//! The admin API in process: refusals that write nothing, its own listener, token
//! throttling per network.

use super::*;

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
        "/ops/morphdom.js",
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
