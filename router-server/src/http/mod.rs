//! The HTTP edge, by concern:
//!
//! * [`server`]: the accept loop and each connection's life (deadlines, the connection
//!   cap, shutdown).
//! * [`routes`]: the application's routes and the edge middleware.
//! * [`gateways`]: `GET /gateways` and the [`Api`] it shares; [`outcomes`]: `POST
//!   /outcomes`, the connect outcomes clients report.
//! * [`fleet`]: the fleet page (`/ops`) and the JSON it polls.
//! * [`params`]: its query string. [`error`]: the contract's error answer, also given to the
//!   errors the HTTP parser writes by itself (`raw_errors`).
//!
//! The answer's JSON lives in [`crate::answer`]; nothing here writes the handles of
//! [`crate::state`], it only reads them.

mod body_limit;
pub mod dns;
pub mod error;
pub mod fleet;
mod forwarded;
pub mod gateways;
pub mod outcomes;
pub mod params;
mod raw_errors;
pub mod routes;
pub mod server;

pub use error::ApiError;
pub use gateways::{Api, Gateways};
pub use params::{parse_params, GatewaysParams};
pub use routes::{app, app_with, router, router_with, App, HotRoute};
