//! `natter`: parse the command line, build the server, run it until SIGTERM or Ctrl-C.

use clap::Parser;
use natter_server::Server;
use natter_server::config::{Cli, Command, Config};
use std::process::ExitCode;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> ExitCode {
    natter_server::tune_allocator();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let filter: Targets = match args.log.parse() {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("natter: --log `{}`: {error}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("natter: {error}");
            return ExitCode::from(2);
        }
    };
    let listen = config.listen;
    let server = match Server::build(config).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("natter: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match bind(listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("natter: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%listen, "natter is listening on http://{listen}");
    match server.run(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("natter: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Listens with a backlog of 4,096 (the kernel caps it at `net.core.somaxconn`): when thousands
/// of clients reconnect at once, a short queue drops their SYNs and each waits a second or more
/// to retry.
fn bind(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match listen {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(4096)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops natter");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
