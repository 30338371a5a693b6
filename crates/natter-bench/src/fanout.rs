//! The `idle` and `fanout` scenarios.
//!
//! - `idle`: N authenticated connections, each in a room, held for T seconds; the server's
//!   resident memory per connection (RSS after minus RSS before, over N).
//! - `fanout`: R rooms × M member connections; one sender per room sends at a fixed total rate
//!   without waiting for acks (each body carries its send time); every member connection counts
//!   what arrives. Reported: deliveries per second, end-to-end latency percentiles, server CPU
//!   time per delivery, and lost = expected − received after a drain.
//!
//! Members of a room are several sessions of one user, so setting up thousands of connections
//! does not mean hashing thousands of passwords.

use crate::conn::{self, Error};
use crate::server;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold them.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Member connections per room.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages per second, all rooms together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    prefix: Option<String>,
}

/// Creates a public room as `owner` and returns its id.
async fn create_room(url: &str, token: &str, name: &str) -> Result<u64, Error> {
    let (mut sink, mut stream) = conn::connect(url, token).await?;
    let reply = conn::request(
        &mut sink,
        &mut stream,
        1,
        &format!(r#""type":"create_room","name":"{name}","visibility":"public""#),
    )
    .await?;
    let _ = sink.close().await;
    reply
        .find(r#""room":{"id":"#)
        .and_then(|at| conn::number_after(&reply[at + 8..], "id"))
        .ok_or_else(|| "no room id in the reply".into())
}

async fn join_room(url: &str, token: &str, room: u64) -> Result<(), Error> {
    let (mut sink, mut stream) = conn::connect(url, token).await?;
    conn::request(
        &mut sink,
        &mut stream,
        1,
        &format!(r#""type":"join","room_id":{room}"#),
    )
    .await?;
    let _ = sink.close().await;
    Ok(())
}

pub async fn idle(args: IdleArgs) -> Result<(), Error> {
    let prefix = conn::run_prefix(&args.prefix, "i");
    let tokens = conn::register_users(&args.url, &prefix, 1).await?;
    create_room(&args.url, &tokens[0], &format!("{prefix}idle")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = args.server_pid.and_then(server::rss_kib);
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        held.push(conn::connect(&args.url, &tokens[0]).await?);
        if (n + 1) % 1000 == 0 {
            eprintln!("  {} connected", n + 1);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Read (and so answer pings) while holding; the server's heartbeats arrive every 25 s.
    let readers: Vec<_> = held
        .into_iter()
        .map(|(sink, mut stream)| {
            tokio::spawn(async move {
                let _sink = sink;
                while stream.next().await.is_some() {}
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = args.server_pid.and_then(server::rss_kib);
    let per_connection = match (before, after) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before)) as f64 / args.connections as f64)
        }
        _ => None,
    };
    for reader in readers {
        reader.abort();
    }
    println!(
        "idle: {} connections opened in {connect_secs:.1} s, held {} s; server RSS {} KiB → {} KiB: {} KiB per connection",
        args.connections,
        args.seconds,
        before.map_or("?".into(), |v| v.to_string()),
        after.map_or("?".into(), |v| v.to_string()),
        per_connection.map_or("?".into(), |v| format!("{v:.2}"))
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "idle",
            "connections": args.connections,
            "seconds": args.seconds,
            "connect_seconds": connect_secs,
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "server_rss_per_connection_kib": per_connection,
        })
    );
    Ok(())
}

fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

pub async fn fanout(args: FanoutArgs) -> Result<(), Error> {
    let prefix = conn::run_prefix(&args.prefix, "f");
    eprintln!("fanout: {} rooms × {} members", args.rooms, args.members);
    // Per room: an owner who sends, and a member user whose sessions receive.
    let tokens = conn::register_users(&args.url, &prefix, args.rooms * 2).await?;
    let mut rooms = Vec::with_capacity(args.rooms);
    for r in 0..args.rooms {
        let room = create_room(&args.url, &tokens[2 * r], &format!("{prefix}room{r}")).await?;
        join_room(&args.url, &tokens[2 * r + 1], room).await?;
        rooms.push(room);
    }
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    // One sample list per reader: uncontended locks, read once at the end.
    let mut samples: Vec<Arc<std::sync::Mutex<Vec<u64>>>> = Vec::new();
    let mut readers = Vec::new();
    for r in 0..args.rooms {
        for _ in 0..args.members {
            let (sink, mut stream) = conn::connect(&args.url, &tokens[2 * r + 1]).await?;
            let mine = Arc::new(std::sync::Mutex::new(Vec::new()));
            samples.push(mine.clone());
            let received = received.clone();
            readers.push(tokio::spawn(async move {
                let _sink = sink;
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    if !text.starts_with(r#"{"type":"event""#) {
                        continue;
                    }
                    if let Some(at) = text.find(r#""body":"t"#) {
                        let sent: String = text[at + 9..]
                            .chars()
                            .take_while(char::is_ascii_digit)
                            .collect();
                        if let Ok(sent) = sent.parse::<u64>() {
                            let latency = micros_since(epoch).saturating_sub(sent);
                            if let Ok(mut mine) = mine.lock() {
                                mine.push(latency);
                            }
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    eprintln!(
        "fanout: {} member connections up; sending {} msg/s for {} s",
        readers.len(),
        args.rate,
        args.seconds
    );
    let mut senders = Vec::new();
    for r in 0..args.rooms {
        senders.push(conn::connect(&args.url, &tokens[2 * r]).await?);
    }
    // Sender connections must read their acks too, or their queues fill.
    let mut sender_sinks = Vec::new();
    for (sink, mut stream) in senders {
        tokio::spawn(async move { while stream.next().await.is_some() {} });
        sender_sinks.push(sink);
    }
    let cpu_before = args.server_pid.and_then(server::cpu_time);
    let total = (args.rate * args.seconds as f64).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let started = Instant::now();
    for n in 0..total {
        let r = n as usize % args.rooms;
        let frame = format!(
            r#"{{"id":{},"type":"send","room_id":{},"client_msg_id":"{prefix}{n}","body":"t{}"}}"#,
            n + 10,
            rooms[r],
            micros_since(epoch)
        );
        sender_sinks[r].send(Message::Text(frame.into())).await?;
        tokio::time::sleep_until((started + interval * (n as u32 + 1)).into()).await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let expected = total * args.members as u64;
    // Drain: wait until everything arrived or nothing more comes for two seconds.
    let mut last = received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = received.load(Ordering::Relaxed);
        if now >= expected || now == last {
            break;
        }
        last = now;
    }
    let cpu_after = args.server_pid.and_then(server::cpu_time);
    for reader in &readers {
        reader.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = received.load(Ordering::Relaxed);
    let mut all: Vec<u64> = samples
        .iter()
        .flat_map(|mine| mine.lock().map(|m| m.clone()).unwrap_or_default())
        .collect();
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let cpu_us_per_delivery = cpu
        .filter(|_| got > 0)
        .map(|c| c.as_secs_f64() * 1e6 / got as f64);
    println!(
        "fanout: {} rooms × {} members, {total} messages in {send_secs:.1} s: {got}/{expected} deliveries ({:.0}/s), lost {}",
        args.rooms,
        args.members,
        got as f64 / send_secs,
        expected.saturating_sub(got)
    );
    println!(
        "  latency ms: p50 {:?} p99 {:?} p99.9 {:?} max {:?}; server CPU per delivery {:?} µs",
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(pick(0.999)),
        ms(all.last().copied()),
        cpu_us_per_delivery.map(|v| (v * 100.0).round() / 100.0)
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "fanout",
            "rooms": args.rooms,
            "members": args.members,
            "rate": args.rate,
            "messages": total,
            "expected": expected,
            "received": got,
            "lost": expected.saturating_sub(got),
            "deliveries_per_s": got as f64 / send_secs,
            "latency_ms": { "p50": ms(pick(0.5)), "p99": ms(pick(0.99)), "p999": ms(pick(0.999)), "max": ms(all.last().copied()) },
            "server_cpu_s": cpu.map(|c| c.as_secs_f64()),
            "server_cpu_us_per_delivery": cpu_us_per_delivery,
        })
    );
    Ok(())
}
