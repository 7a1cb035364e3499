//! [`Ports`]: the ports a node listens on, read only from a JSON object.

use serde::{Deserialize, Serialize};

use super::{invalid, Proto, RecordError};

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

    pub(super) fn validate(&self) -> Result<(), RecordError> {
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
