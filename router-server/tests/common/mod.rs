//! What the in-process HTTP tests share: a node record, a router over a state, a
//! request's answer read back.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use registry::memory::MemoryKv;
use registry::{Layout, NodeRecord, Ports};
use router_server::http::{router, Api};
use router_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

/// A serving node at 192.0.2.1 (TCP 8000, WS 8080, domain `{id}.example.com`) of
/// capacity 1,000 with `conns` connections.
pub(crate) fn node(id: &str, region: &str, conns: u64) -> NodeRecord {
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

/// The public routes of `state`, with the admin API on one in-memory registry
/// (`kv`) behind `token` when one is given, as seen from `peer`.
pub(crate) fn app(state: &AppState, admin: Option<(Arc<MemoryKv>, &str)>, peer: &str) -> Router {
    let admin = admin.map(|(kv, token)| {
        let target = router_server::admin::Target {
            name: "default".into(),
            kv,
            layout: Layout::default(),
        };
        router_server::admin::router(
            state,
            vec![target],
            0,
            router_server::admin::Tokens::flag(token).unwrap(),
        )
    });
    let peer: SocketAddr = peer.parse().unwrap();
    router(Api::new(state), admin).layer(MockConnectInfo(peer))
}

/// Status, headers and body (JSON, else the text as a JSON string) of `req`.
pub(crate) async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}
