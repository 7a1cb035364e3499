//! etcd's errors as [`KvError`]s, classified by gRPC status code.

use crate::kv::{KvError, LeaseId};
use crate::security::{chain, is_tls_refusal};

/// Classifies an etcd error by its gRPC status code.
pub(super) fn map_err(e: etcd_client::Error) -> KvError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => {
            let msg = status.message().to_string();
            match status.code() {
                // etcd answers NotFound only for a lease it does not know; the caller
                // knows which lease it asked about and fills it in.
                Code::NotFound => KvError::LeaseNotFound(0),
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::AlreadyExists
                | Code::Unimplemented => KvError::Rejected(format!("{:?}: {msg}", status.code())),
                code => {
                    let why = chain(&status);
                    if is_tls_refusal(&why) {
                        KvError::Rejected(format!("TLS: {why}"))
                    } else {
                        KvError::Unavailable(format!("{code:?}: {msg}"))
                    }
                }
            }
        }
        E::InvalidArgs(m) => KvError::Rejected(m),
        // The client's own verdict on a keep-alive answer with TTL 0 (not a gRPC
        // status): the lease is gone.
        E::LeaseKeepAliveError(_) => KvError::LeaseNotFound(0),
        other => {
            let why = chain(&other);
            if is_tls_refusal(&why) {
                KvError::Rejected(format!("TLS: {why}"))
            } else {
                KvError::Unavailable(why)
            }
        }
    }
}

/// [`map_err`] for a call about `lease`: etcd's "lease not found" does not say which.
pub(super) fn map_lease_err(e: etcd_client::Error, lease: LeaseId) -> KvError {
    match map_err(e) {
        KvError::LeaseNotFound(_) => KvError::LeaseNotFound(lease),
        other => other,
    }
}
