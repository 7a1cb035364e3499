//! Who a client is and how often it may ask: per-address and per-/64 limits, proxies
//! trusted for `X-Forwarded-For`, IPv4 on a dual-stack listener.

use super::*;

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

/// `GET /gateways` forwarded for `ip` by the peer.
fn forwarded(ip: &str) -> Request<Body> {
    Request::get("/gateways")
        .header("x-forwarded-for", ip)
        .body(Body::empty())
        .unwrap()
}
