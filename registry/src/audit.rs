//! The audit trail (`P/audit/{at_ms}-{random}`): every change an operator makes to the
//! registry, with who made it, when, through what, and the value before and after.
//!
//! ```json
//! {"at_ms": 1763700000000, "by": "alice", "via": "ctl", "action": "policy set",
//!  "key": "/gateway-router/v1/policy/sh-split", "before": null, "after": {...}}
//! ```
//!
//! `by` is the etcd user (or the login name) for `ctl`, the token's name for the admin
//! API. Entries live under a lease of [`TTL`] (etcd forgets them after it, so the trail
//! never fills etcd), keys sort by time, and a value kept whole is at most
//! [`MAX_VALUE_BYTES`]; a larger one is kept as a note of its size. Whoever writes
//! the prefix can write entries too: the trail is as trustworthy as the operators' and
//! routers' etcd credentials.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::Layout;
use crate::kv::{Kv, KvError};
use crate::record::{invalid, parse_checked, RecordError};

/// How long an entry is kept: 90 days.
pub const TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The largest `before` or `after` kept whole, in bytes of JSON.
pub const MAX_VALUE_BYTES: usize = 8192;
/// The longest `by`, `via`, `action` or `key`.
pub const MAX_TEXT: usize = 256;

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Wall-clock milliseconds of the change.
    pub at_ms: u64,
    /// Who made it.
    pub by: String,
    /// Through what: `ctl`, `admin-api`.
    pub via: String,
    /// What: `drain`, `migrate`, `serve`, `block`, `unblock`, `bind`, `unbind`,
    /// `policy set`, `policy rm`.
    pub action: String,
    /// The key changed.
    pub key: String,
    /// Its value before (`null`: there was none).
    #[serde(default)]
    pub before: Option<Value>,
    /// Its value after (`null`: deleted).
    #[serde(default)]
    pub after: Option<Value>,
}

/// Who makes a change, and through what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The etcd user or login name (`ctl`), the token's name (admin API).
    pub by: String,
    /// `ctl` or `admin-api`.
    pub via: &'static str,
}

/// A stored value as the trail keeps it: parsed JSON when it is JSON, a string when
/// not, a note of its size when larger than [`MAX_VALUE_BYTES`].
pub fn value_of(raw: &[u8]) -> Value {
    if raw.len() > MAX_VALUE_BYTES {
        return Value::String(format!("({} bytes, not kept)", raw.len()));
    }
    serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into()))
}

impl AuditEntry {
    /// Parses and validates a stored entry.
    pub fn parse(value: &[u8]) -> Result<AuditEntry, RecordError> {
        parse_checked(value, AuditEntry::validate)
    }

    /// Bounded texts with no control characters.
    pub fn validate(&self) -> Result<(), RecordError> {
        for (field, s) in [
            ("by", &self.by),
            ("via", &self.via),
            ("action", &self.action),
            ("key", &self.key),
        ] {
            if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    format!("not a text of at most {MAX_TEXT} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The key suffix under `P/audit/`: the time, zero-padded so keys sort by it, and a
    /// random part so two changes in one millisecond keep both.
    pub fn key_suffix(&self) -> String {
        format!("{:013}-{:08x}", self.at_ms, rand::random::<u32>())
    }
}

/// Records a change of `key` from `before` to `after` (raw stored values; `None`: none)
/// by `who`, under a lease of [`TTL`].
pub async fn record(
    kv: &dyn Kv,
    layout: &Layout,
    who: &Author,
    action: &str,
    key: &str,
    before: Option<&[u8]>,
    after: Option<&[u8]>,
) -> Result<(), KvError> {
    let entry = AuditEntry {
        at_ms: crate::now_ms(),
        by: crate::record::clip_text(&who.by, MAX_TEXT),
        via: who.via.to_string(),
        action: action.to_string(),
        key: key.to_string(),
        before: before.map(value_of),
        after: after.map(value_of),
    };
    let lease = kv.grant(TTL).await?;
    let value = serde_json::to_vec(&entry).expect("an AuditEntry serializes");
    kv.put(&layout.audit_key(&entry.key_suffix()), value, Some(lease))
        .await?;
    Ok(())
}

/// The newest `limit` entries of `kv`'s trail, newest first, and how many entries did
/// not parse.
pub async fn newest(
    kv: &dyn Kv,
    layout: &Layout,
    limit: usize,
) -> Result<(Vec<AuditEntry>, usize), KvError> {
    let listed = kv.list(&layout.audit_prefix()).await?;
    let mut broken = 0;
    let mut entries: Vec<AuditEntry> = listed
        .kvs
        .iter()
        .filter_map(|kv| {
            let e = AuditEntry::parse(&kv.value).ok();
            broken += usize::from(e.is_none());
            e
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
    entries.truncate(limit);
    Ok((entries, broken))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryKv;

    #[tokio::test]
    async fn a_change_is_recorded_with_its_author_and_both_values() {
        let kv = MemoryKv::new();
        let kv = &*kv;
        let layout = Layout::new("/g");
        let who = Author {
            by: "alice\u{7}".into(),
            via: "ctl",
        };
        let big = vec![b'x'; MAX_VALUE_BYTES + 1];
        record(
            kv,
            &layout,
            &who,
            "policy set",
            "/g/policy/p",
            None,
            Some(br#"{"a":1}"#),
        )
        .await
        .unwrap();
        record(
            kv,
            &layout,
            &who,
            "block",
            "/g/blocklist/k",
            Some(&big),
            None,
        )
        .await
        .unwrap();
        kv.put(&layout.audit_key("x"), b"not an entry".to_vec(), None)
            .await
            .unwrap();
        let (entries, broken) = newest(kv, &layout, 10).await.unwrap();
        assert_eq!((entries.len(), broken), (2, 1));
        assert!(entries[0].at_ms >= entries[1].at_ms, "newest first");
        assert_eq!(newest(kv, &layout, 1).await.unwrap().0.len(), 1);
        let set = entries.iter().find(|e| e.action == "policy set").unwrap();
        assert_eq!(set.after, Some(serde_json::json!({"a": 1})));
        assert_eq!(set.before, None);
        assert!(!set.by.chars().any(char::is_control), "{:?}", set.by);
        let block = entries.iter().find(|e| e.action == "block").unwrap();
        assert_eq!(
            block.before,
            Some(Value::String(format!(
                "({} bytes, not kept)",
                MAX_VALUE_BYTES + 1
            )))
        );
        assert!(AuditEntry::parse(
            br#"{"at_ms":1,"by":"a","via":"ctl","action":"x\u0007","key":"k"}"#
        )
        .is_err());
    }
}
