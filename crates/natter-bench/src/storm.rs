//! The `storm` scenario (natter): every client drops its connection at the same instant and
//! reconnects at once with `resume`, while senders keep sending.
//!
//! Each client checks its room's event stream as it goes: every sequence number once, in order.
//! A client has resumed when it has caught up to the last message acknowledged before the drop.
//! Reported: how long until every client had resumed (and p50/p99 of the clients), and lost =
//! sequence numbers never delivered, duplicates = delivered twice. Both must be 0.

use crate::conn::{self, Error};
use crate::target::{Room, Target, TargetArgs};
use crate::wire::{self, Flow, FrameReader};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, default_value_t = 15_000)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages per second, all rooms together, before, during and after the storm. Each reaches
    /// every client of its room: at 15,000 clients in 10 rooms, 10 msg/s is 15,000 deliveries/s.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds of traffic before the drop.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds the clients have to resume.
    #[arg(long, default_value_t = 20)]
    deadline: u64,
    /// Connections opened at once while setting up (the storm itself opens all at once).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// What one client saw of its room's stream.
#[derive(Default, Clone, Copy)]
struct Tally {
    last: u64,
    lost: u64,
    duplicates: u64,
}

impl Tally {
    /// Counts an event frame of `room`; other frames are ignored.
    fn see(&mut self, frame: &[u8], room: &[u8]) {
        const EVENT: &[u8] = br#"{"type":"event","room_id":"#;
        if !frame.starts_with(EVENT) || !frame[EVENT.len()..].starts_with(room) {
            return;
        }
        let Some(seq) = wire::number_after(frame, br#""seq":"#) else {
            return;
        };
        if seq <= self.last {
            self.duplicates += 1;
            return;
        }
        if self.last > 0 {
            self.lost += seq - self.last - 1;
        }
        self.last = seq;
    }
}

struct Shared {
    target: Target,
    epoch: Instant,
    /// Set (µs since epoch) when the clients drop.
    dropped_at: AtomicU64,
    /// Per room: the last sequence acknowledged before the drop; a client has resumed when it
    /// has seen it.
    caught_up_to: Vec<AtomicU64>,
    drop: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
    connected: AtomicUsize,
    /// Per client: µs from the drop until it had caught up.
    resumed_after: Mutex<Vec<u64>>,
    /// Per client: the last sequence it has seen, so the end of the run can wait for everyone.
    progress: Vec<AtomicU64>,
    /// Per client: its room and what it saw.
    tallies: Mutex<Vec<(usize, Tally)>>,
}

/// Reads `reader` into `tally` until `signal` fires (true) or the connection ends (false).
async fn read_until(
    reader: &mut FrameReader,
    tally: &mut Tally,
    room: &[u8],
    signal: &mut tokio::sync::watch::Receiver<bool>,
    mut on_progress: impl FnMut(&Tally),
) -> bool {
    loop {
        tokio::select! {
            _ = signal.wait_for(|fired| *fired) => return true,
            open = reader.each_text(|frame| {
                tally.see(frame, room);
                on_progress(tally);
                Flow::Continue
            }) => if !matches!(open, Ok(true)) { return false },
        }
    }
}

async fn client(
    shared: Arc<Shared>,
    gate: Arc<tokio::sync::Semaphore>,
    index: usize,
    room_index: usize,
    room: Room,
) -> Result<(), Error> {
    let room_marker = format!("{},", room.id).into_bytes();
    let (mut reader, writer, welcome) = {
        let _permit = gate.acquire().await;
        shared.target.hello(&room.member_token, None).await?
    };
    let mut tally = Tally {
        last: wire::number_after(welcome.as_bytes(), br#""last_seq":"#).unwrap_or(0),
        ..Tally::default()
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut drop_signal = shared.drop.clone();
    if !read_until(
        &mut reader,
        &mut tally,
        &room_marker,
        &mut drop_signal,
        |_| {},
    )
    .await
    {
        return Err("the server closed a connection before the storm".into());
    }
    // The storm: drop the socket and come straight back, resuming after what was seen.
    drop((reader, writer));
    let resume = format!(r#"{{"{}":{}}}"#, room.id, tally.last);
    let mut attempt = 0;
    let (mut reader, _writer, _welcome) = loop {
        match shared.target.hello(&room.member_token, Some(&resume)).await {
            Ok(connection) => break connection,
            Err(error) if attempt >= 20 => return Err(error),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
        }
    };
    let goal = shared.caught_up_to[room_index].load(Ordering::Relaxed);
    let dropped_at = shared.dropped_at.load(Ordering::Relaxed);
    let epoch = shared.epoch;
    let mut resumed = false;
    let mut record = |tally: &Tally| {
        if !resumed && tally.last >= goal {
            resumed = true;
            let after = (epoch.elapsed().as_micros() as u64).saturating_sub(dropped_at);
            if let Ok(mut all) = shared.resumed_after.lock() {
                all.push(after);
            }
        }
    };
    shared.progress[index].store(tally.last, Ordering::Relaxed);
    record(&tally);
    let mut stop = shared.stop.clone();
    let stayed = read_until(
        &mut reader,
        &mut tally,
        &room_marker,
        &mut stop,
        |tally: &Tally| {
            shared.progress[index].store(tally.last, Ordering::Relaxed);
            record(tally)
        },
    )
    .await;
    if let Ok(mut all) = shared.tallies.lock() {
        all.push((room_index, tally));
    }
    if !stayed {
        return Err(format!(
            "the server closed a resumed connection at seq {}",
            tally.last
        )
        .into());
    }
    Ok(())
}

pub async fn run(args: Args) -> Result<(), Error> {
    let target = Target::new(&args.target)?;
    if target.kind != crate::target::Kind::Natter {
        return Err("storm measures resume, which only natter has".into());
    }
    let prefix = conn::run_prefix(&args.target.prefix, "s");
    let rooms = target.rooms(args.rooms, &prefix).await?;
    let (drop_tx, drop_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        target,
        epoch: Instant::now(),
        dropped_at: AtomicU64::new(0),
        caught_up_to: rooms.iter().map(|_| AtomicU64::new(0)).collect(),
        drop: drop_rx,
        stop: stop_rx,
        connected: AtomicUsize::new(0),
        resumed_after: Mutex::new(Vec::with_capacity(args.clients)),
        progress: (0..args.clients).map(|_| AtomicU64::new(0)).collect(),
        tallies: Mutex::new(Vec::with_capacity(args.clients)),
    });
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut clients = Vec::with_capacity(args.clients);
    for n in 0..args.clients {
        let room_index = n % rooms.len();
        clients.push(tokio::spawn(client(
            shared.clone(),
            gate.clone(),
            n,
            room_index,
            rooms[room_index].clone(),
        )));
    }
    for _ in 0..6000 {
        let up = shared.connected.load(Ordering::Relaxed);
        if up >= args.clients || clients.iter().any(|c| c.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "storm: {} clients connected",
        shared.connected.load(Ordering::Relaxed)
    );
    // Senders: one per room; each ack carries the message's sequence number.
    let last_acked: Arc<Vec<AtomicU64>> =
        Arc::new(rooms.iter().map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let (mut reader, writer) = shared.target.sender(room).await?;
        let last_acked = last_acked.clone();
        tokio::spawn(async move {
            let _ = reader
                .each_text(|frame| {
                    if frame.starts_with(br#"{"type":"sent""#)
                        && let Some(seq) = wire::number_after(frame, br#""seq":"#)
                    {
                        last_acked[r].fetch_max(seq, Ordering::Relaxed);
                    }
                    Flow::Continue
                })
                .await;
        });
        writers.push(writer);
    }
    let sending = {
        let shared = shared.clone();
        let rooms = rooms.clone();
        let rate = args.rate;
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
            let started = Instant::now();
            for n in 0u64..100_000_000 {
                let r = n as usize % rooms.len();
                let frame = shared.target.send_frame(&rooms[r], n, 0);
                if writers[r].send_text(&frame).await.is_err() {
                    break;
                }
                tokio::time::sleep_until((started + interval * (n as u32 + 1)).into()).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    // Sends acknowledged by now must reach every client after the storm.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (r, seq) in last_acked.iter().enumerate() {
        shared.caught_up_to[r].store(seq.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    shared
        .dropped_at
        .store(shared.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    let storm_started = Instant::now();
    let server_cpu = || args.target.server_pid.and_then(crate::server::cpu_time);
    let cpu_before = server_cpu();
    let steal_before = crate::server::steal_time();
    let _ = drop_tx.send(true);
    eprintln!("storm: {} clients dropped at once", args.clients);
    let deadline = storm_started + Duration::from_secs(args.deadline);
    while Instant::now() < deadline {
        let resumed = shared.resumed_after.lock().map(|r| r.len()).unwrap_or(0);
        eprint!("\r  resumed {resumed}/{}   ", args.clients);
        if resumed >= args.clients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Server CPU over the storm, to the 100 ms tick after the last resume. On one saturated
    // core it tracks the storm's length; with cores to spare it is what the starts cost.
    let storm_cpu_s = cpu_before
        .zip(server_cpu())
        .map(|(before, after)| after.saturating_sub(before).as_secs_f64());
    let steal_ms = crate::server::steal_ms(steal_before);
    eprintln!();
    // Stop sending, let the last acks and deliveries arrive, then stop the clients and compare
    // what each saw with its room's last acknowledged message.
    sending.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let final_seq: Vec<u64> = last_acked
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let behind = || {
        (0..args.clients)
            .filter(|n| {
                shared.progress[*n].load(Ordering::Relaxed) < final_seq[n % final_seq.len()]
            })
            .count()
    };
    for _ in 0..(args.deadline * 10) {
        if behind() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let mut failed = 0;
    for client in clients {
        let outcome = client.await;
        if !matches!(outcome, Ok(Ok(()))) {
            if failed == 0 {
                eprintln!("storm: first client error: {outcome:?}");
            }
            failed += 1;
        }
    }
    let mut resumed_after = shared
        .resumed_after
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    resumed_after.sort_unstable();
    let tallies = shared.tallies.lock().map(|t| t.clone()).unwrap_or_default();
    // Lost: sequence numbers a stream skipped. Behind: clients that had not reached their room's
    // last message when the run ended (slow, not lost: a resume would bring the rest).
    let lost: u64 = tallies.iter().map(|(_, t)| t.lost).sum();
    let duplicates: u64 = tallies.iter().map(|(_, t)| t.duplicates).sum();
    let behind = tallies
        .iter()
        .filter(|(room, t)| t.last < final_seq[*room])
        .count();
    let pick = |q: f64| {
        resumed_after
            .get(
                ((resumed_after.len() as f64 * q) as usize)
                    .min(resumed_after.len().saturating_sub(1)),
            )
            .map(|us| *us as f64 / 1e6)
    };
    let all_resumed_s = (resumed_after.len() == args.clients)
        .then(|| resumed_after.last().map(|us| *us as f64 / 1e6))
        .flatten();
    println!(
        "storm: {} clients in {} rooms dropped at once: {} resumed; all within {} s (p50 {:?} s, p99 {:?} s); lost {lost}, duplicates {duplicates}, behind at the end {behind}, client errors {failed}; server CPU {}",
        args.clients,
        args.rooms,
        resumed_after.len(),
        all_resumed_s.map_or("— (not all)".into(), |s| format!("{s:.2}")),
        pick(0.5),
        pick(0.99),
        storm_cpu_s.map_or("unknown (no --server-pid)".into(), |s| format!("{s:.2} s")),
    );
    println!(
        "{}",
        serde_json::json!({
            "scenario": "storm",
            "clients": args.clients,
            "rooms": args.rooms,
            "rate": args.rate,
            "resumed": resumed_after.len(),
            "all_resumed_s": all_resumed_s,
            "resumed_s": { "p50": pick(0.5), "p99": pick(0.99) },
            "lost": lost,
            "duplicates": duplicates,
            "behind_at_end": behind,
            "client_errors": failed,
            "server_cpu_s": storm_cpu_s,
            "steal_ms": steal_ms,
        })
    );
    // Not a timing: a message lost or delivered twice is a bug, whatever the machine.
    if lost > 0 || duplicates > 0 || failed > 0 {
        return Err(
            format!("storm: {lost} lost, {duplicates} duplicated, {failed} client errors").into(),
        );
    }
    Ok(())
}
