//! The `GET /gateways` query string.

use registry::record::{is_name_char, IpFamily};
use registry::Proto;

use super::error::ApiError;

/// A parsed `GET /gateways` query.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaysParams {
    /// `proto`, default tcp.
    pub proto: Proto,
    /// `count`, default 3.
    pub count: usize,
    /// `region`, overriding the CIDR lookup.
    pub region: Option<String>,
    /// `isp`, overriding the lookup of the client's ISP (an app on a mobile network
    /// knows its carrier).
    pub isp: Option<String>,
    /// `ip_version`.
    pub family: Option<IpFamily>,
}

/// Parses the query string strictly: each known parameter at most once and in range;
/// unknown parameters are ignored (cache busters, tracking tags).
pub fn parse_params(raw: Option<&str>) -> Result<GatewaysParams, ApiError> {
    const DEFAULTS: GatewaysParams = GatewaysParams {
        proto: Proto::Tcp,
        count: 3,
        region: None,
        isp: None,
        family: None,
    };
    if raw.is_none_or(str::is_empty) {
        return Ok(DEFAULTS);
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let mut p = GatewaysParams {
        proto: Proto::Tcp,
        count: 3,
        region: None,
        isp: None,
        family: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in &pairs {
        let key = match k.as_str() {
            "proto" | "count" | "region" | "isp" | "ip_version" => k.as_str(),
            _ => continue,
        };
        if seen.contains(&key) {
            return Err(ApiError::invalid(format!("{key}: given more than once")));
        }
        seen.push(key);
        match key {
            "proto" => {
                p.proto = v
                    .parse()
                    .map_err(|_| ApiError::invalid(format!("proto: {v:?} is not tcp, ws or wss")))?
            }
            "count" => {
                p.count = match v.parse::<usize>() {
                    Ok(n @ 1..=10) => n,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "count: {v:?} is not an integer 1-10"
                        )))
                    }
                }
            }
            "region" | "isp" => {
                let ok = !v.is_empty() && v.len() <= 64 && v.chars().all(is_name_char);
                if !ok {
                    return Err(ApiError::invalid(format!(
                        "{key}: {v:?} is not 1-64 of A-Z a-z 0-9 - _ ."
                    )));
                }
                *if key == "region" {
                    &mut p.region
                } else {
                    &mut p.isp
                } = Some(v.clone());
            }
            _ => {
                p.family = Some(match v.as_str() {
                    "4" => IpFamily::V4,
                    "6" => IpFamily::V6,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "ip_version: {v:?} is not 4 or 6"
                        )))
                    }
                })
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn params() {
        let p = parse_params(Some(
            "proto=wss&count=10&region=cn-sh&isp=cmcc&ip_version=6&x=1",
        ))
        .unwrap();
        assert_eq!(
            p,
            GatewaysParams {
                proto: Proto::Wss,
                count: 10,
                region: Some("cn-sh".into()),
                isp: Some("cmcc".into()),
                family: Some(IpFamily::V6)
            }
        );
        assert_eq!(parse_params(None).unwrap().count, 3);
        for bad in [
            "proto=udp",
            "count=0",
            "count=11",
            "count=x",
            "count=-1",
            "region=",
            "region=a/b",
            "isp=",
            "isp=a b",
            "isp=x&isp=y",
            "ip_version=5",
            "proto=tcp&proto=ws",
        ] {
            let e = parse_params(Some(bad)).expect_err(bad);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            let key = bad.split('=').next().unwrap();
            assert!(e.message.starts_with(key), "{bad}: {}", e.message);
        }
    }
}
