//! Configuration: the command line (clap, `ROUTER_*` variables) and the TOML file.
//!
//! Every key of the file has a default, so an empty file (or none) is a working
//! configuration. [`FileConfig::validate`] is the one place that turns a bad value into
//! a message naming the key; `main` prints it and exits 2.
//!
//! The command line is in `args` (`serve`, `demo`) and `ctl_args` (`ctl`), what both take
//! in `shared_args`; the file's
//! types and defaults in `file`, its rules in `validate`, `[dns]` and `[httpdns]` in
//! [`dns`], `[feedback]` in `feedback`.

mod args;
mod ctl_args;
pub mod dns;
mod error;
mod explain_args;
mod feedback;
mod file;
mod live;
mod shared_args;
mod validate;

pub use args::{check_token, Cli, Command, DemoArgs, ServeArgs, TokenProblem, MIN_TOKEN_BYTES};
pub use ctl_args::{AuthOp, AuthWho, CtlArgs, CtlOp, PolicyOp};
pub use error::ConfigError;
pub use explain_args::ExplainArgs;
pub use feedback::FeedbackConfig;
pub use file::{
    BackoffConfig, EdgeConfig, FileConfig, HttpConfig, RateLimitConfig, RegionsConfig,
    RegistryConfig, TlsConfig,
};
pub use live::LiveConfig;
pub use shared_args::RouterEtcdFlags;
pub use validate::MAX_CANDIDATES;
