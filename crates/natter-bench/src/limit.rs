//! `limit-server`: the issue's "Rust broadcaster with no logic at all", the floor for what a
//! delivery can cost on this machine.
//!
//! It speaks the Socket.IO baseline's wire protocol (Engine.IO v4 over WebSocket, `join` and
//! `msg` events; `../shared/bench/socketio/README.md`), so every scenario drives it unchanged
//! with `--server limit`. It stores nothing, checks nothing beyond framing, and batches the way
//! the issue describes: each broadcast is framed once and its bytes shared by every member, and
//! a connection's queued frames go out in one `writev`. Whatever natter spends above it per
//! delivery is natter's own; what both spend is the kernel's.

use crate::conn::Error;
use natter_protocol::websocket::{self, Opcode, Role};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen (a loopback address).
    #[arg(long, default_value = "127.0.0.1:3200")]
    listen: String,
}

/// Largest client message accepted; the scenarios send a few hundred bytes.
const MAX_MESSAGE: usize = 64 * 1024;

thread_local! {
    /// Reads land here and only unparsed bytes are kept per connection, so an idle connection
    /// holds no buffer (as natter's reader does).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

/// One connection's frames waiting for its writer.
#[derive(Default)]
struct Outbox {
    frames: Mutex<Vec<Arc<[u8]>>>,
    ready: Notify,
}

impl Outbox {
    fn push(&self, frame: Arc<[u8]>) {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame);
        self.ready.notify_one();
    }
}

#[derive(Default)]
struct Server {
    rooms: Mutex<HashMap<String, Vec<Arc<Outbox>>>>,
    next_id: AtomicU64,
}

pub async fn run(args: Args) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!("limit-server listening on {}", listener.local_addr()?);
    let server = Arc::new(Server::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(server.clone(), stream));
    }
}

/// A text frame as the server sends it (unmasked), ready to share.
fn text_frame(text: &str) -> Arc<[u8]> {
    let header = websocket::header(Opcode::Text, text.len(), None);
    let mut frame = Vec::with_capacity(header.as_slice().len() + text.len());
    frame.extend_from_slice(header.as_slice());
    frame.extend_from_slice(text.as_bytes());
    frame.into()
}

async fn connection(server: Arc<Server>, mut stream: TcpStream) {
    let Some(pending) = upgrade(&mut stream).await else {
        return;
    };
    let (read, write) = stream.into_split();
    let outbox = Arc::new(Outbox::default());
    outbox.push(text_frame(
        r#"0{"sid":"limit","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
    ));
    let writer = tokio::spawn(write_frames(write, outbox.clone()));
    let joined = read_messages(&server, read, pending, &outbox).await;
    writer.abort();
    let mut rooms = server.rooms.lock().unwrap_or_else(|e| e.into_inner());
    for room in joined {
        if let Some(members) = rooms.get_mut(&room) {
            members.retain(|member| !Arc::ptr_eq(member, &outbox));
        }
    }
}

/// Answers the WebSocket handshake; the bytes read after it, if any.
async fn upgrade(stream: &mut TcpStream) -> Option<Vec<u8>> {
    // Read into the vector itself: a buffer on the stack would live in every connection's future.
    let mut request = Vec::with_capacity(2048);
    let end = loop {
        stream
            .read_buf(&mut request)
            .await
            .ok()
            .filter(|n| *n > 0)?;
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if request.len() > 16 * 1024 {
            return None;
        }
    };
    let head = std::str::from_utf8(&request[..end]).ok()?;
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some(request.split_off(end))
}

/// Writes whatever is queued, all of it in one `writev`, until the connection fails.
async fn write_frames(mut write: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut batch: Vec<Arc<[u8]>> = Vec::new();
    loop {
        outbox.ready.notified().await;
        std::mem::swap(
            &mut batch,
            &mut outbox.frames.lock().unwrap_or_else(|e| e.into_inner()),
        );
        let total: usize = batch.iter().map(|frame| frame.len()).sum();
        let mut written = 0;
        while written < total {
            let mut skip = written;
            let slices: Vec<IoSlice<'_>> = batch
                .iter()
                .filter_map(|frame| {
                    if skip >= frame.len() {
                        skip -= frame.len();
                        None
                    } else {
                        let slice = IoSlice::new(&frame[skip..]);
                        skip = 0;
                        Some(slice)
                    }
                })
                .collect();
            match write.write_vectored(&slices).await {
                Ok(n) if n > 0 => written += n,
                _ => return,
            }
        }
        batch = Vec::new();
    }
}

/// Reads client frames and answers Engine.IO packets until the connection ends; the rooms
/// joined.
async fn read_messages(
    server: &Server,
    mut read: OwnedReadHalf,
    mut buf: Vec<u8>,
    outbox: &Arc<Outbox>,
) -> Vec<String> {
    let mut joined = Vec::new();
    loop {
        // Every complete frame in the buffer, then more bytes.
        let mut at = 0;
        loop {
            let header = match websocket::parse_header(&buf[at..], Role::Server, MAX_MESSAGE) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => return joined,
            };
            let start = at + header.header_len;
            let end = start + header.payload_len;
            if buf.len() < end {
                break;
            }
            if let Some(mask) = header.mask {
                websocket::apply_mask(&mut buf[start..end], mask);
            }
            match header.opcode {
                Opcode::Close => return joined,
                Opcode::Text => {
                    let Ok(text) = std::str::from_utf8(&buf[start..end]) else {
                        return joined;
                    };
                    packet(server, text, outbox, &mut joined);
                }
                _ => {}
            }
            at = end;
        }
        buf.drain(..at);
        if buf.is_empty() {
            buf = Vec::new();
        }
        let read = poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut into = ReadBuf::new(scratch);
                match Pin::new(&mut read).poll_read(cx, &mut into) {
                    Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(into.filled());
                        Poll::Ready(into.filled().len())
                    }
                    Poll::Ready(Err(_)) => Poll::Ready(0),
                    Poll::Pending => Poll::Pending,
                }
            })
        })
        .await;
        if read == 0 {
            return joined;
        }
    }
}

/// One Engine.IO packet: `40` (connect), `2` (ping), `42<ack>["join",room]`,
/// `42<ack>["msg",{room,body,ts}]`.
fn packet(server: &Server, text: &str, outbox: &Arc<Outbox>, joined: &mut Vec<String>) {
    if text.starts_with("40") {
        outbox.push(text_frame(r#"40{"sid":"limit"}"#));
        return;
    }
    if text == "2" {
        outbox.push(text_frame("3"));
        return;
    }
    let Some(event) = text.strip_prefix("42") else {
        return;
    };
    let digits = event.bytes().take_while(u8::is_ascii_digit).count();
    let (ack, event) = event.split_at(digits);
    if let Some(room) = event
        .strip_prefix(r#"["join",""#)
        .and_then(|rest| rest.strip_suffix(r#""]"#))
    {
        server
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(room.to_owned())
            .or_default()
            .push(outbox.clone());
        joined.push(room.to_owned());
        outbox.push(text_frame(&format!(
            r#"43{ack}[{{"ok":true,"room":"{room}"}}]"#
        )));
        return;
    }
    let Some(message) = event
        .strip_prefix(r#"["msg","#)
        .and_then(|rest| rest.strip_suffix("}]"))
    else {
        return;
    };
    let Some(room) = message
        .split_once(r#""room":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(room, _)| room)
    else {
        return;
    };
    let id = server.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let frame = text_frame(&format!(r#"42["msg",{message},"id":{id}}}]"#));
    if let Some(members) = server
        .rooms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(room)
    {
        for member in members {
            member.push(frame.clone());
        }
    }
    outbox.push(text_frame(&format!(r#"43{ack}[{{"ok":true,"id":{id}}}]"#)));
}
