//! [`Command`]: an ops command, and what an agent records of applying one
//! ([`Applied`], [`HookStatus`]).

use serde::{Deserialize, Serialize};

use super::{invalid, is_json_object, NodeState, RecordError};

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
