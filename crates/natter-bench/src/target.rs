//! The servers a scenario can drive: natter, the Socket.IO 4 baseline
//! (`../shared/bench/socketio`, Engine.IO v4 over WebSocket), doing the same work, or the
//! no-logic broadcaster (`natter-bench limit-server`) speaking the baseline's protocol.
//!
//! Both carry the send time in the message body as `"body":"t<microseconds>"`, so receivers of
//! either measure latency by the same substring.

use crate::conn::{self, Error};
use crate::wire::{self, Flow, FrameReader, FrameWriter};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Natter,
    Socketio,
    Limit,
}

impl Kind {
    /// Socket.IO's protocol (Engine.IO v4), which the limit server speaks too.
    fn engine_io(self) -> bool {
        matches!(self, Kind::Socketio | Kind::Limit)
    }
}

/// Where the load goes and which protocol it speaks.
#[derive(clap::Args, Clone)]
pub struct TargetArgs {
    /// The server's base URL (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Which server that is.
    #[arg(long, value_enum, default_value_t = Kind::Natter)]
    pub server: Kind,
    /// The server's PID, to read its memory and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How many local addresses (127.0.0.1, 127.0.0.2, …) client sockets come from, so a large
    /// run does not run out of ephemeral ports.
    #[arg(long, default_value_t = 4)]
    pub local_ips: u8,
    /// Prefix for the users a run registers (default: a fresh one per run).
    #[arg(long)]
    pub prefix: Option<String>,
}

/// A room as the target knows it, with the credentials its clients use.
#[derive(Clone)]
pub struct Room {
    /// natter's room id, or the Socket.IO room name.
    pub id: String,
    pub sender_token: String,
    pub member_token: String,
}

pub struct Target {
    pub kind: Kind,
    pub base_url: String,
    addr: SocketAddr,
    local_ips: u8,
    next_local: std::sync::atomic::AtomicU32,
}

impl Target {
    pub fn new(args: &TargetArgs) -> Result<Target, Error> {
        let host = args
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| format!("cannot resolve {host}"))?;
        Ok(Target {
            kind: args.server,
            base_url: args.url.trim_end_matches('/').to_owned(),
            addr,
            local_ips: args.local_ips.max(1),
            next_local: 0.into(),
        })
    }

    fn local(&self) -> Option<IpAddr> {
        if !self.addr.ip().is_loopback() {
            return None;
        }
        let n = self
            .next_local
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(IpAddr::from([
            127,
            0,
            0,
            1 + (n % u32::from(self.local_ips)) as u8,
        ]))
    }

    /// Sets up `count` rooms: on natter, two users per room (a sender who owns it and a member
    /// whose sessions receive); on Socket.IO, room names.
    pub async fn rooms(&self, count: usize, prefix: &str) -> Result<Vec<Room>, Error> {
        match self.kind {
            Kind::Socketio | Kind::Limit => Ok((0..count)
                .map(|r| Room {
                    id: format!("{prefix}room{r}"),
                    sender_token: String::new(),
                    member_token: String::new(),
                })
                .collect()),
            Kind::Natter => {
                let tokens = conn::register_users(&self.base_url, prefix, count * 2).await?;
                let mut rooms = Vec::with_capacity(count);
                for r in 0..count {
                    let (owner, member) = (&tokens[2 * r], &tokens[2 * r + 1]);
                    let id = self.create_room(owner, &format!("{prefix}room{r}")).await?;
                    let (mut reader, mut writer) = self.open(member).await?;
                    request(
                        &mut reader,
                        &mut writer,
                        1,
                        &format!(r#""type":"join","room_id":{id}"#),
                    )
                    .await?;
                    rooms.push(Room {
                        id: id.to_string(),
                        sender_token: owner.clone(),
                        member_token: member.clone(),
                    });
                }
                Ok(rooms)
            }
        }
    }

    async fn create_room(&self, token: &str, name: &str) -> Result<u64, Error> {
        let (mut reader, mut writer) = self.open(token).await?;
        let reply = request(
            &mut reader,
            &mut writer,
            1,
            &format!(r#""type":"create_room","name":"{name}","visibility":"public""#),
        )
        .await?;
        let at = reply.find(r#""room":{"#).ok_or("no room in the reply")?;
        wire::number_after(&reply.as_bytes()[at..], br#""id":"#)
            .ok_or_else(|| "no room id in the reply".into())
    }

    /// A natter connection after `hello` (with `resume`, a map `{"room":seq}`, if given), and
    /// the `welcome` text.
    pub async fn hello(
        &self,
        token: &str,
        resume: Option<&str>,
    ) -> Result<(FrameReader, FrameWriter, String), Error> {
        let (mut reader, mut writer) =
            wire::connect(self.addr, self.local(), natter_protocol::WS_PATH).await?;
        let resume = resume
            .map(|r| format!(r#","resume":{r}"#))
            .unwrap_or_default();
        writer
            .send_text(&format!(
                r#"{{"id":0,"type":"hello","token":"{token}"{resume}}}"#
            ))
            .await?;
        loop {
            let text = reader.next_text().await?;
            if text.starts_with(r#"{"type":"welcome""#) {
                return Ok((reader, writer, text));
            }
            if text.contains(r#""type":"error""#) {
                return Err(format!("hello refused: {text}").into());
            }
        }
    }

    /// An authenticated natter connection (after its `welcome`) or an open Socket.IO one
    /// (after `40`), with no room joined yet.
    pub async fn open(&self, token: &str) -> Result<(FrameReader, FrameWriter), Error> {
        match self.kind {
            Kind::Natter => {
                let (reader, writer, _welcome) = self.hello(token, None).await?;
                Ok((reader, writer))
            }
            Kind::Socketio | Kind::Limit => {
                let (mut reader, mut writer) = wire::connect(
                    self.addr,
                    self.local(),
                    "/socket.io/?EIO=4&transport=websocket",
                )
                .await?;
                let open = reader.next_text().await?;
                if !open.starts_with("0{") {
                    return Err(format!("expected an Engine.IO open packet, got {open}").into());
                }
                writer.send_text("40").await?;
                loop {
                    let text = reader.next_text().await?;
                    if text.starts_with("40") {
                        return Ok((reader, writer));
                    }
                }
            }
        }
    }

    /// A connection that receives `room`'s messages.
    pub async fn member(&self, room: &Room) -> Result<(FrameReader, FrameWriter), Error> {
        let (mut reader, mut writer) = self.open(&room.member_token).await?;
        if self.kind.engine_io() {
            join_socketio(&mut reader, &mut writer, &room.id).await?;
        }
        Ok((reader, writer))
    }

    /// A connection that sends to `room` (on Socket.IO it is a member too: the server refuses
    /// messages to rooms the socket is not in, and echoes them to the sender).
    pub async fn sender(&self, room: &Room) -> Result<(FrameReader, FrameWriter), Error> {
        let (mut reader, mut writer) = self.open(&room.sender_token).await?;
        if self.kind.engine_io() {
            join_socketio(&mut reader, &mut writer, &room.id).await?;
        }
        Ok((reader, writer))
    }

    /// The frame that sends message `n` to `room`, stamped with `sent_us`; on natter with a
    /// fresh `client_msg_id` of the kind its clients make.
    pub fn send_frame(&self, room: &Room, n: u64, sent_us: u64) -> String {
        match self.kind {
            Kind::Natter => format!(
                r#"{{"id":{},"type":"send","room_id":{},"client_msg_id":"{}","body":"t{sent_us}"}}"#,
                n + 10,
                room.id,
                natter_client::new_client_msg_id(),
            ),
            Kind::Socketio | Kind::Limit => format!(
                r#"42{}["msg",{{"room":"{}","body":"t{sent_us}","ts":0}}]"#,
                n + 10,
                room.id
            ),
        }
    }

    /// True when `frame` acknowledges a send (natter `sent`, Socket.IO `43<id>`).
    pub fn is_ack(&self, frame: &[u8]) -> bool {
        match self.kind {
            Kind::Natter => frame.starts_with(br#"{"type":"sent""#),
            Kind::Socketio | Kind::Limit => frame.starts_with(b"43"),
        }
    }
}

/// Measured traffic: the send time in a delivered message, if `frame` is one.
pub fn sent_at(frame: &[u8]) -> Option<u64> {
    wire::number_after(frame, br#""body":"t"#)
}

/// True for a frame a receiver must answer to stay connected: an Engine.IO ping (`2`), or
/// natter's `heartbeat` (natter closes a connection it hears nothing from for
/// `heartbeat_timeout_ms`, 60 s by default, as it should; a long `max` run outlasts that).
pub fn asks_for_life_sign(frame: &[u8]) -> bool {
    frame == b"2" || frame.starts_with(br#"{"type":"heartbeat""#)
}

/// Answers a frame for which `asks_for_life_sign` held: `3` to Engine.IO, a `ping` to natter.
pub async fn keep_alive(writer: &mut FrameWriter, frame: &[u8]) -> std::io::Result<()> {
    if frame == b"2" {
        writer.send_text("3").await
    } else {
        writer.send_text(r#"{"id":1,"type":"ping"}"#).await
    }
}

/// Reads and drops everything, answering pings and heartbeats, until the connection closes.
pub async fn hold(reader: &mut FrameReader, writer: &mut FrameWriter) {
    loop {
        let mut asked = Vec::new();
        let open = reader
            .each_text(|frame| {
                if asks_for_life_sign(frame) {
                    asked = frame.to_vec();
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
            .await;
        if !matches!(open, Ok(true)) || keep_alive(writer, &asked).await.is_err() {
            return;
        }
    }
}

async fn join_socketio(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    room: &str,
) -> Result<(), Error> {
    writer
        .send_text(&format!(r#"421["join","{room}"]"#))
        .await?;
    loop {
        let text = reader.next_text().await?;
        if text.starts_with("431") {
            return Ok(());
        }
    }
}

/// Sends one natter request and waits for its reply (skipping pushed frames).
pub async fn request(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    id: u64,
    body: &str,
) -> Result<String, Error> {
    writer
        .send_text(&format!(r#"{{"id":{id},{body}}}"#))
        .await?;
    // Replies start `{"type":"…","id":N,`; pushed frames never have an `id` right after the type.
    let marker = format!(r#"","id":{id},"#);
    let mut reply = None;
    reader
        .each_text(|frame| {
            if frame.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                reply = Some(String::from_utf8_lossy(frame).into_owned());
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .await?;
    let reply = reply.ok_or("closed before the reply")?;
    if reply.contains(r#""type":"error""#) {
        return Err(format!("request {body} failed: {reply}").into());
    }
    Ok(reply)
}
