//! What `ctl` writes to etcd on an operator's behalf, each change recorded in the
//! audit trail (`registry::audit`) with the value it replaced.

use registry::audit::Author;
use registry::{Kv, Layout};

use super::{refused, Target};

/// Puts `after` at `key` in `t` (`None`: deletes it) and records the change, with the
/// value it replaced, in the audit trail as `who`'s `action`. Returns whether the key
/// held a value, or the exit status of a failure.
pub(super) async fn change(
    t: &Target,
    layout: &Layout,
    who: &Author,
    action: &str,
    key: &str,
    after: Option<&[u8]>,
) -> Result<bool, i32> {
    let write = async {
        let before = t.kv.get(key).await?.map(|kv| kv.value);
        match after {
            Some(v) => {
                t.kv.put(key, v.to_vec(), None).await?;
            }
            None if before.is_none() => return Ok(false),
            None => {
                t.kv.delete(key).await?;
            }
        }
        registry::audit::record(&t.kv, layout, who, action, key, before.as_deref(), after).await?;
        Ok::<bool, registry::KvError>(before.is_some())
    };
    write.await.map_err(|e| refused(t, e))
}

/// Deletes `key` from every registry of `targets`, recording it as `who`'s `action`;
/// the number that held it, or the exit status of the first that failed.
pub(super) async fn delete_everywhere(
    targets: &[Target],
    layout: &Layout,
    who: &Author,
    action: &str,
    key: &str,
) -> Result<usize, i32> {
    let mut removed = 0;
    for t in targets {
        removed += usize::from(change(t, layout, who, action, key, None).await?);
    }
    Ok(removed)
}
