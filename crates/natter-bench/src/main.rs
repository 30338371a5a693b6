//! `natter-bench`: load scenarios against a running natter, over loopback.
//!
//! It is as lean as the thing it measures: raw WebSocket frames, and only what a scenario counts
//! is looked at (a substring test, not a parse). Each run prints a human summary and one JSON line.
//!
//! - `presence`: many users in rooms, some of them disconnecting and coming back; counts the
//!   presence frames that reach the others and the server CPU time per change.
//! - `idle`: many connections held; the server's memory per connection.
//! - `fanout`: rooms of many members and a fixed send rate; deliveries per second, latency
//!   percentiles, server CPU per delivery, and messages lost.
//! - `max`: the fan-out at rising rates; the highest that keeps p99 under a bound, narrowed down
//!   between the last rate that passed and the first that failed.
//! - `durable`: acknowledged (fsync'd) sends per second and acknowledgement latency.
//! - `storm`: every client dropped at once; time until all have resumed, and messages lost.
//!
//! `idle`, `fanout` and `max` also drive the Socket.IO baseline (`--server socketio`).

mod conn;
mod durable;
mod fanout;
mod limit;
mod presence;
mod server;
mod storm;
mod target;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "natter-bench", about = "Load scenarios for natter")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Users churning in and out of rooms: what presence costs.
    Presence(presence::Args),
    /// Connections held idle: memory per connection.
    Idle(fanout::IdleArgs),
    /// Messages fanned out to room members: throughput, latency, CPU, loss.
    Fanout(fanout::FanoutArgs),
    /// The fan-out at rising rates until p99 passes a bound: the highest rate that keeps it.
    Max(fanout::MaxArgs),
    /// Durable sends: acknowledgements per second and their latency.
    Durable(durable::Args),
    /// Every client dropped at once: how long until all have resumed, and what was lost.
    Storm(storm::Args),
    /// Not a scenario: the no-logic broadcaster that scenarios measure as `--server limit`.
    LimitServer(limit::Args),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Presence(args) => presence::run(args).await,
        Scenario::Idle(args) => fanout::idle(args).await,
        Scenario::Fanout(args) => fanout::fanout(args).await,
        Scenario::Max(args) => fanout::max(args).await,
        Scenario::Durable(args) => durable::run(args).await,
        Scenario::Storm(args) => storm::run(args).await,
        Scenario::LimitServer(args) => limit::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("natter-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
