//! Node records in etcd: a builder for the JSON tests write at `{P}/nodes/{id}` in an
//! agent's place, and reading back the record an agent wrote.

use std::fmt::Write;

use serde_json::Value;

use crate::etcd::Etcd;
use crate::P;

/// A node record's JSON, built field by field. The fields come out in this order: `id`,
/// `ip`, `ports` (TCP only), `region`, `capacity`, `connections`, then those added with
/// [`NodeJson::with`] in the order added.
///
/// ```
/// use harness::NodeJson;
/// let json = NodeJson::new("gw-a").region("cn-sh").conns(5).build();
/// assert_eq!(
///     json,
///     r#"{"id":"gw-a","ip":"192.0.2.7","ports":{"tcp":9000},"region":"cn-sh","capacity":1000,"connections":5}"#
/// );
/// ```
#[derive(Clone, Debug)]
pub struct NodeJson {
    id: String,
    ip: String,
    tcp: u16,
    region: String,
    capacity: u64,
    connections: u64,
    more: Vec<(String, Value)>,
}

impl NodeJson {
    /// Node `id` at 192.0.2.7 with TCP port 9000, in region `r`, with a capacity of
    /// 1,000 and no connections.
    pub fn new(id: &str) -> NodeJson {
        NodeJson {
            id: id.to_string(),
            ip: "192.0.2.7".to_string(),
            tcp: 9000,
            region: "r".to_string(),
            capacity: 1000,
            connections: 0,
            more: Vec::new(),
        }
    }

    /// The IPv4 address (not checked: tests also write invalid ones).
    pub fn ip(mut self, ip: &str) -> NodeJson {
        self.ip = ip.to_string();
        self
    }

    /// The TCP port.
    pub fn tcp(mut self, port: u16) -> NodeJson {
        self.tcp = port;
        self
    }

    /// The region.
    pub fn region(mut self, region: &str) -> NodeJson {
        self.region = region.to_string();
        self
    }

    /// The capacity.
    pub fn capacity(mut self, capacity: u64) -> NodeJson {
        self.capacity = capacity;
        self
    }

    /// The number of connections.
    pub fn conns(mut self, connections: u64) -> NodeJson {
        self.connections = connections;
        self
    }

    /// Adds field `key` after the others: `domain`, `isp`, `state`, or one the record
    /// does not have.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> NodeJson {
        self.more.push((key.to_string(), value.into()));
        self
    }

    /// The JSON text.
    pub fn build(&self) -> String {
        let text = |s: &str| Value::from(s).to_string();
        let mut json = format!(
            r#"{{"id":{},"ip":{},"ports":{{"tcp":{}}},"region":{},"capacity":{},"connections":{}"#,
            text(&self.id),
            text(&self.ip),
            self.tcp,
            text(&self.region),
            self.capacity,
            self.connections
        );
        for (key, value) in &self.more {
            write!(json, ",{}:{value}", text(key)).expect("write to a String");
        }
        json.push('}');
        json
    }
}

/// The record of node `id` in `etcd` under [`P`], parsed, if there is one.
pub fn node_record(etcd: &Etcd, id: &str) -> Option<Value> {
    etcd.get(&format!("{P}/nodes/{id}"))
        .map(|v| serde_json::from_str(&v).expect("node record is JSON"))
}
