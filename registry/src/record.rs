//! NodeRecord and Command: the JSON values stored in etcd, parsed and validated.
//!
//! Parsing is strict about what the contract requires and lenient about what it does
//! not: unknown fields are ignored (newer agents may add some), while a missing
//! required field, a wrong type or an out-of-range value makes the value invalid with a
//! reason a person can act on.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Why a stored value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The value is not JSON of the expected shape (missing field, wrong type).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON is well-formed but a value breaks the contract.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// True for the characters of node ids and region names, `A-Z a-z 0-9 . _ -`: names
/// made of them need no escaping in keys, query strings or JSON.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks a node id against `[A-Za-z0-9._-]{1,64}`.
pub fn validate_id(id: &str) -> Result<(), RecordError> {
    if id.is_empty() || id.len() > 64 {
        return Err(invalid("id", format!("length {} is not 1-64", id.len())));
    }
    if let Some(c) = id.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(
            "id",
            format!("character {c:?} is not one of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// The longest region, zone or ISP name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest command id (and so `applied_command` and a hook's `command`), in bytes.
pub const MAX_COMMAND_ID: usize = 128;
/// The most labels a record carries.
pub const MAX_LABELS: usize = 32;
/// The longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 64;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// The longest hook error message, in bytes.
pub const MAX_HOOK_ERROR: usize = 512;

/// Checks a region, zone or ISP name: 1-64 bytes of [`is_name_char`].
fn validate_name(field: &'static str, name: &str) -> Result<(), RecordError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("length {} is not 1-{MAX_NAME_LEN}", name.len()),
        ));
    }
    if let Some(c) = name.chars().find(|c| !is_name_char(*c)) {
        return Err(invalid(
            field,
            format!("character {c:?} is not one of A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// Checks a free-form string: at most `max` bytes, no control characters (they would
/// reach logs, terminals and pages).
fn validate_text(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), RecordError> {
    if s.len() < min || s.len() > max {
        return Err(invalid(
            field,
            format!("length {} is not {min}-{max}", s.len()),
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(invalid(field, format!("control character {c:?}")));
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary, control characters
/// replaced by spaces: how an agent fits an error message into its record.
pub fn clip_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Checks a DNS host name: at most 253 bytes, dot-separated labels of 1-63 letters,
/// digits and hyphens, no label starting or ending with a hyphen. A trailing dot (the
/// root) is not accepted: names in records and bindings are written without it.
pub fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("length {} is not 1-253", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} is not 1-63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!("character {c:?} is not a letter, digit or hyphen"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with a hyphen"));
        }
    }
    Ok(())
}

pub use gateway_api::Proto;

/// The ports a node listens on; at least one is set.
///
/// Read only from a JSON object: serde's derive would also take an array
/// (`[8000, 8080]` as tcp and ws), which the contract calls a wrong type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Ports {
    /// Raw TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// WebSocket port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<u16>,
    /// TLS WebSocket port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<u16>,
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ports, D::Error> {
        /// The same fields, derived; only ever fed a map.
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default)]
            tcp: Option<u16>,
            #[serde(default)]
            ws: Option<u16>,
            #[serde(default)]
            wss: Option<u16>,
        }
        struct MapOnly;
        impl<'de> serde::de::Visitor<'de> for MapOnly {
            type Value = Ports;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of ports, e.g. {\"tcp\": 8000}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Ports, A::Error> {
                let f = Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Ports {
                    tcp: f.tcp,
                    ws: f.ws,
                    wss: f.wss,
                })
            }
        }
        d.deserialize_map(MapOnly)
    }
}

/// True when `value` is a JSON object (the first non-blank byte is `{`): serde's derive
/// would also read a struct from an array of its fields in order.
fn is_json_object(value: &[u8]) -> bool {
    value.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

impl Ports {
    /// The port for `proto`, if the node serves it.
    pub fn get(&self, proto: Proto) -> Option<u16> {
        match proto {
            Proto::Tcp => self.tcp,
            Proto::Ws => self.ws,
            Proto::Wss => self.wss,
        }
    }

    /// Sets the port for `proto`.
    pub fn set(&mut self, proto: Proto, port: u16) {
        match proto {
            Proto::Tcp => self.tcp = Some(port),
            Proto::Ws => self.ws = Some(port),
            Proto::Wss => self.wss = Some(port),
        }
    }

    fn validate(&self) -> Result<(), RecordError> {
        if self.tcp.is_none() && self.ws.is_none() && self.wss.is_none() {
            return Err(invalid("ports", "at least one of tcp, ws, wss is required"));
        }
        for proto in Proto::ALL {
            if self.get(proto) == Some(0) {
                return Err(invalid("ports", format!("{proto} port 0 is not 1-65535")));
            }
        }
        Ok(())
    }
}

/// Whether a node takes new clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new clients.
    #[default]
    Serving,
    /// Takes no new clients and is moving its current ones away.
    Draining,
}

impl NodeState {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        }
    }
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// One gateway node, as its agent writes it to `P/nodes/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id; equal to the key's last segment.
    pub id: String,
    /// IPv4 or IPv6 literal clients connect to.
    pub ip: IpAddr,
    /// Listening ports by protocol.
    pub ports: Ports,
    /// Region the node serves, e.g. `cn-sh`.
    pub region: String,
    /// Connections the node is sized for (> 0).
    pub capacity: u64,
    /// Live connections at the last report.
    pub connections: u64,
    /// Extra IPv6 address for dual-stack nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// DNS name of the node (for TLS SNI / certificate checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Availability zone inside the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Carrier the node is attached to (`ctcc`, `cucc`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isp: Option<String>,
    /// Serving or draining; `serving` when absent.
    #[serde(default)]
    pub state: NodeState,
    /// Health as the agent's probe sees it; `true` when absent.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub healthy: bool,
    /// Wall-clock milliseconds of the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<u64>,
    /// Wall-clock milliseconds at which `connections` was counted (an extension: the
    /// router keeps counting the clients it sent after that moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_ms: Option<u64>,
    /// How long before this write `connections` was counted, in milliseconds of the
    /// agent's own clock (an extension). Unlike `sampled_ms` it needs no agreement
    /// between the agent's clock and the router's: a router places the sample at its
    /// own receive time minus this age, so a gateway host whose clock is off does not
    /// undo the herd accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_age_ms: Option<u64>,
    /// Id of the last command the agent applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_command: Option<String>,
    /// How telling the gateway to move clients went, for the last command that asked
    /// it to (an extension; see [`HookStatus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookStatus>,
    /// Free-form labels (`version`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The data centre (registry) the record was read from: set by a router that
    /// follows several registries, never read from or written to etcd.
    #[serde(skip)]
    pub dc: Option<std::sync::Arc<str>>,
}

impl NodeRecord {
    /// A record with the required fields and the contract's defaults for the rest
    /// (serving, healthy, no optional fields).
    pub fn new(
        id: impl Into<String>,
        ip: IpAddr,
        ports: Ports,
        region: impl Into<String>,
        capacity: u64,
        connections: u64,
    ) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            ip,
            ports,
            region: region.into(),
            capacity,
            connections,
            ipv6: None,
            domain: None,
            zone: None,
            isp: None,
            state: NodeState::Serving,
            healthy: true,
            updated_ms: None,
            sampled_ms: None,
            sample_age_ms: None,
            applied_command: None,
            hook: None,
            labels: BTreeMap::new(),
            dc: None,
        }
    }

    /// Parses and validates a stored value; `key_id` is the key's last segment.
    pub fn parse(key_id: &str, value: &[u8]) -> Result<NodeRecord, RecordError> {
        if !is_json_object(value) {
            return Err(RecordError::Json(
                "a node record must be a JSON object".into(),
            ));
        }
        let record: NodeRecord =
            serde_json::from_slice(value).map_err(|e| RecordError::Json(e.to_string()))?;
        record.validate()?;
        if record.id != key_id {
            return Err(invalid(
                "id",
                format!("{:?} differs from the key's id {key_id:?}", record.id),
            ));
        }
        Ok(record)
    }

    /// Checks every rule of the contract that serde's types do not already enforce.
    pub fn validate(&self) -> Result<(), RecordError> {
        validate_id(&self.id)?;
        self.ports.validate()?;
        validate_name("region", &self.region)?;
        if self.capacity == 0 {
            return Err(invalid("capacity", "must be greater than 0"));
        }
        if let Some(zone) = &self.zone {
            validate_name("zone", zone)?;
        }
        if let Some(isp) = &self.isp {
            validate_name("isp", isp)?;
        }
        if let Some(domain) = &self.domain {
            validate_host_name(domain).map_err(|e| invalid("domain", e))?;
        }
        if let Some(c) = &self.applied_command {
            validate_text("applied_command", c, 1, MAX_COMMAND_ID)?;
        }
        if let Some(hook) = &self.hook {
            validate_text("hook", &hook.command, 1, MAX_COMMAND_ID)?;
            if let Some(e) = &hook.error {
                validate_text("hook", e, 0, MAX_HOOK_ERROR)?;
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(invalid(
                "labels",
                format!("{} labels, at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            validate_text("labels", k, 1, MAX_LABEL_KEY)?;
            validate_text("labels", v, 0, MAX_LABEL_VALUE)?;
        }
        Ok(())
    }

    /// Serializes the record as stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a NodeRecord always serializes")
    }

    /// connections / capacity.
    pub fn load(&self) -> f64 {
        self.connections as f64 / self.capacity as f64
    }

    /// The address of the requested family, if the node has one.
    pub fn addr_for(&self, family: Option<IpFamily>) -> Option<IpAddr> {
        match family {
            None => Some(self.ip),
            Some(IpFamily::V4) => self.ip.is_ipv4().then_some(self.ip),
            Some(IpFamily::V6) => {
                if self.ip.is_ipv6() {
                    Some(self.ip)
                } else {
                    self.ipv6.map(IpAddr::V6)
                }
            }
        }
    }
}

/// An IP address family a client can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What an ops command asks a node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandAction {
    /// Stop taking new clients and move all current ones away.
    Drain,
    /// Move `percent` % of current clients away.
    Migrate,
    /// Undo a drain.
    Serve,
}

impl CommandAction {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandAction::Drain => "drain",
            CommandAction::Migrate => "migrate",
            CommandAction::Serve => "serve",
        }
    }
}

/// Where the delivery of a command's migrate signal to the gateway stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    /// The first attempt is under way.
    Delivering,
    /// Attempts failed (see `error`); the agent keeps retrying with a capped backoff.
    Retrying,
    /// The gateway acknowledged the signal.
    Delivered,
    /// A newer command replaced this one before it was delivered; it never will be.
    Superseded,
    /// No hook is configured: the gateway was not told.
    NoHook,
}

impl HookState {
    /// The state's name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Delivering => "delivering",
            HookState::Retrying => "retrying",
            HookState::Delivered => "delivered",
            HookState::Superseded => "superseded",
            HookState::NoHook => "no_hook",
        }
    }

    /// Every state, in a fixed order (for metrics).
    pub const ALL: [HookState; 5] = [
        HookState::Delivering,
        HookState::Retrying,
        HookState::Delivered,
        HookState::Superseded,
        HookState::NoHook,
    ];
}

/// The outcome of one command's migrate signal (`hook` in a node record and in
/// `P/applied/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// The command whose signal this is.
    pub command: String,
    /// The percentage the signal asks to move.
    pub percent: u8,
    /// Where delivery stands.
    pub state: HookState,
    /// Wall-clock ms since which it is in this state (for `retrying`: since the first
    /// failure).
    pub since_ms: u64,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure's cause (`connection refused`, `timed out`, `HTTP 503 ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an agent applied to its node, kept at `P/applied/{id}` without a lease so
/// that it survives the agent: a restarted agent (same id, new lease) reads it and
/// does not apply the same command again, and resumes a delivery left unfinished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The last command applied.
    pub command: String,
    /// Its action.
    pub action: CommandAction,
    /// The node's state after it (a restarted agent starts in it).
    pub state: NodeState,
    /// Wall-clock ms when it was applied.
    pub applied_ms: u64,
    /// The delivery of the last migrate signal (this command's or, when this one asks
    /// for none, the one it superseded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookStatus>,
}

impl Applied {
    /// Parses a stored value; it must be a JSON object of this shape.
    pub fn parse(value: &[u8]) -> Result<Applied, RecordError> {
        if !is_json_object(value) {
            return Err(RecordError::Json(
                "an applied record must be a JSON object".into(),
            ));
        }
        serde_json::from_slice(value).map_err(|e| RecordError::Json(e.to_string()))
    }

    /// Serializes for storage.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an applied record serializes")
    }
}

/// An ops command stored at `P/commands/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Unique command id; the agent applies each id once.
    pub id: String,
    /// What to do.
    pub action: CommandAction,
    /// For `migrate`: 1-100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Wall-clock milliseconds when it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_ms: Option<u64>,
    /// The node's reported connections when the command was issued (an extension:
    /// `rebalance` projects a migrate's effect from it until reports show it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_connections: Option<u64>,
}

impl Command {
    /// Parses and validates a stored command.
    pub fn parse(value: &[u8]) -> Result<Command, RecordError> {
        if !is_json_object(value) {
            return Err(RecordError::Json("a command must be a JSON object".into()));
        }
        let cmd: Command =
            serde_json::from_slice(value).map_err(|e| RecordError::Json(e.to_string()))?;
        cmd.validate()?;
        Ok(cmd)
    }

    /// Checks the id and, for `migrate`, the percentage.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.id.is_empty() || self.id.len() > 128 {
            return Err(invalid("id", "command id must be 1-128 characters"));
        }
        if self.action == CommandAction::Migrate {
            match self.percent {
                Some(1..=100) => {}
                Some(p) => return Err(invalid("percent", format!("{p} is not 1-100"))),
                None => return Err(invalid("percent", "migrate needs a percent (1-100)")),
            }
        }
        Ok(())
    }

    /// The percentage of clients this command moves: 100 for drain, 0 for serve.
    pub fn move_percent(&self) -> u8 {
        match self.action {
            CommandAction::Drain => 100,
            CommandAction::Migrate => self.percent.unwrap_or(0),
            CommandAction::Serve => 0,
        }
    }

    /// Serializes the command as stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Command always serializes")
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{
      "id": "gw-sh-001", "ip": "203.0.113.10",
      "ports": {"tcp": 8000, "ws": 8080, "wss": 8443},
      "region": "cn-sh", "capacity": 1000000, "connections": 412345,
      "ipv6": "2001:db8::10", "domain": "gw-sh-001.example.com", "zone": "cn-sh-a",
      "isp": "ctcc", "state": "serving", "healthy": true, "updated_ms": 1763700000000,
      "applied_command": "c-42", "labels": {"version": "1.8.2"}
    }"#;

    #[test]
    fn contract_example_parses() {
        let r = NodeRecord::parse("gw-sh-001", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.ports.wss, Some(8443));
        assert_eq!(r.connections, 412345);
        assert_eq!(r.applied_command.as_deref(), Some("c-42"));
        assert!((r.load() - 0.412345).abs() < 1e-9);
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let v = br#"{"id":"a","ip":"::1","ports":{"ws":1},"region":"r","capacity":1,
                     "connections":0,"future_field":{"x":1}}"#;
        let r = NodeRecord::parse("a", v).unwrap();
        assert_eq!(r.state, NodeState::Serving);
        assert!(r.healthy);
        assert!(r.labels.is_empty());
    }

    #[test]
    fn roundtrip_is_stable() {
        let r = NodeRecord::parse("gw-sh-001", EXAMPLE.as_bytes()).unwrap();
        let again = NodeRecord::parse("gw-sh-001", &r.to_json()).unwrap();
        assert_eq!(r, again);
    }

    fn reject(key: &str, v: &str) -> RecordError {
        NodeRecord::parse(key, v.as_bytes()).expect_err(v)
    }

    #[test]
    fn invalid_values_are_rejected_with_a_reason() {
        let ok = r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1"#;
        assert!(matches!(reject("a", "not json"), RecordError::Json(_)));
        assert!(matches!(reject("a", "[]"), RecordError::Json(_)));
        // Wrong types where serde's derive would read a struct from an array.
        let e = reject(
            "a",
            r#"{"id":"a","ip":"10.0.0.1","ports":[8000,8080],"region":"r","capacity":5,"connections":1}"#,
        );
        assert!(e.to_string().contains("object of ports"), "{e}");
        let e = reject("a", r#"["a","10.0.0.1",{"tcp":1},"r",5,1]"#);
        assert!(e.to_string().contains("JSON object"), "{e}");
        assert!(Command::parse(br#"["c-1","drain"]"#).is_err());
        assert!(Command::parse(br#" {"id":"c-1","action":"drain"}"#).is_ok());
        // Missing required fields.
        for field in ["ip", "ports", "region", "capacity", "connections"] {
            let v: serde_json::Value =
                serde_json::from_str(&format!("{{\"id\":\"a\",{ok}}}")).unwrap();
            let mut m = v.as_object().unwrap().clone();
            m.remove(field);
            let e = reject("a", &serde_json::Value::Object(m).to_string());
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let e = reject("b", &format!("{{\"id\":\"a\",{ok}}}"));
        assert!(e.to_string().contains("key"), "{e}");
        let cases = [
            (
                r#""ip":"host.example","ports":{"tcp":1},"region":"r","capacity":5,"connections":1"#,
                "ip",
            ),
            (
                r#""ip":"10.0.0.1","ports":{},"region":"r","capacity":5,"connections":1"#,
                "ports",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":0},"region":"r","capacity":5,"connections":1"#,
                "ports",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":70000},"region":"r","capacity":5,"connections":1"#,
                "ports",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":0,"connections":1"#,
                "capacity",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":-1"#,
                "connections",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":"5","connections":1"#,
                "capacity",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"","capacity":5,"connections":1"#,
                "region",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1,"state":"gone""#,
                "state",
            ),
            (
                r#""ip":"10.0.0.1","ports":{"tcp":1},"region":"r","capacity":5,"connections":1,"healthy":"yes""#,
                "healthy",
            ),
        ];
        for (body, field) in cases {
            let e = reject("a", &format!("{{\"id\":\"a\",{body}}}"));
            let msg = e.to_string();
            assert!(
                msg.contains(field) || matches!(e, RecordError::Json(_)),
                "{field}: {msg}"
            );
        }
        let long_name = "r".repeat(65);
        let long_domain = format!("{}.example.com", ["a"; 125].join("."));
        let bad_optional = [
            (format!(r#""region":"{long_name}""#), "region"),
            (r#""region":"cn sh""#.to_string(), "region"),
            (r#""region":"r","zone":"\u001b[31m""#.to_string(), "zone"),
            (format!(r#""region":"r","isp":"{long_name}""#), "isp"),
            (r#""region":"r","isp":"""#.to_string(), "isp"),
            (r#""region":"r","domain":"evil..com""#.to_string(), "domain"),
            (r#""region":"r","domain":"a_b.com""#.to_string(), "domain"),
            (r#""region":"r","domain":"-a.com""#.to_string(), "domain"),
            (
                format!(r#""region":"r","domain":"{long_domain}""#),
                "domain",
            ),
            (
                format!(r#""region":"r","applied_command":"{}""#, "c".repeat(129)),
                "applied_command",
            ),
            (
                format!(r#""region":"r","labels":{{"k":"{}"}}"#, "v".repeat(257)),
                "labels",
            ),
            (
                format!(r#""region":"r","labels":{{"{}":"v"}}"#, "k".repeat(65)),
                "labels",
            ),
            (
                r#""region":"r","labels":{"k":"\u001b]0;x\u0007"}"#.to_string(),
                "labels",
            ),
            (
                format!(
                    r#""region":"r","labels":{{{}}}"#,
                    (0..33)
                        .map(|i| format!(r#""k{i}":"v""#))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "labels",
            ),
            (
                format!(
                    r#""region":"r","hook":{{"command":"c","percent":5,"state":"retrying","since_ms":1,"error":"{}"}}"#,
                    "e".repeat(513)
                ),
                "hook",
            ),
        ];
        for (body, field) in bad_optional {
            let v = format!(
                r#"{{"id":"a","ip":"10.0.0.1","ports":{{"tcp":1}},"capacity":5,"connections":1,{body}}}"#
            );
            let e = reject("a", &v);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let d = format!("{}.example.com", ["a"; 120].join("."));
        let at_limits = format!(
            r#"{{"id":"a","ip":"10.0.0.1","ports":{{"tcp":1}},"capacity":5,"connections":1,
                "region":"{r}","zone":"{r}","isp":"{r}","domain":"{d}","applied_command":"{c}",
                "labels":{{"{k}":"{v}"}}}}"#,
            r = "r".repeat(64),
            c = "c".repeat(128),
            k = "k".repeat(64),
            v = "v".repeat(256),
        );
        NodeRecord::parse("a", at_limits.as_bytes()).expect("values at the limits pass");
        assert_eq!(clip_text("ab\u{1b}cd", 4), "ab c");
        assert_eq!(clip_text("aé", 2), "a");
        for bad_id in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad_id).is_err(), "{bad_id:?}");
        }
    }

    #[test]
    fn commands() {
        let c = Command::parse(br#"{"id":"c-42","action":"migrate","percent":30,"issued_ms":1}"#)
            .unwrap();
        assert_eq!(c.move_percent(), 30);
        assert_eq!(
            Command::parse(br#"{"id":"d","action":"drain"}"#)
                .unwrap()
                .move_percent(),
            100
        );
        for bad in [
            &br#"{"id":"c","action":"migrate"}"#[..],
            br#"{"id":"c","action":"migrate","percent":0}"#,
            br#"{"id":"c","action":"migrate","percent":101}"#,
            br#"{"id":"c","action":"explode"}"#,
            br#"{"id":"","action":"drain"}"#,
            br#"garbage"#,
        ] {
            assert!(
                Command::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn arb_record() -> impl Strategy<Value = NodeRecord> {
        (
            "[A-Za-z0-9._-]{1,64}",
            any::<std::net::IpAddr>(),
            (
                proptest::option::of(1u16..),
                proptest::option::of(1u16..),
                1u16..,
            ),
            "[a-z]{2}-[a-z]{2}",
            1u64..u64::MAX,
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(id, ip, (tcp, ws, wss), region, capacity, conns, draining, healthy)| NodeRecord {
                    id,
                    ip,
                    ports: Ports {
                        tcp,
                        ws,
                        wss: Some(wss),
                    },
                    region,
                    capacity,
                    connections: conns,
                    ipv6: None,
                    domain: None,
                    zone: None,
                    isp: None,
                    state: if draining {
                        NodeState::Draining
                    } else {
                        NodeState::Serving
                    },
                    healthy,
                    updated_ms: None,
                    sampled_ms: None,
                    sample_age_ms: None,
                    applied_command: None,
                    hook: None,
                    labels: BTreeMap::new(),
                    dc: None,
                },
            )
    }

    proptest! {
        #[test]
        fn valid_records_roundtrip(r in arb_record()) {
            let parsed = NodeRecord::parse(&r.id, &r.to_json()).unwrap();
            prop_assert_eq!(parsed, r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = NodeRecord::parse("a", &bytes);
            let _ = Command::parse(&bytes);
        }

        #[test]
        fn ids_match_the_pattern(id in "\\PC{0,70}") {
            let ok = !id.is_empty() && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            prop_assert_eq!(validate_id(&id).is_ok(), ok);
        }
    }
}
