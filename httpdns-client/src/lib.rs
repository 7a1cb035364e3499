//! httpdns-client (in progress).
