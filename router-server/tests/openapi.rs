//! `openapi.yaml` and the server agree: every documented operation exists, every
//! status the server produces for it is documented, every body matches its schema
//! (including `additionalProperties: false`), and the documented parameter ranges are
//! exactly what the server accepts.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Method, Request};
use axum::Router;
use http_body_util::BodyExt;
use registry::memory::MemoryKv;
use registry::{Kv, Layout, NodeRecord, Ports};
use router_server::config::FileConfig;
use router_server::http::{router, Api};
use router_server::schedule::Snapshot;
use router_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

#[path = "openapi/schema.rs"]
mod schema;

use schema::{resolve, spec, validate};

fn node(id: &str, conns: u64) -> NodeRecord {
    NodeRecord {
        domain: Some("gw.example.com".into()),
        updated_ms: Some(1),
        ..NodeRecord::new(
            id,
            "192.0.2.1".parse().unwrap(),
            Ports {
                tcp: Some(8000),
                ws: None,
                wss: None,
            },
            "r",
            1000,
            conns,
        )
    }
}

const TOKEN: &str = "openapi-test-token";

async fn app(ready: bool) -> Router {
    let cfg = FileConfig::parse("[rate_limit]\nper_ip_per_sec = 1\nburst = 3").unwrap();
    let state = Arc::new(AppState::new(cfg));
    let kv = MemoryKv::new();
    let layout = Layout::default();
    let nodes = vec![node("a", 900), node("b", 10)];
    for n in &nodes {
        kv.put(&layout.node_key(&n.id), n.to_json(), None)
            .await
            .unwrap();
    }
    if ready {
        state.serving.snapshot.store(Some(Arc::new(Snapshot::build(
            nodes.into_iter().map(Arc::new),
            None,
            3,
            false,
        ))));
    }
    let target = router_server::admin::Target {
        name: "default".into(),
        kv,
        layout,
    };
    let admin = router_server::admin::router(
        &state,
        vec![target],
        0,
        router_server::admin::Tokens::flag(TOKEN).unwrap(),
    );
    router(Api::new(&state), Some(admin)).layer(MockConnectInfo(
        "127.0.0.1:1".parse::<SocketAddr>().unwrap(),
    ))
}

/// Sends a request and checks the answer against the spec's operation `path`/`method`.
async fn check(
    app: &Router,
    spec: &Value,
    method: Method,
    path_tpl: &str,
    uri: &str,
    body: Option<&str>,
) -> u16 {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(Body::from(body.unwrap_or("").to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let op = &spec["paths"][path_tpl][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{method} {path_tpl} is not in openapi.yaml");
    let documented = resolve(spec, &op["responses"][status.to_string()]);
    assert!(
        documented.is_object(),
        "{method} {uri} answered {status}, which openapi.yaml does not list"
    );
    let content = documented["content"]
        .as_object()
        .expect("documented content");
    let media = content
        .keys()
        .find(|k| ctype.starts_with(k.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{method} {uri}: content type {ctype} not documented ({:?})",
                content.keys()
            )
        });
    if media == "application/json" {
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        validate(
            spec,
            &content[media]["schema"],
            &v,
            &format!("{method} {uri} {status}"),
        )
        .unwrap();
    }
    status
}

/// `/gateways`: an answer, a bad count, no node for the protocol, a URI too long, and
/// the rate limit's refusal.
async fn check_gateways(app: &Router, spec: &Value) {
    let g = "/gateways";
    assert_eq!(
        check(
            app,
            spec,
            Method::GET,
            g,
            "/gateways?count=2&proto=tcp&region=r",
            None
        )
        .await,
        200
    );
    assert_eq!(
        check(app, spec, Method::GET, g, "/gateways?count=0", None).await,
        400
    );
    assert_eq!(
        check(app, spec, Method::GET, g, "/gateways?proto=wss", None).await,
        503
    );
    let long = format!("/gateways?x={}", "y".repeat(5000));
    assert_eq!(check(app, spec, Method::GET, g, &long, None).await, 414);
    // The burst is 3: keep asking until refused.
    let mut last = 0;
    for _ in 0..10 {
        last = check(app, spec, Method::GET, g, "/gateways", None).await;
    }
    assert_eq!(last, 429);
}

/// The health, metrics and fleet pages.
async fn check_pages(app: &Router, spec: &Value) {
    for p in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/ops",
        "/ops/ops.js",
        "/ops/morphdom.js",
        "/ops/ops.css",
        "/ops/fleet.json",
        "/ops/blocks.json",
    ] {
        assert_eq!(check(app, spec, Method::GET, p, p, None).await, 200);
    }
}

/// The admin API's node list and each node action: accepted, unknown node, bad id.
async fn check_node_actions(app: &Router, spec: &Value) {
    assert_eq!(
        check(app, spec, Method::GET, "/admin/nodes", "/admin/nodes", None).await,
        200
    );
    for action in ["drain", "serve"] {
        let tpl = format!("/admin/nodes/{{id}}/{action}");
        assert_eq!(
            check(
                app,
                spec,
                Method::POST,
                &tpl,
                &format!("/admin/nodes/a/{action}"),
                None
            )
            .await,
            202
        );
        assert_eq!(
            check(
                app,
                spec,
                Method::POST,
                &tpl,
                &format!("/admin/nodes/zz/{action}"),
                None
            )
            .await,
            404
        );
        assert_eq!(
            check(
                app,
                spec,
                Method::POST,
                &tpl,
                &format!("/admin/nodes/a%20b/{action}"),
                None
            )
            .await,
            400
        );
    }
}

/// Migrations and rebalancing: accepted, and out of range.
async fn check_migrate_and_rebalance(app: &Router, spec: &Value) {
    let m = "/admin/nodes/{id}/migrate";
    assert_eq!(
        check(
            app,
            spec,
            Method::POST,
            m,
            "/admin/nodes/a/migrate",
            Some(r#"{"percent":20}"#)
        )
        .await,
        202
    );
    assert_eq!(
        check(
            app,
            spec,
            Method::POST,
            m,
            "/admin/nodes/a/migrate",
            Some(r#"{"percent":200}"#)
        )
        .await,
        400
    );
    let r = "/admin/rebalance";
    assert_eq!(
        check(
            app,
            spec,
            Method::POST,
            r,
            "/admin/rebalance?dry_run=true",
            None
        )
        .await,
        200
    );
    assert_eq!(
        check(
            app,
            spec,
            Method::POST,
            r,
            "/admin/rebalance?tolerance=2",
            None
        )
        .await,
        400
    );
    assert_eq!(
        check(app, spec, Method::POST, r, "/admin/rebalance", None).await,
        200
    );
}

/// A router with no snapshot yet: `/gateways` and `/readyz` answer 503.
async fn check_not_ready(spec: &Value) {
    let g = "/gateways";
    let not_ready = app_not_ready().await;
    assert_eq!(
        check(&not_ready, spec, Method::GET, g, "/gateways", None).await,
        503
    );
    assert_eq!(
        check(&not_ready, spec, Method::GET, "/readyz", "/readyz", None).await,
        503
    );
}

#[tokio::test]
async fn every_documented_operation_and_answer_matches_the_server() {
    let spec = spec();
    let app = app(true).await;
    check_gateways(&app, &spec).await;
    check_pages(&app, &spec).await;
    check_node_actions(&app, &spec).await;
    check_migrate_and_rebalance(&app, &spec).await;
    check_not_ready(&spec).await;
}

async fn app_not_ready() -> Router {
    app(false).await
}

#[tokio::test]
async fn documented_parameter_ranges_are_what_the_server_accepts() {
    let spec = spec();
    let params = spec["paths"]["/gateways"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["proto", "count", "region", "isp", "ip_version"]);
    let schema = |n: &str| &params.iter().find(|p| p["name"] == n).unwrap()["schema"];
    let protos: Vec<&str> = schema("proto")["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(protos, registry::Proto::ALL.map(|p| p.as_str()));
    let (min, max) = (
        schema("count")["minimum"].as_i64().unwrap(),
        schema("count")["maximum"].as_i64().unwrap(),
    );
    for n in -1..=12 {
        let ok = router_server::http::parse_params(Some(&format!("count={n}"))).is_ok();
        assert_eq!(ok, (min..=max).contains(&n), "count={n}");
    }
    assert_eq!(schema("count")["default"], 3);
    // region and isp: the same name pattern, which the parser holds them to.
    for n in ["region", "isp"] {
        assert_eq!(schema(n)["pattern"], "^[A-Za-z0-9._-]{1,64}$");
        for (v, ok) in [
            ("cmcc", true),
            ("", false),
            ("a b", false),
            (&"x".repeat(65)[..], false),
        ] {
            let parsed = router_server::http::parse_params(Some(&format!("{n}={v}")));
            assert_eq!(parsed.is_ok(), ok, "{n}={v:?}");
        }
    }
    assert_eq!(router_server::http::parse_params(None).unwrap().count, 3);
    for v in ["4", "6", "5"] {
        let documented = schema("ip_version")["enum"]
            .as_array()
            .unwrap()
            .contains(&Value::from(v));
        assert_eq!(
            router_server::http::parse_params(Some(&format!("ip_version={v}"))).is_ok(),
            documented
        );
    }
    let defaults = FileConfig::default();
    let backoff = &spec["components"]["schemas"]["Backoff"]["required"];
    assert_eq!(
        backoff.as_array().unwrap().len(),
        serde_json::to_value(defaults.backoff)
            .unwrap()
            .as_object()
            .unwrap()
            .len()
    );
}

/// A wrong token is 401 and, from a network that has failed too often, 429 with
/// Retry-After: both documented for every admin operation.
#[tokio::test]
async fn admin_refusals_are_documented() {
    let spec = spec();
    let app = app(true).await;
    let mut seen = Vec::new();
    for _ in 0..11 {
        let resp = app
            .clone()
            .oneshot(
                Request::get("/admin/nodes")
                    .header(header::AUTHORIZATION, "Bearer wrong-token-wrong-token")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        seen.push(resp.status().as_u16());
    }
    assert_eq!(seen.first(), Some(&401));
    assert_eq!(seen.last(), Some(&429));
    for (path, item) in spec["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            for status in ["401", "429"] {
                let documented = resolve(&spec, &op["responses"][status]);
                assert!(
                    documented.is_object(),
                    "{method} {path}: {status} not listed"
                );
                assert!(
                    documented["headers"]["Retry-After"].is_object() || status == "401",
                    "{method} {path}: 429 without Retry-After"
                );
            }
        }
    }
}

/// The property names of a serialised value, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// The documented properties of schema `name`, sorted.
fn documented(spec: &Value, name: &str) -> Vec<String> {
    keys(&spec["components"]["schemas"][name]["properties"])
}

/// The `gateway-api` crate, which the router writes and the SDK reads, is what the
/// document describes: every error code, and every field of the answer.
#[test]
fn the_api_crate_and_the_document_agree() {
    let spec = spec();
    let codes: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("the error codes are listed")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = gateway_api::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, ours);
    let gateway = gateway_api::Gateway {
        id: "gw".into(),
        ip: "192.0.2.1".parse().unwrap(),
        port: 1,
        proto: gateway_api::Proto::Tcp,
        region: "r".into(),
        dc: Some("dc".into()),
        isp: Some("ctcc".into()),
        domain: Some("gw.example".into()),
        load: 0.5,
    };
    let answer = gateway_api::GatewaysAnswer {
        gateways: vec![gateway],
        region: None,
        ttl_secs: 1,
        heartbeat_secs: 1,
        backoff: gateway_api::Backoff::default(),
        revision: 1,
        stale: false,
    };
    let v = serde_json::to_value(&answer).unwrap();
    assert_eq!(keys(&v), documented(&spec, "Gateways"));
    assert_eq!(keys(&v["gateways"][0]), documented(&spec, "Gateway"));
    assert_eq!(keys(&v["backoff"]), documented(&spec, "Backoff"));
    let schema = &spec["components"]["schemas"]["Gateways"];
    validate(&spec, schema, &v, "answer").unwrap();
    let err = serde_json::to_value(gateway_api::ErrorBody::new(
        gateway_api::ErrorCode::NoGateways,
        "m",
    ))
    .unwrap();
    validate(
        &spec,
        &spec["components"]["schemas"]["Error"],
        &err,
        "error",
    )
    .unwrap();
}

/// `GET /admin/explain`: its answer and its refusal as the spec describes them.
#[tokio::test]
async fn explain_matches_the_spec() {
    let spec = spec();
    let app = app(true).await;
    let e = "/admin/explain";
    for uri in [
        "/admin/explain?ip=192.0.2.9",
        "/admin/explain?ip=2001:db8::1&region=r&isp=ctcc&count=1&proto=tcp&ip_version=6",
        "/admin/explain?ip=192.0.2.9&proto=wss",
    ] {
        assert_eq!(check(&app, &spec, Method::GET, e, uri, None).await, 200);
    }
    for uri in ["/admin/explain", "/admin/explain?ip=nope"] {
        assert_eq!(check(&app, &spec, Method::GET, e, uri, None).await, 400);
    }
    let not_ready = app_not_ready().await;
    let uri = "/admin/explain?ip=192.0.2.9";
    assert_eq!(
        check(&not_ready, &spec, Method::GET, e, uri, None).await,
        200
    );
}
