//! router-server (in progress).
