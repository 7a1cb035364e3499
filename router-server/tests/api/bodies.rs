//! Request bodies: over the limit, refused before they are read.

use super::*;

/// A DNS query for `gw.example.test. A`, as DoH carries it.
fn dns_query() -> Vec<u8> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let name = Name::from_ascii("gw.example.test.").unwrap();
    let mut m = Message::new();
    m.add_query(Query::query(name, RecordType::A));
    m.to_vec().unwrap()
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

/// `GET /dns-query` is answered ahead of the framework's router (a hot route, as
/// `/gateways` is) with exactly the router's answers: a query, a bad parameter, a
/// missing one; and not ahead of it when CORS is configured.
#[tokio::test]
async fn the_hot_doh_route_answers_as_the_router_does() {
    use base64::Engine;
    let config = FileConfig::parse("[dns]\nzone = \"gw.example.test\"\n").unwrap();
    // One node: every answer names it, so two answers can be compared byte for byte.
    let state = state_with(config, Some(vec![node("sh-1", "cn-sh", 10)]));
    let app = router_server::http::routes::app(Api::new(&state), None);
    let hot = app.hot_for("/dns-query").expect("a hot DoH route");
    let mut query = hickory_proto::op::Message::new();
    query
        .set_id(7)
        .set_recursion_desired(true)
        .add_query(hickory_proto::op::Query::query(
            "gw.example.test.".parse().unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(query.to_vec().unwrap());
    let peer: SocketAddr = "127.0.0.1:5".parse().unwrap();
    for uri in [
        format!("/dns-query?dns={b64}"),
        format!("/dns-query?x=1&dns={b64}"),
        "/dns-query?dns=%%%".to_string(),
        "/dns-query?dns=AAAA".to_string(),
        "/dns-query".to_string(),
    ] {
        let uri: axum::http::Uri = uri.parse().unwrap();
        let start = std::time::Instant::now();
        let (fast, end) = hot.call(start, peer, &uri, &axum::http::HeaderMap::new());
        assert!(end >= start, "{uri}: answered before it arrived");
        let slow = app
            .router
            .clone()
            .layer(MockConnectInfo(peer))
            .oneshot(Request::get(uri.clone()).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(fast.status(), slow.status(), "{uri}");
        for h in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            assert_eq!(fast.headers().get(&h), slow.headers().get(&h), "{uri}: {h}");
        }
        if fast.status() == StatusCode::OK {
            // Cacheable for the answer's TTL (the zone's 10 s), as RFC 8484 §5.1 asks.
            assert_eq!(fast.headers()[header::CACHE_CONTROL], "max-age=10", "{uri}");
            assert_eq!(
                fast.headers()[header::CONTENT_TYPE],
                "application/dns-message"
            );
        }
        let fast = fast.into_body().collect().await.unwrap().to_bytes();
        let slow = slow.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(fast, slow, "{uri}");
    }
    let resolve = app
        .router
        .clone()
        .layer(MockConnectInfo(peer))
        .oneshot(
            Request::get("/resolve?name=gw.example.test&type=A")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resolve.status(), StatusCode::OK);
    assert_eq!(resolve.headers()[header::CACHE_CONTROL], "max-age=10");
    assert_eq!(
        resolve.headers()[header::CONTENT_TYPE],
        "application/dns-json"
    );
    let cors =
        FileConfig::parse("[dns]\nzone = \"gw.example.test\"\n[http]\ncors_origins = [\"*\"]\n")
            .unwrap();
    let app = router_server::http::routes::app(Api::new(&state_with(cors, None)), None);
    assert!(app.hot_for("/dns-query").is_none() && app.hot_for("/gateways").is_none());
}
