//! `GET /admin/explain` in process: the same answer `/gateways` gives the address,
//! every other node with its reason, the admin API's token, 400 with the contract's
//! error body for bad input, and nothing counted.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use registry::memory::MemoryKv;
use registry::NodeState;
use router_server::config::FileConfig;
use router_server::schedule::Snapshot;
use router_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

mod common;

use common::node;

const TOKEN: &str = "explain-test-token-0123";

/// A router for `peer` with a fleet in cn-sh and cn-bj, one record listed invalid.
fn app(peer: &str) -> (Router, AppState) {
    let cfg = FileConfig::parse(
        "[regions]\ncidrs = { \"198.51.100.0/24\" = \"cn-sh\" }\n[edge]\nblock = [\"203.0.113.0/24\"]",
    )
    .unwrap();
    let state = AppState::new(cfg);
    let mut draining = node("sh-draining", "cn-sh", 0);
    draining.state = NodeState::Draining;
    let fleet = vec![
        node("sh-1", "cn-sh", 100),
        node("sh-2", "cn-sh", 200),
        node("sh-3", "cn-sh", 300),
        node("sh-full", "cn-sh", 990),
        draining,
        node("bj-1", "cn-bj", 0),
    ];
    let snap = Snapshot::build(fleet.into_iter().map(Arc::new), None, 9, false);
    state.serving.snapshot.store(Some(Arc::new(snap)));
    state.status.invalid.lock().unwrap().insert(
        Arc::from("/gateway-router/v1/nodes/sh-evil"),
        "binding: region \"cn-bj\" is not one of cn-sh".into(),
    );
    (
        common::app(&state, Some((MemoryKv::new(), TOKEN)), peer),
        state,
    )
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect()
}

fn pending(state: &AppState) -> u64 {
    let snap = state.serving.snapshot.load_full().unwrap();
    let herd = state.serving.herd_view();
    snap.nodes.iter().map(|e| e.pending(&herd)).sum()
}

#[tokio::test]
async fn explain_gives_the_answer_of_gateways_and_counts_nothing() {
    let (app, state) = app("198.51.100.7:4000");
    let (status, x) = get(&app, "/admin/explain?ip=198.51.100.7", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{x}");
    assert_eq!(x["region"], "cn-sh");
    assert_eq!(x["region_from"], "cidr");
    assert_eq!(x["region_cidr"], "198.51.100.0/24");
    assert_eq!(x["network"], "198.51.100.0/24");
    assert_eq!(x["outcome"], "answered");
    assert_eq!(x["revision"], 9);
    assert_eq!(ids(&x["answer"]), ["sh-1", "sh-2", "sh-3"]);
    let reasons: Vec<(&str, &str)> = x["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("bj-1", "other_region"),
            ("sh-draining", "draining"),
            ("sh-full", "full")
        ]
    );
    assert_eq!(x["invalid"][0]["id"], "sh-evil");
    assert_eq!(x["invalid"][0]["kind"], "binding");
    assert_eq!(pending(&state), 0, "explaining is not answering");
    // The client's own request gets the same nodes, and counts.
    let (status, g) = get(&app, "/gateways", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&g["gateways"]), ids(&x["answer"]));
    assert_eq!(pending(&state), 1);
}

#[tokio::test]
async fn explain_takes_the_gateways_parameters_and_names_the_block() {
    let (app, _) = app("127.0.0.1:1");
    let (_, x) = get(
        &app,
        "/admin/explain?ip=::ffff:198.51.100.7&region=cn-bj&isp=ctcc&count=1",
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        x["ip"], "198.51.100.7",
        "an IPv4-mapped address counts as IPv4"
    );
    assert_eq!(
        (x["region"].as_str(), x["region_from"].as_str()),
        (Some("cn-bj"), Some("query"))
    );
    assert_eq!(x["isp"], "ctcc");
    assert_eq!(ids(&x["answer"]), ["bj-1"]);
    let (_, x) = get(
        &app,
        "/admin/explain?ip=198.51.100.7&proto=wss",
        Some(TOKEN),
    )
    .await;
    assert_eq!(x["outcome"], "no_gateways");
    let (_, x) = get(&app, "/admin/explain?ip=203.0.113.5", Some(TOKEN)).await;
    assert_eq!(x["outcome"], "blocked");
    assert_eq!(x["guard"]["blocked"]["source"], "config");
    assert_eq!(x["guard"]["blocked"]["cidr"], "203.0.113.0/24");
}

#[tokio::test]
async fn explain_needs_the_token_and_a_valid_query() {
    let (app, _) = app("127.0.0.1:1");
    assert_eq!(
        get(&app, "/admin/explain?ip=192.0.2.1", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        "/admin/explain",
        "/admin/explain?ip=not-an-ip",
        "/admin/explain?ip=192.0.2.1&ip=192.0.2.2",
        "/admin/explain?ip=192.0.2.1&count=0",
        "/admin/explain?ip=192.0.2.1&isp=a%20b",
    ] {
        let (status, body) = get(&app, bad, Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{bad}");
    }
}
