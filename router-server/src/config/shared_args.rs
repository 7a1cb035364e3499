//! What `serve` and `ctl` both take from the command line: the etcd security flags
//! and the value parsers for endpoints, registries, the key prefix and principals.

registry::etcd_security_flags!(RouterEtcdFlags, "ROUTER");

pub(super) fn parse_etcd(s: &str) -> Result<String, String> {
    registry::etcd::parse_endpoints(s)
        .map(|v| v.join(","))
        .map_err(|e| e.to_string())
}

pub(super) fn parse_registry(s: &str) -> Result<(String, String), String> {
    let (name, urls) = s
        .trim()
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=URL[,URL...]"))?;
    let name = name.trim();
    registry::record::validate_id(name).map_err(|e| format!("registry name {name:?}: {e}"))?;
    Ok((name.to_string(), parse_etcd(urls)?))
}

pub(super) fn parse_prefix(s: &str) -> Result<String, String> {
    registry::keys::validate_prefix(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

pub(super) fn parse_principal(s: &str) -> Result<String, String> {
    registry::record::validate_id(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}
