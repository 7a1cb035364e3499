//! `router-server`: parses flags, sets up logging and signals, and runs `serve`,
//! `demo` or `ctl`.

use std::sync::Arc;

use registry::etcd::connect_at_start;
use registry::Layout;
use router_server::config::{Cli, Command, FileConfig, ServeArgs};
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| verbose_default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Ctl(args) => router_server::ctl::run(args).await,
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

async fn serve(args: ServeArgs) -> i32 {
    let config = match &args.config {
        Some(path) => FileConfig::load(path).unwrap_or_else(|e| registry::cli::exit_invalid(e)),
        None => FileConfig::default(),
    };
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
    let main = match std::net::TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => registry::cli::exit_invalid(format!("cannot listen on {}: {e}", args.listen)),
    };
    let plain = match args
        .http_listen
        .map(std::net::TcpListener::bind)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => registry::cli::exit_invalid(format!("cannot listen on --http-listen: {e}")),
    };
    let endpoints: Vec<String> = args.etcd.split(',').map(str::to_string).collect();
    tracing::info!(etcd = %args.etcd, prefix = %args.prefix, "router starting");
    // A wrong CA, an expired certificate or a wrong password: one line now, not a
    // retry loop. (An etcd that is down is waited for: the router serves once it is.)
    let kv = connect_at_start(
        &endpoints,
        args.etcd_security.security(),
        &Layout::new(&args.prefix).nodes_prefix(),
    )
    .await
    .unwrap_or_else(|e| registry::cli::exit_invalid(e));
    let opts = ServeOptions {
        router_id: args.router_id.clone(),
        config,
        layout: Layout::new(&args.prefix),
        admin_token: args.admin_token,
        tls,
    };
    report(
        router_server::run(
            Arc::new(kv),
            opts,
            Listeners { main, plain },
            shutdown_token(),
        )
        .await,
    )
}

/// A token cancelled by SIGTERM or SIGINT.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        t.cancel();
    });
    token
}
