//! The HTTP edge: the server that owns client connections.

pub mod server;
