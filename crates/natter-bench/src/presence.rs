//! The `presence` scenario: what presence costs while users come and go.
//!
//! `users` users sit in rooms of `room_size`, each holding one connection that reads everything.
//! For `seconds`, `churn` users per second drop their connection and come back after `away_ms`.
//! With `away_ms` above the server's coalescing window each churn is two real changes (offline,
//! online), each fanned out to the user's room; below it (a flap) nothing should be published.
//! Reported: presence frames received, server CPU time per change and per frame delivered.

use crate::conn::{self, Error, Sink, Stream};
use crate::server;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Args {
    /// natter's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Connected users.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Members per room. Above the server's `presence_room_limit` (200 by default) a channel
    /// shares no presence, and there is nothing to measure.
    #[arg(long, default_value_t = 50)]
    room_size: usize,
    /// Users per second who disconnect and come back.
    #[arg(long, default_value_t = 20.0)]
    churn: f64,
    /// How long a churning user stays away.
    #[arg(long, default_value_t = 1500)]
    away_ms: u64,
    /// How long the churn lasts.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The server's PID, to read its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Prefix for the users this run registers (each run needs its own).
    #[arg(long)]
    prefix: Option<String>,
}

/// One user's connection: a reader task counting presence frames, and the sink to close it.
struct Held {
    sink: Sink,
    reader: JoinHandle<()>,
}

fn spawn_reader(mut stream: Stream, presence_frames: Arc<AtomicU64>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message
                && text.starts_with(r#"{"type":"presence""#)
            {
                presence_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn hold(url: &str, token: &str, frames: &Arc<AtomicU64>) -> Result<Held, Error> {
    let (sink, stream) = conn::connect(url, token).await?;
    Ok(Held {
        sink,
        reader: spawn_reader(stream, frames.clone()),
    })
}

pub async fn run(args: Args) -> Result<(), Error> {
    let prefix = conn::run_prefix(&args.prefix, "p");
    let room_size = args.room_size.max(2);
    eprintln!("presence: registering {} users", args.users);
    let tokens = conn::register_users(&args.url, &prefix, args.users).await?;

    eprintln!("presence: filling rooms of {room_size}");
    for (index, group) in tokens.chunks(room_size).enumerate() {
        let (mut sink, mut stream) = conn::connect(&args.url, &group[0]).await?;
        let name = format!("{prefix}room{index}");
        let reply = conn::request(
            &mut sink,
            &mut stream,
            1,
            &format!(r#""type":"create_room","name":"{name}","visibility":"public""#),
        )
        .await?;
        let room_id = conn::number_after(&reply, "id")
            .and_then(|_| reply.find(r#""room":{"id":"#).map(|at| &reply[at + 8..]))
            .and_then(|rest| conn::number_after(rest, "id"))
            .ok_or("no room id in the reply")?;
        let _ = sink.close().await;
        for token in &group[1..] {
            let (mut sink, mut stream) = conn::connect(&args.url, token).await?;
            conn::request(
                &mut sink,
                &mut stream,
                1,
                &format!(r#""type":"join","room_id":{room_id}"#),
            )
            .await?;
            let _ = sink.close().await;
        }
    }

    eprintln!("presence: connecting {} users", args.users);
    let frames = Arc::new(AtomicU64::new(0));
    let mut held = Vec::with_capacity(args.users);
    for token in &tokens {
        held.push(Arc::new(Mutex::new(Some(
            hold(&args.url, token, &frames).await?,
        ))));
    }
    // Let the connects' own presence changes settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pings = tokio::spawn({
        let held = held.clone();
        async move {
            // The server drops a connection that says nothing for a minute.
            let mut ticks = tokio::time::interval(Duration::from_secs(20));
            loop {
                ticks.tick().await;
                for slot in &held {
                    if let Some(conn) = slot.lock().await.as_mut() {
                        let _ = conn
                            .sink
                            .send(Message::Text(r#"{"id":1,"type":"ping"}"#.into()))
                            .await;
                    }
                }
            }
        }
    });

    let cpu_before = args.server_pid.and_then(server::cpu_time);
    let frames_before = frames.load(Ordering::Relaxed);
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.churn.max(0.1));
    let total_churns = (args.seconds as f64 * args.churn).round() as u64;
    let mut churns = Vec::new();
    eprintln!("presence: {total_churns} churns over {} s", args.seconds);
    for n in 0..total_churns {
        // A spread of users, not neighbours in one room.
        let index = (n as usize * (room_size + 1)) % held.len();
        let slot = held[index].clone();
        let (url, token, counter) = (args.url.clone(), tokens[index].clone(), frames.clone());
        let away = Duration::from_millis(args.away_ms);
        churns.push(tokio::spawn(async move {
            let mut guard = slot.lock().await;
            if let Some(mut conn) = guard.take() {
                let _ = conn.sink.close().await;
                conn.reader.abort();
            }
            tokio::time::sleep(away).await;
            *guard = hold(&url, &token, &counter).await.ok();
        }));
        tokio::time::sleep_until((started + interval * (n as u32 + 1)).into()).await;
        if (n + 1) % 100 == 0 {
            eprintln!(
                "  {} churns, {} presence frames",
                n + 1,
                frames.load(Ordering::Relaxed) - frames_before
            );
        }
    }
    for churn in churns {
        let _ = churn.await;
    }
    // Wait out the coalescing window so the last changes are counted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let elapsed = started.elapsed();
    let cpu_after = args.server_pid.and_then(server::cpu_time);
    let received = frames.load(Ordering::Relaxed) - frames_before;
    pings.abort();

    let changes = if args.away_ms > 1000 {
        total_churns * 2
    } else {
        0
    };
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let per = |count: u64| {
        cpu.filter(|_| count > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / count as f64)
    };
    let rss = args.server_pid.and_then(server::rss_kib);
    println!(
        "presence: {} users in rooms of {room_size}, {total_churns} churns ({:.1}/s, away {} ms) in {:.1} s",
        args.users,
        total_churns as f64 / elapsed.as_secs_f64(),
        args.away_ms,
        elapsed.as_secs_f64()
    );
    println!(
        "  presence frames received: {received} ({:.1} per churn; a real change reaches the {} others in the room)",
        received as f64 / total_churns.max(1) as f64,
        room_size - 1
    );
    if let Some(cpu) = cpu {
        println!(
            "  server CPU: {:.2} s ({:.1}% of one core), {:.0} µs per churn, {:.1} µs per frame delivered",
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
            per(total_churns).unwrap_or(0.0),
            per(received).unwrap_or(0.0)
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "presence",
            "users": args.users,
            "room_size": room_size,
            "churns": total_churns,
            "away_ms": args.away_ms,
            "seconds": elapsed.as_secs_f64(),
            "presence_changes": changes,
            "presence_frames": received,
            "server_cpu_s": cpu.map(|c| c.as_secs_f64()),
            "server_cpu_us_per_churn": per(total_churns),
            "server_cpu_us_per_frame": per(received),
            "server_rss_kib": rss,
        })
    );
    Ok(())
}
