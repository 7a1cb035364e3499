//! `GET /admin/explain?ip=IP[&region=R][&isp=I][&proto=P][&count=N][&ip_version=V]`:
//! what `/gateways` would answer that address, and why each other node is left out
//! ([`crate::explain`]). Reads what the router holds; counts no answer.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::Admin;
use crate::explain::{explain, Ask, Facts};
use crate::http::{parse_params, ApiError};

/// The handler: parse, read the router's state once, explain.
pub(super) async fn route(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let ask = ask(raw.as_deref())?;
    let s = &admin.serving;
    let invalid = admin.status.invalid.lock().expect("invalid lock").clone();
    let explanation = s.read(&admin.config, |&reading| {
        explain(
            &ask,
            &Facts {
                reading,
                guard: &s.guard,
                invalid: &invalid,
                herd: s.herd_view(),
                lagging: s.lagging.load(Ordering::Relaxed),
                now_ms: registry::now_ms(),
            },
        )
    });
    Ok(Json(explanation).into_response())
}

/// The query: `ip` (required) and `isp` here, the rest as `/gateways` takes them.
pub(super) fn ask(raw: Option<&str>) -> Result<Ask, ApiError> {
    let params = parse_params(raw)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let once = |key: &str| -> Result<Option<&str>, ApiError> {
        let mut values = pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        let first = values.next().map(String::as_str);
        match values.next() {
            Some(_) => Err(ApiError::invalid(format!("{key}: given more than once"))),
            None => Ok(first),
        }
    };
    let ip = match once("ip")? {
        None => return Err(ApiError::invalid("ip: required (the client's address)")),
        Some(v) => v
            .parse::<IpAddr>()
            .map_err(|_| ApiError::invalid(format!("ip: {v:?} is not an address")))?,
    };
    let isp = match once("isp")? {
        None => None,
        Some(v) => {
            let ok = !v.is_empty()
                && v.len() <= registry::record::MAX_NAME_LEN
                && v.chars().all(registry::record::is_name_char);
            if !ok {
                return Err(ApiError::invalid(format!(
                    "isp: {v:?} is not 1-64 of A-Z a-z 0-9 - _ ."
                )));
            }
            Some(v.to_string())
        }
    };
    Ok(Ask {
        ip,
        region: params.region,
        isp,
        proto: params.proto,
        count: params.count,
        family: params.family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked_like_the_gateways_one() {
        let a = ask(Some(
            "ip=::ffff:192.0.2.1&region=cn-sh&isp=ctcc&count=5&x=1",
        ))
        .unwrap();
        assert_eq!(
            a.ip.to_string(),
            "::ffff:192.0.2.1",
            "canonical when explained"
        );
        assert_eq!(a.region.as_deref(), Some("cn-sh"));
        assert_eq!(a.isp.as_deref(), Some("ctcc"));
        assert_eq!(a.count, 5);
        for (bad, key) in [
            ("", "ip"),
            ("ip=", "ip"),
            ("ip=example.com", "ip"),
            ("ip=192.0.2.1&ip=192.0.2.2", "ip"),
            ("ip=192.0.2.1&isp=", "isp"),
            ("ip=192.0.2.1&isp=a/b", "isp"),
            ("ip=192.0.2.1&region=a%20b", "region"),
            ("ip=192.0.2.1&count=11", "count"),
        ] {
            let e = ask(Some(bad)).expect_err(bad);
            assert!(e.message.starts_with(key), "{bad}: {}", e.message);
        }
    }
}
