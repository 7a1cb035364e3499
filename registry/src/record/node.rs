//! [`NodeRecord`]: one gateway node as its agent writes it, with its state and the
//! contract's checks.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::names::{validate_name, validate_text};
use super::{
    invalid, is_json_object, validate_host_name, validate_id, HookStatus, Ports, RecordError,
    MAX_COMMAND_ID, MAX_HOOK_ERROR, MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE,
};

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
            super::validate_isps(isp)?;
        }
        if let Some(domain) = &self.domain {
            validate_host_name(domain).map_err(|e| invalid("domain", e.to_string()))?;
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
