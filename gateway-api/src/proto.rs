//! The protocols a gateway serves and a client asks for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A client-facing protocol a gateway can listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Raw TCP.
    Tcp,
    /// WebSocket over plain TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Proto {
    /// Every protocol, in the contract's order.
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Ws, Proto::Wss];

    /// The name used in JSON, flags and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Ws => "ws",
            Proto::Wss => "wss",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Proto::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown protocol {s:?} (expected tcp, ws or wss)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Proto::ALL {
            assert_eq!(p.as_str().parse::<Proto>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("udp"
            .parse::<Proto>()
            .unwrap_err()
            .contains("tcp, ws or wss"));
    }
}
