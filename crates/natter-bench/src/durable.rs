//! The `durable` scenario: acknowledged sends per second, and how long an acknowledgement takes.
//!
//! `senders` connections, each with its own room, keep `in_flight` sends outstanding for
//! `seconds`. An acknowledgement means the message is on disk (fsync'd; natter never weakens
//! that), so this measures the store's group commit under load, on whatever database the server
//! was started with.

use crate::conn::{self, Error};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value_t = 50)]
    senders: usize,
    /// Sends each connection keeps outstanding.
    #[arg(long, default_value_t = 10)]
    in_flight: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long)]
    prefix: Option<String>,
    /// Accepted for symmetry with the other scenarios (the server's CPU time is reported).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Send at this total rate (messages per second, open loop) instead of keeping `in_flight`
    /// sends outstanding; `in_flight` then caps what a connection has outstanding. For the ack
    /// latency at a given load, e.g. half the closed-loop maximum.
    #[arg(long)]
    rate: Option<f64>,
    /// Which database the server was started with, for the record (`sqlite` or `postgres`).
    #[arg(long, default_value = "sqlite")]
    database: String,
}

/// Send `id` to `room`, with a fresh `client_msg_id` of the kind natter's clients make: the
/// server's cost per send depends on it.
fn frame(id: u64, room: u64) -> Message {
    let client_msg_id = natter_client::new_client_msg_id();
    Message::Text(
        format!(r#"{{"id":{id},"type":"send","room_id":{room},"client_msg_id":"{client_msg_id}","body":"durable {id}"}}"#)
            .into(),
    )
}

/// Sends at `rate` per second until `until`, with at most `in_flight` outstanding (a send that
/// would exceed it waits); returns each acknowledgement's latency from its send.
async fn paced(
    mut sink: conn::Sink,
    mut stream: conn::Stream,
    room: u64,
    rate: f64,
    in_flight: usize,
    until: Instant,
) -> Result<Vec<Duration>, Error> {
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let acked = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (sent_at, latencies, acked) = (sent_at.clone(), latencies.clone(), acked.clone());
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                if text.starts_with(r#"{"type":"sent""#)
                    && let Some(id) = conn::number_after(&text, "id")
                    && let Some(at) = sent_at.lock().ok().and_then(|mut m| m.remove(&id))
                    && let Ok(mut latencies) = latencies.lock()
                {
                    latencies.push(at.elapsed());
                    acked.notify_one();
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = Instant::now();
    let outstanding = || sent_at.lock().map(|m| m.len()).unwrap_or(0);
    let mut id = 10u64;
    while Instant::now() < until {
        while outstanding() >= in_flight.max(1) {
            let _ = tokio::time::timeout(Duration::from_millis(10), acked.notified()).await;
        }
        if let Ok(mut m) = sent_at.lock() {
            m.insert(id, Instant::now());
        }
        sink.send(frame(id, room)).await?;
        id += 1;
        tokio::time::sleep_until((started + interval.mul_f64((id - 10) as f64)).into()).await;
    }
    for _ in 0..1000 {
        if outstanding() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sink);
    // The server closes nothing by itself: stop reading once every ack is in.
    reader.abort();
    let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(latencies)
}

pub async fn run(args: Args) -> Result<(), Error> {
    let prefix = conn::run_prefix(&args.prefix, "d");
    let tokens = conn::register_users(&args.url, &prefix, args.senders).await?;
    let cpu_before = args.server_pid.and_then(crate::server::cpu_time);
    let steal_before = crate::server::steal_time();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (url, prefix, in_flight) = (args.url.clone(), format!("{prefix}{i}-"), args.in_flight);
        let rate_per_sender = args.rate.map(|rate| rate / args.senders.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = conn::connect(&url, &token).await?;
            let reply = conn::request(
                &mut sink,
                &mut stream,
                1,
                &format!(r#""type":"create_room","name":"{prefix}room","visibility":"public""#),
            )
            .await?;
            let room = reply
                .find(r#""room":{"id":"#)
                .and_then(|at| conn::number_after(&reply[at + 8..], "id"))
                .ok_or("no room id")?;
            if let Some(rate) = rate_per_sender {
                return paced(sink, stream, room, rate, in_flight, until).await;
            }
            let mut sent_at: HashMap<u64, Instant> = HashMap::new();
            let mut latencies = Vec::new();
            let mut next_id = 10u64;
            for _ in 0..in_flight {
                sent_at.insert(next_id, Instant::now());
                sink.send(frame(next_id, room)).await?;
                next_id += 1;
            }
            while let Some(message) = stream.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                if !text.starts_with(r#"{"type":"sent""#) {
                    if text.starts_with(r#"{"type":"error""#) {
                        return Err::<Vec<Duration>, Error>(format!("send failed: {text}").into());
                    }
                    continue;
                }
                let Some(id) = conn::number_after(&text, "id") else {
                    continue;
                };
                if let Some(at) = sent_at.remove(&id) {
                    latencies.push(at.elapsed());
                }
                if Instant::now() < until {
                    sent_at.insert(next_id, Instant::now());
                    sink.send(frame(next_id, room)).await?;
                    next_id += 1;
                } else if sent_at.is_empty() {
                    break;
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let steal_ms = crate::server::steal_ms(steal_before);
    let cpu_us_per_ack = match (
        cpu_before,
        args.server_pid.and_then(crate::server::cpu_time),
    ) {
        (Some(b), Some(a)) if !all.is_empty() => {
            Some(a.saturating_sub(b).as_secs_f64() * 1e6 / all.len() as f64)
        }
        _ => None,
    };
    all.sort_unstable();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "durable: {} senders × {} in flight: {} acknowledged sends in {elapsed:.1} s = {:.0}/s; ack ms p50 {:?} p99 {:?} max {:?}",
        args.senders,
        args.in_flight,
        all.len(),
        all.len() as f64 / elapsed,
        pick(0.5),
        pick(0.99),
        all.last().map(|d| d.as_secs_f64() * 1000.0)
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "durable",
            "database": args.database,
            "server_cpu_us_per_ack": cpu_us_per_ack,
            "senders": args.senders,
            "in_flight": args.in_flight,
            "rate": args.rate,
            "acknowledged": all.len(),
            "seconds": elapsed,
            "acks_per_s": all.len() as f64 / elapsed,
            "ack_ms": { "p50": pick(0.5), "p99": pick(0.99), "max": all.last().map(|d| d.as_secs_f64() * 1000.0) },
            "steal_ms": steal_ms,
        })
    );
    Ok(())
}
