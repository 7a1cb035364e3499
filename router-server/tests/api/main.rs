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
use registry::{Kv, Layout, NodeRecord, NodeState};
use router_server::clock::LimiterClock;
use router_server::config::FileConfig;
use router_server::http::{router, Api};
use router_server::schedule::Snapshot;
use router_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod answers;
mod bodies;
mod clients;

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

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    get_with(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn fleet() -> Vec<NodeRecord> {
    vec![
        node("sh-1", "cn-sh", 500),
        node("sh-2", "cn-sh", 100),
        node("bj-1", "cn-bj", 0),
        node("gz-1", "cn-gz", 10),
    ]
}

fn retry_after(headers: &axum::http::HeaderMap) -> u64 {
    headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

const TOKEN: &str = "s3cret-s3cret-s3cret";

use common::{node, send as get_with};

fn app_with(config: FileConfig, nodes: Option<Vec<NodeRecord>>, peer: &str) -> (Router, AppState) {
    let state = state_with(config, nodes);
    (common::app(&state, None, peer), state)
}

fn admin_app(kv: Arc<MemoryKv>) -> Router {
    common::app(
        &AppState::new(FileConfig::default()),
        Some((kv, TOKEN)),
        "127.0.0.1:9",
    )
}
