//! `router-server`: parses flags, sets up logging and signals, and runs `serve`,
//! `demo` or `ctl`.

use std::net::SocketAddr;
use std::sync::Arc;

use registry::etcd::{connect_at_start, EtcdOptions};
use registry::Layout;
use router_server::admin::{TokenError, Tokens};
use router_server::config::{Cli, Command, FileConfig, ServeArgs};
use router_server::membership::Registry;
use router_server::tls::TlsFiles;
use router_server::{Listeners, ServeOptions};
use tokio_util::sync::CancellationToken;

fn main() {
    let cli =
        Cli::parse_args(std::env::args_os()).unwrap_or_else(|e| registry::cli::exit_usage(&e));
    let verbose_default = if matches!(cli.command, Command::Ctl(_)) {
        "warn"
    } else {
        "info"
    };
    registry::cli::init_logging(cli.log_format, verbose_default);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Ctl(args) => router_server::ctl::run(args).await,
            #[cfg(feature = "tools")]
            Command::Demo(args) => {
                report(router_server::demo::run_demo(args, shutdown_token()).await)
            }
            Command::Serve(args) => serve(args).await,
        }
    });
    std::process::exit(code);
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// `router-server serve`: reads the configuration, binds the listeners, connects to
/// every registry, then serves until SIGTERM or SIGINT.
async fn serve(args: ServeArgs) -> i32 {
    let config = load_config(&args);
    let tls = tls_files(&args).await;
    if args.check_config {
        return check_config(&args, &config, tls.is_some());
    }
    let main = bind(args.listen, args.listen);
    let plain = args.http_listen.map(|addr| bind(addr, "--http-listen"));
    let admin_tokens = admin_tokens(&args).unwrap_or_else(|e| registry::cli::exit_invalid(e));
    let admin = args.admin_listen.map(|addr| bind(addr, "--admin-listen"));
    let wanted = wanted_registries(&args, &config);
    let local = own_index(&wanted);
    let build = registry::build_info!();
    tracing::info!(version = %build.version, commit = %build.commit, built = %build.date, registries = wanted.len(), own = %wanted[local].name, listen = %args.listen, "router starting");
    let registries = connect_registries(wanted, local).await;
    let layout = registries[local].layout.clone();
    let opts = ServeOptions {
        router_id: args.router_id.clone(),
        public_addrs: args.public_addrs.clone(),
        config,
        config_file: args.config.clone(),
        layout,
        admin_tokens,
        tls,
    };
    report(
        router_server::run_registries(
            registries,
            opts,
            Listeners { main, plain, admin },
            shutdown_token(),
        )
        .await,
    )
}

/// `serve --check-config`, once the file and the TLS files have been read: the admin
/// tokens and each registry's etcd settings (their files read once), then one line per
/// part on stdout. Every problem has already exited 2.
fn check_config(args: &ServeArgs, config: &FileConfig, tls: bool) -> i32 {
    let tokens = admin_tokens(args).unwrap_or_else(|e| registry::cli::exit_invalid(e));
    let wanted = wanted_registries(args, config);
    for w in &wanted {
        let endpoints: Vec<String> = w.endpoints.split(',').map(str::to_string).collect();
        if let Err(e) = w.security.check(&endpoints) {
            registry::cli::exit_invalid(format!("registry {}: {e}", w.name));
        }
    }
    let file = args
        .config
        .as_ref()
        .map_or("none (the defaults)".to_string(), |p| {
            p.display().to_string()
        });
    println!("configuration ok");
    println!("  config file: {file}");
    println!(
        "  listen: {}{}",
        args.listen,
        if tls { " (HTTPS)" } else { "" }
    );
    let local = own_index(&wanted);
    for (i, w) in wanted.iter().enumerate() {
        println!(
            "  registry {}: {} (prefix {}){}",
            w.name,
            w.endpoints,
            w.prefix,
            if i == local {
                ", this router's own"
            } else {
                ""
            }
        );
    }
    println!(
        "  admin API: {}",
        match (tokens.is_empty(), args.admin_listen) {
            (true, _) => "off".to_string(),
            (false, Some(addr)) => format!("on {addr}, tokens {}", tokens.names().join(", ")),
            (false, None) => format!("on {}, tokens {}", args.listen, tokens.names().join(", ")),
        }
    );
    0
}

/// The configuration file given with `--config` (exit 2 when it is invalid), else the
/// defaults.
fn load_config(args: &ServeArgs) -> FileConfig {
    match &args.config {
        Some(path) => FileConfig::load(path).unwrap_or_else(|e| registry::cli::exit_invalid(e)),
        None => FileConfig::default(),
    }
}

/// The certificate and key of `--tls-cert` and `--tls-key`, loaded once to check them.
async fn tls_files(args: &ServeArgs) -> Option<TlsFiles> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    if let Some(files) = &tls {
        // Fail at start, with exit 2, rather than on the first handshake.
        if let Err(e) = files.load().await {
            registry::cli::exit_invalid(e);
        }
    }
    tls
}

/// A listener on `addr` (exit 2, naming it `what`, when it cannot be bound).
fn bind(addr: SocketAddr, what: impl std::fmt::Display) -> std::net::TcpListener {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => registry::cli::exit_invalid(format!("cannot listen on {what}: {e}")),
    }
}

/// A registry to follow, as the command line or the file names it.
struct Wanted {
    name: String,
    endpoints: String,
    prefix: String,
    security: registry::security::EtcdSecurity,
    local: bool,
}

/// The index of this router's own registry among `wanted`: the one marked local, else
/// the first.
fn own_index(wanted: &[Wanted]) -> usize {
    wanted.iter().position(|w| w.local).unwrap_or(0)
}

/// The registries: `--etcd` (named `default`), each `--registry`, then the file's
/// `[[registries]]`; the first, or the one marked local, is this router's DC. Exits
/// (status 2) when there is none, or a name is given twice.
fn wanted_registries(args: &ServeArgs, config: &FileConfig) -> Vec<Wanted> {
    let flags_security = args.etcd_security.security();
    let mut wanted: Vec<Wanted> = Vec::new();
    if let Some(etcd) = &args.etcd {
        wanted.push(Wanted {
            name: "default".into(),
            endpoints: etcd.clone(),
            prefix: args.prefix.clone(),
            security: flags_security.clone(),
            local: false,
        });
    }
    for (name, etcd) in &args.registries {
        wanted.push(Wanted {
            name: name.clone(),
            endpoints: etcd.clone(),
            prefix: args.prefix.clone(),
            security: flags_security.clone(),
            local: false,
        });
    }
    for r in &config.registries {
        wanted.push(Wanted {
            name: r.name.clone(),
            endpoints: r.etcd.clone(),
            prefix: r.prefix.clone().unwrap_or_else(|| args.prefix.clone()),
            security: r.security(),
            local: r.local,
        });
    }
    if wanted.is_empty() {
        registry::cli::exit_invalid(
            "no registry to follow: give --etcd URL, --registry NAME=URL or [[registries]] in the config file",
        );
    }
    let mut names = std::collections::HashSet::new();
    for w in &wanted {
        if !names.insert(w.name.clone()) {
            registry::cli::exit_invalid(format!("registry {:?} is given twice", w.name));
        }
    }
    wanted
}

/// Connects to each registry in turn (`local`: the index of this router's own); exits
/// (status 2) when one refuses the connection.
async fn connect_registries(wanted: Vec<Wanted>, local: usize) -> Vec<Registry> {
    let mut registries = Vec::new();
    for (i, w) in wanted.into_iter().enumerate() {
        let endpoints: Vec<String> = w.endpoints.split(',').map(str::to_string).collect();
        let layout = Layout::new(&w.prefix);
        tracing::info!(registry = %w.name, etcd = %w.endpoints, prefix = %w.prefix, local = i == local, "following registry");
        // A wrong CA, an expired certificate or a wrong password: one line now, not a
        // retry loop. (An etcd that is down is waited for: the router serves once its
        // own registry is loaded.)
        let kv = connect_at_start(
            &endpoints,
            EtcdOptions {
                security: w.security,
                ..EtcdOptions::default()
            },
            &layout.nodes_prefix(),
        )
        .await
        .unwrap_or_else(|e| registry::cli::exit_invalid(format!("registry {}: {e}", w.name)));
        registries.push(Registry {
            name: std::sync::Arc::from(w.name.as_str()),
            kv: Arc::new(kv),
            layout,
            local: i == local,
        });
    }
    registries
}

/// The admin tokens of `--admin-token` and `--admin-token-file` (none: admin API off).
fn admin_tokens(args: &ServeArgs) -> Result<Tokens, TokenError> {
    let flag = match &args.admin_token {
        Some(t) => Tokens::flag(t)?,
        None => Tokens::default(),
    };
    match &args.admin_token_file {
        Some(path) => flag.and(Tokens::load(path)?),
        None => Ok(flag),
    }
}

/// A token cancelled by SIGTERM or SIGINT.
fn shutdown_token() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let t = token.clone();
    // Registered here, before anything else runs: from a task of its own, a SIGTERM
    // arriving before a busy machine first ran that task would kill the process with
    // no graceful stop.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        t.cancel();
    });
    token
}
