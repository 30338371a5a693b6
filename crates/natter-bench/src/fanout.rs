//! The `idle`, `fanout` and `max` scenarios, against natter or the Socket.IO baseline.
//!
//! - `idle`: N connections, each joined to a room, held for T seconds; the server's resident
//!   memory per connection (RSS after minus RSS before, over N).
//! - `fanout`: R rooms × M member connections; S senders per room send at a fixed total rate
//!   without waiting for acks (each body carries its send time); every member connection records
//!   the latency of what arrives in an HDR histogram. Reported: deliveries per second (over the
//!   time deliveries took), latency percentiles, server CPU time per delivery, and lost =
//!   expected − received after a drain. With `--idle N`, N more connections sit in a room of
//!   their own meanwhile, as most of a real server's connections do.
//! - `max`: the fan-out at rising rates, on the same connections, until p99 passes the bound or
//!   a message is lost; reports the last rate that passed.
//!
//! On natter, the members of a room are sessions of one user, so setting up thousands of
//! connections does not mean hashing thousands of passwords.

use crate::conn::{self, Error};
use crate::server;
use crate::target::{self, Room, Target, TargetArgs};
use crate::wire::{Flow, FrameWriter};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold them.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Member connections per room.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Sender connections per room; natter answers one connection's requests in order, so more
    /// senders let more sends share a commit.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Messages per second, all rooms together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Idle connections held beside the fan-out, in a room of their own.
    #[arg(long, default_value_t = 0)]
    idle: usize,
}

#[derive(clap::Args)]
pub struct MaxArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    step: f64,
    /// The latency bound a step must keep (p99, milliseconds).
    #[arg(long, default_value_t = 50.0)]
    p99_ms: f64,
    /// Steps at most.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// Once a step fails, this many more between the last rate that passed and the one that
    /// failed (each at their geometric mean), so that the answer is not coarser than the steps
    /// by up to `step` ×. Each is a single run; the JSON keeps the ladder's own answer
    /// (`ladder_max_deliveries_per_s`) beside it and marks these steps `"refined"`.
    #[arg(long, default_value_t = 3)]
    refine: usize,
}

pub async fn idle(args: IdleArgs) -> Result<(), Error> {
    let target = Arc::new(Target::new(&args.target)?);
    let prefix = conn::run_prefix(&args.target.prefix, "i");
    let rooms = target.rooms(1, &prefix).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = args.target.server_pid.and_then(server::rss_kib);
    let started = Instant::now();
    let holders = hold_idle(&target, &rooms[0], args.connections, args.concurrency).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let held = holders.iter().filter(|h| !h.is_finished()).count();
    let after = args.target.server_pid.and_then(server::rss_kib);
    for holder in &holders {
        holder.abort();
    }
    if held < args.connections {
        return Err(format!("only {held} of {} connections were held", args.connections).into());
    }
    let per_connection = match (before, after) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before)) as f64 / args.connections as f64)
        }
        _ => None,
    };
    println!(
        "idle ({:?}): {} connections opened in {connect_secs:.1} s, held {} s; server RSS {} KiB → {} KiB: {} KiB per connection",
        target.kind,
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
            "server": format!("{:?}", target.kind).to_lowercase(),
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

/// Opens `count` member connections to `room`, `concurrency` at a time, each held (and answering
/// heartbeats) by a task of its own; returns once all are open, or the first one's error.
async fn hold_idle(
    target: &Arc<Target>,
    room: &Room,
    count: usize,
    concurrency: usize,
) -> Result<Vec<tokio::task::JoinHandle<Result<(), Error>>>, Error> {
    let opened = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut holders = Vec::with_capacity(count);
    for _ in 0..count {
        let (target, room, gate, opened) =
            (target.clone(), room.clone(), gate.clone(), opened.clone());
        holders.push(tokio::spawn(async move {
            let (mut reader, mut writer) = {
                let _permit = gate.acquire().await;
                target.member(&room).await?
            };
            let n = opened.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 2000 == 0 {
                eprintln!("  {n} connected");
            }
            // Read (and so answer pings) while holding.
            target::hold(&mut reader, &mut writer).await;
            Ok::<(), Error>(())
        }));
    }
    while (opened.load(Ordering::Relaxed) as usize) < count {
        if let Some(ended) = holders.iter().position(|h| h.is_finished()) {
            return Err(match holders.swap_remove(ended).await {
                Ok(Err(error)) => error,
                _ => "an idle connection closed while the others were opening".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(holders)
}

/// Microseconds since the run's epoch: what bodies carry and receivers compare against.
fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The connections of a fan-out run, set up once and driven at one rate per step.
struct Fanout {
    target: Arc<Target>,
    rooms: Vec<Room>,
    members: usize,
    epoch: Instant,
    received: Arc<AtomicU64>,
    /// When the last delivery arrived (µs since `epoch`).
    last_at: Arc<AtomicU64>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    senders: Vec<(usize, FrameWriter)>,
    acked: Arc<AtomicU64>,
    next_message: u64,
    server_pid: Option<u32>,
    /// The idle connections' tasks, held for the run.
    idle: Vec<tokio::task::JoinHandle<Result<(), Error>>>,
}

/// What one rate step measured.
struct Step {
    rate: f64,
    messages: u64,
    expected: u64,
    received: u64,
    seconds: f64,
    deliveries_per_s: f64,
    latency_ms: [f64; 4],
    cpu_us_per_delivery: Option<f64>,
    /// The machine's steal time over the step (`server::steal_time`).
    steal_ms: Option<u64>,
}

impl Step {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    fn json(&self, fanout: &Fanout) -> serde_json::Value {
        let [p50, p99, p999, max] = self.latency_ms;
        serde_json::json!({
            "server": format!("{:?}", fanout.target.kind).to_lowercase(),
            "rooms": fanout.rooms.len(),
            "members": fanout.members,
            "idle_connections": fanout.idle.len(),
            "rate": self.rate,
            "messages": self.messages,
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost(),
            "seconds": self.seconds,
            "deliveries_per_s": self.deliveries_per_s,
            "latency_ms": { "p50": p50, "p99": p99, "p999": p999, "max": max },
            "server_cpu_us_per_delivery": self.cpu_us_per_delivery,
            "steal_ms": self.steal_ms,
        })
    }

    fn print(&self) {
        let [p50, p99, p999, max] = self.latency_ms;
        println!(
            "  {:.0} msg/s: {}/{} delivered, {:.0} deliveries/s, lost {}; latency ms p50 {p50:.2} p99 {p99:.2} p99.9 {p999:.2} max {max:.2}; server CPU per delivery {} µs; steal {} ms",
            self.rate,
            self.received,
            self.expected,
            self.deliveries_per_s,
            self.lost(),
            self.cpu_us_per_delivery
                .map_or("?".into(), |v| format!("{v:.2}")),
            self.steal_ms.map_or("?".into(), |v| v.to_string())
        );
    }
}

impl Fanout {
    async fn setup(args: &FanoutArgs) -> Result<Fanout, Error> {
        let target = Arc::new(Target::new(&args.target)?);
        let prefix = conn::run_prefix(&args.target.prefix, "f");
        eprintln!(
            "fanout ({:?}): {} rooms × {} members, {} senders per room",
            target.kind, args.rooms, args.members, args.senders
        );
        let rooms = target.rooms(args.rooms, &prefix).await?;
        let mut idle = Vec::new();
        if args.idle > 0 {
            let quiet = target.rooms(1, &format!("{prefix}q")).await?;
            idle = hold_idle(&target, &quiet[0], args.idle, 64).await?;
            eprintln!("fanout: {} idle connections up", args.idle);
        }
        let epoch = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let last_at = Arc::new(AtomicU64::new(0));
        // 1 µs to 100 s at 3 significant figures; one histogram for every receiver (the load
        // runs on one core, so the lock is never contended).
        let latencies = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 100_000_000, 3)?));
        for room in &rooms {
            for _ in 0..args.members {
                let (mut reader, mut writer) = target.member(room).await?;
                let (received, last_at, latencies) =
                    (received.clone(), last_at.clone(), latencies.clone());
                tokio::spawn(async move {
                    let mut asked: Option<Vec<u8>> = None;
                    loop {
                        let open = reader
                            .each_text(|frame| {
                                if let Some(sent) = target::sent_at(frame) {
                                    let now = micros_since(epoch);
                                    if let Ok(mut h) = latencies.lock() {
                                        let _ = h.record(now.saturating_sub(sent).max(1));
                                    }
                                    received.fetch_add(1, Ordering::Relaxed);
                                    last_at.fetch_max(now, Ordering::Relaxed);
                                } else if target::asks_for_life_sign(frame) {
                                    asked = Some(frame.to_vec());
                                    return Flow::Stop;
                                }
                                Flow::Continue
                            })
                            .await;
                        if !matches!(open, Ok(true)) {
                            return;
                        }
                        if let Some(frame) = asked.take()
                            && target::keep_alive(&mut writer, &frame).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        }
        let acked = Arc::new(AtomicU64::new(0));
        let mut senders = Vec::new();
        for (r, room) in rooms.iter().enumerate() {
            for _ in 0..args.senders.max(1) {
                let (mut reader, writer) = target.sender(room).await?;
                let (target, acked) = (target.clone(), acked.clone());
                // Senders read their acks (and, on Socket.IO, their own echo) so queues drain.
                tokio::spawn(async move {
                    let _ = reader
                        .each_text(|frame| {
                            if target.is_ack(frame) {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Flow::Continue
                        })
                        .await;
                });
                senders.push((r, writer));
            }
        }
        eprintln!(
            "fanout: {} member and {} sender connections up",
            rooms.len() * args.members,
            senders.len()
        );
        Ok(Fanout {
            target,
            rooms,
            members: args.members,
            epoch,
            received,
            last_at,
            latencies,
            senders,
            acked,
            next_message: 0,
            server_pid: args.target.server_pid,
            idle,
        })
    }

    /// Sends at `rate` for `seconds`, waits for the deliveries to drain, and measures.
    async fn step(&mut self, rate: f64, seconds: u64) -> Result<Step, Error> {
        if let Ok(mut h) = self.latencies.lock() {
            h.reset();
        }
        let received_before = self.received.load(Ordering::Relaxed);
        let cpu_before = self.server_pid.and_then(server::cpu_time);
        let steal_before = server::steal_time();
        let total = (rate * seconds as f64).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let started = Instant::now();
        let started_us = micros_since(self.epoch);
        let progress_every = (total / 10).max(1);
        for i in 0..total {
            let n = self.next_message;
            self.next_message += 1;
            let which = n as usize % self.senders.len();
            let (room, writer) = &mut self.senders[which];
            let frame = self
                .target
                .send_frame(&self.rooms[*room], n, micros_since(self.epoch));
            writer.send_text(&frame).await?;
            if (i + 1) % progress_every == 0 {
                eprint!(
                    "\r  {rate:.0} msg/s: sent {}/{total}, delivered {}   ",
                    i + 1,
                    self.received.load(Ordering::Relaxed) - received_before
                );
            }
            tokio::time::sleep_until((started + interval * (i as u32 + 1)).into()).await;
        }
        eprintln!();
        let expected = total * self.members as u64;
        // Drain: until everything arrived, or nothing more came for two seconds.
        let mut last = self.received.load(Ordering::Relaxed);
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.received.load(Ordering::Relaxed);
            if now - received_before >= expected {
                break;
            }
            if now == last
                && self.last_at.load(Ordering::Relaxed) + 2_000_000 < micros_since(self.epoch)
            {
                break;
            }
            last = now;
        }
        let cpu_after = self.server_pid.and_then(server::cpu_time);
        let steal_ms = server::steal_ms(steal_before);
        let got = self.received.load(Ordering::Relaxed) - received_before;
        let window_us = self
            .last_at
            .load(Ordering::Relaxed)
            .saturating_sub(started_us)
            .max(1);
        let (p50, p99, p999, max) = match self.latencies.lock() {
            Ok(h) => (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
            ),
            Err(_) => (0, 0, 0, 0),
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let cpu_us_per_delivery = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if got > 0 => {
                Some(a.saturating_sub(b).as_secs_f64() * 1e6 / got as f64)
            }
            _ => None,
        };
        Ok(Step {
            rate,
            messages: total,
            expected,
            received: got,
            seconds: started.elapsed().as_secs_f64(),
            deliveries_per_s: got as f64 * 1e6 / window_us as f64,
            latency_ms: [ms(p50), ms(p99), ms(p999), ms(max)],
            cpu_us_per_delivery,
            steal_ms,
        })
    }
}

pub async fn fanout(args: FanoutArgs) -> Result<(), Error> {
    let mut run = Fanout::setup(&args).await?;
    let step = run.step(args.rate, args.seconds).await?;
    step.print();
    let mut json = step.json(&run);
    json["scenario"] = "fanout".into();
    json["acked"] = run.acked.load(Ordering::Relaxed).into();
    println!("{json}");
    Ok(())
}

pub async fn max(args: MaxArgs) -> Result<(), Error> {
    let mut run = Fanout::setup(&args.fanout).await?;
    let mut best: Option<Step> = None;
    let mut steps = Vec::new();
    let passes = |step: &Step| step.latency_ms[1] <= args.p99_ms && step.lost() == 0;
    let mut rate = args.fanout.rate;
    let mut failed_at = None;
    for _ in 0..args.max_steps {
        let step = run.step(rate, args.fanout.seconds).await?;
        step.print();
        steps.push(step.json(&run));
        // Let queues settle between steps.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !passes(&step) {
            failed_at = Some(rate);
            break;
        }
        best = Some(step);
        rate *= args.step;
    }
    // The ladder's answer: every rate below it passed too. A narrowed-down pass is one run at
    // one rate, and p99 near the bound is noisy, so both are reported.
    let ladder_max = best.as_ref().map(|b| b.deliveries_per_s);
    if let (Some(mut failed), Some(mut passed)) = (failed_at, best.as_ref().map(|b| b.rate)) {
        for _ in 0..args.refine {
            let rate = (passed * failed).sqrt();
            let step = run.step(rate, args.fanout.seconds).await?;
            step.print();
            let mut json = step.json(&run);
            json["refined"] = true.into();
            steps.push(json);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if passes(&step) {
                passed = rate;
                best = Some(step);
            } else {
                failed = rate;
            }
        }
    }
    match &best {
        Some(best) => println!(
            "max ({:?}): {:.0} deliveries/s at p99 {:.2} ms (≤ {} ms), server CPU per delivery {} µs",
            run.target.kind,
            best.deliveries_per_s,
            best.latency_ms[1],
            args.p99_ms,
            best.cpu_us_per_delivery
                .map_or("?".into(), |v| format!("{v:.2}"))
        ),
        None => println!("max: even the first rate missed p99 ≤ {} ms", args.p99_ms),
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "max",
            "server": format!("{:?}", run.target.kind).to_lowercase(),
            "p99_bound_ms": args.p99_ms,
            "max_deliveries_per_s": best.as_ref().map(|b| b.deliveries_per_s),
            "ladder_max_deliveries_per_s": ladder_max,
            "step": args.step,
            "refine": args.refine,
            "steps": steps,
        })
    );
    Ok(())
}
