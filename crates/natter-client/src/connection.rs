//! The client's connection task: one WebSocket at a time, replaced when it fails.
//!
//! The task owns the socket. Callers talk to it through a command channel; replies come back on
//! per-request oneshots matched by request id; pushed frames go to the event channel. When the
//! socket fails, pending requests fail with `Disconnected`, and the task reconnects with
//! exponential backoff and jitter, sending `hello` with the cursor of every room so the server
//! sends exactly what was missed.

use crate::{ClientError, new_client_msg_id, websocket_url};
use futures_util::{SinkExt, StreamExt};
use natter_protocol::frame::{ClientFrame, Request, ServerFrame};
use natter_protocol::{
    CloseCode, ErrorCode, Message, RequestId, RoomId, RoomInfo, RoomSeq, UserInfo, codec,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How a [`Client`] behaves. `Options::new(base_url, token)` gives the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's base URL, `http://host:port`.
    pub base_url: String,
    pub token: String,
    /// Rooms and the last sequence already applied, for resuming a session saved earlier.
    pub resume: BTreeMap<RoomId, RoomSeq>,
    /// How long a request waits for its reply.
    pub request_timeout: Duration,
    /// First and largest reconnect delay; each failure doubles it, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Attempts of one send before giving up.
    pub send_attempts: u32,
}

impl Options {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Options {
        Options {
            base_url: base_url.into(),
            token: token.into(),
            resume: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            send_attempts: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Online,
    Reconnecting,
    /// For good: closed by the application, or the server refused the token.
    Closed,
}

/// What the application receives, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A session started (first connect or reconnect): the room snapshot from `welcome`. Missed
    /// events follow as `Frame`s.
    Connected { rooms: Vec<RoomInfo>, resumed: bool },
    /// A pushed frame: `event`, `gap`, `room_added` or `room_removed`.
    Frame(ServerFrame),
    /// The connection dropped; the client is reconnecting unless `state` says `Closed`.
    Disconnected { close_code: Option<u16> },
}

enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<ServerFrame, ClientError>>,
    },
    /// Drop the connection of this generation (a request for an older one is ignored).
    DropConnection(u64),
}

struct Shared {
    cursors: Mutex<BTreeMap<RoomId, RoomSeq>>,
    user: Mutex<Option<UserInfo>>,
    /// Counts connections; `drop_connection` names the one it means.
    generation: AtomicU64,
}

/// A natter session that reconnects and resumes by itself. See the crate docs.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    closing: watch::Sender<bool>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    state: watch::Receiver<ConnectionState>,
    shared: Arc<Shared>,
    options: Options,
}

impl Client {
    /// Connects and waits for the first `welcome`. Fails if the server cannot be reached or
    /// refuses the token; after that, the client keeps itself connected.
    pub async fn connect(options: Options) -> Result<Client, ClientError> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let shared = Arc::new(Shared {
            cursors: Mutex::new(options.resume.clone()),
            user: Mutex::new(None),
            generation: AtomicU64::new(1),
        });
        let (closing, closing_rx) = watch::channel(false);
        let first = Connection::open(&options, &shared, false).await?;
        let rooms = first.rooms.clone();
        let _ = event_tx.send(ClientEvent::Connected {
            rooms,
            resumed: !options.resume.is_empty(),
        });
        let _ = state_tx.send(ConnectionState::Online);
        let task = Task {
            options: options.clone(),
            shared: shared.clone(),
            commands: command_rx,
            events: event_tx,
            state: state_tx,
            closing: closing_rx,
            next_id: 2,
        };
        tokio::spawn(task.run(first));
        Ok(Client {
            commands,
            closing,
            events,
            state,
            shared,
            options,
        })
    }

    /// Connects with default options.
    pub async fn connect_with_token(base_url: &str, token: &str) -> Result<Client, ClientError> {
        Client::connect(Options::new(base_url, token)).await
    }

    /// The account this session belongs to.
    pub fn user(&self) -> Option<UserInfo> {
        self.shared
            .user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// Waits until the connection is in `state` (or `timeout` passes).
    pub async fn wait_for_state(&mut self, want: ConnectionState, within: Duration) -> bool {
        timeout(within, self.state.wait_for(|s| *s == want))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The last sequence received per room: what a reconnect resumes from.
    pub fn cursors(&self) -> BTreeMap<RoomId, RoomSeq> {
        self.shared
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The next event, or `None` once the client is closed and every event was taken.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The next event if one arrives within `within`.
    pub async fn next_event_within(&mut self, within: Duration) -> Option<ClientEvent> {
        timeout(within, self.events.recv()).await.ok().flatten()
    }

    /// Sends one request and waits for its reply. An `error` reply becomes `ClientError::Server`.
    pub async fn request(&self, request: Request) -> Result<ServerFrame, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request { request, reply })
            .map_err(|_| ClientError::Closed(None))?;
        match timeout(self.options.request_timeout, answer).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed(None)),
            Ok(Ok(result)) => result,
        }
    }

    /// Sends a message and returns it once the server has stored it. Retries through
    /// disconnects and retryable errors with the same `client_msg_id`, so it is stored once.
    pub async fn send_message(
        &self,
        room_id: RoomId,
        body: impl Into<String>,
    ) -> Result<Message, ClientError> {
        self.send_with_id(room_id, new_client_msg_id(), body.into())
            .await
    }

    /// [`send_message`](Self::send_message) with a caller-chosen id (for an outbox that
    /// survives restarts).
    pub async fn send_with_id(
        &self,
        room_id: RoomId,
        client_msg_id: natter_protocol::ClientMsgId,
        body: String,
    ) -> Result<Message, ClientError> {
        let mut delay = self.options.backoff_min;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = Request::Send {
                room_id,
                client_msg_id: client_msg_id.clone(),
                body: body.clone(),
            };
            let wait = match self.request(request).await {
                Ok(ServerFrame::Sent { message, .. }) => return Ok(message),
                Ok(other) => {
                    return Err(ClientError::Transport(format!(
                        "unexpected reply {other:?}"
                    )));
                }
                Err(ClientError::Server {
                    code,
                    retry_after_ms,
                    ..
                }) if code.retryable() => {
                    retry_after_ms.map(Duration::from_millis).unwrap_or(delay)
                }
                Err(ClientError::Disconnected | ClientError::Timeout) => delay,
                Err(error) => return Err(error),
            };
            if attempt >= self.options.send_attempts {
                return Err(ClientError::Timeout);
            }
            sleep(wait).await;
            delay = (delay * 2).min(self.options.backoff_max);
        }
    }

    /// Drops the current socket as a network failure would. The client reconnects and resumes.
    pub fn drop_connection(&self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let _ = self.commands.send(Command::DropConnection(generation));
    }

    /// Closes the session for good.
    pub fn close(&self) {
        let _ = self.closing.send(true);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One open, authenticated socket.
struct Connection {
    socket: Socket,
    rooms: Vec<RoomInfo>,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
}

impl Connection {
    /// Connects, sends `hello` with the current cursors, and reads up to the `welcome`.
    async fn open(
        options: &Options,
        shared: &Shared,
        resuming: bool,
    ) -> Result<Connection, ClientError> {
        let url = websocket_url(&options.base_url);
        let (mut socket, _) = timeout(
            options.request_timeout,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Transport(e.to_string()))?;
        let resume = if resuming || !options.resume.is_empty() {
            shared
                .cursors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            BTreeMap::new()
        };
        let hello = ClientFrame {
            id: RequestId(1),
            request: Request::Hello {
                token: Some(options.token.clone()),
                resume,
            },
        };
        socket
            .send(WsMessage::Text(codec::encode(&hello).into()))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let deadline = Instant::now() + options.request_timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, socket.next())
                .await
                .map_err(|_| ClientError::Timeout)?;
            let text = match message {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    return Err(ClientError::Closed(code.and_then(CloseCode::from_code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ClientError::Transport(e.to_string())),
                None => return Err(ClientError::Disconnected),
            };
            let frame = codec::decode_server_frame(&text)
                .map_err(|e| ClientError::Transport(format!("bad frame from server: {e}")))?;
            match frame {
                ServerFrame::Welcome {
                    rooms,
                    user,
                    limits,
                    ..
                } => {
                    *shared.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(user);
                    let mut cursors = shared.cursors.lock().unwrap_or_else(|e| e.into_inner());
                    let previous = std::mem::take(&mut *cursors);
                    for room in &rooms {
                        let cursor = match previous.get(&room.id) {
                            Some(seq) if resuming || !options.resume.is_empty() => {
                                (*seq).min(room.last_seq)
                            }
                            _ => room.last_seq,
                        };
                        cursors.insert(room.id, cursor);
                    }
                    return Ok(Connection {
                        socket,
                        rooms,
                        heartbeat_interval: Duration::from_millis(limits.heartbeat_interval_ms),
                        heartbeat_timeout: Duration::from_millis(limits.heartbeat_timeout_ms),
                    });
                }
                ServerFrame::Error {
                    code,
                    message,
                    retry_after_ms,
                    ..
                } => {
                    return Err(ClientError::Server {
                        code,
                        message,
                        retry_after_ms,
                    });
                }
                // Gap frames for rooms come right after the welcome, never before it.
                _ => continue,
            }
        }
    }
}

struct Task {
    options: Options,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
    state: watch::Sender<ConnectionState>,
    closing: watch::Receiver<bool>,
    next_id: u64,
}

/// Why a connection ended.
enum Ended {
    /// Reconnect; with the server's close code if it sent one.
    Dropped(Option<u16>),
    /// Stop for good.
    Closed(Option<u16>),
}

/// A write the server does not take within this long means a dead connection: without the bound,
/// one write to a half-open socket would stall the heartbeat check with it.
const SOCKET_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves once the application closed the client.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not in the select arm.
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Close codes after which reconnecting cannot help.
fn is_final(code: u16) -> bool {
    matches!(
        CloseCode::from_code(code),
        Some(CloseCode::AuthFailed | CloseCode::Revoked)
    )
}

impl Task {
    async fn run(mut self, first: Connection) {
        let mut ended = self.serve(first).await;
        let mut delay = self.options.backoff_min;
        loop {
            let close_code = match ended {
                Ended::Closed(close_code) => {
                    let _ = self.state.send(ConnectionState::Closed);
                    let _ = self.events.send(ClientEvent::Disconnected { close_code });
                    return;
                }
                Ended::Dropped(close_code) => close_code,
            };
            let _ = self.state.send(ConnectionState::Reconnecting);
            let _ = self.events.send(ClientEvent::Disconnected { close_code });
            // Requests made while offline wait in the command channel for the next connection.
            ended = loop {
                tokio::select! {
                    _ = sleep(jitter(delay)) => {}
                    _ = closed(&mut self.closing) => break Ended::Closed(None),
                }
                delay = (delay * 2).min(self.options.backoff_max);
                match Connection::open(&self.options, &self.shared, true).await {
                    Ok(connection) => {
                        delay = self.options.backoff_min;
                        self.shared.generation.fetch_add(1, Ordering::SeqCst);
                        let _ = self.events.send(ClientEvent::Connected {
                            rooms: connection.rooms.clone(),
                            resumed: true,
                        });
                        let _ = self.state.send(ConnectionState::Online);
                        break self.serve(connection).await;
                    }
                    Err(ClientError::Closed(Some(code))) if is_final(code.code()) => {
                        break Ended::Closed(Some(code.code()));
                    }
                    Err(ClientError::Server {
                        code: ErrorCode::AuthFailed,
                        ..
                    }) => break Ended::Closed(Some(CloseCode::AuthFailed.code())),
                    Err(error) => tracing::debug!(%error, "reconnect failed"),
                }
            };
        }
    }

    /// Runs one connection until it ends; fails its pending requests on the way out.
    async fn serve(&mut self, mut connection: Connection) -> Ended {
        let mut pending: HashMap<u64, oneshot::Sender<Result<ServerFrame, ClientError>>> =
            HashMap::new();
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let interval = connection.heartbeat_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_heard = Instant::now();
        let ended = loop {
            tokio::select! {
                _ = closed(&mut self.closing) => {
                    let _ = timeout(SOCKET_WRITE_TIMEOUT, connection.socket.close(None)).await;
                    break Ended::Closed(None);
                }
                command = self.commands.recv() => match command {
                    None => {
                        let _ = timeout(SOCKET_WRITE_TIMEOUT, connection.socket.close(None)).await;
                        break Ended::Closed(None);
                    }
                    Some(Command::DropConnection(which)) => {
                        if which == generation {
                            break Ended::Dropped(None);
                        }
                    }
                    Some(Command::Request { request, reply }) => {
                        if reply.is_closed() {
                            continue;
                        }
                        let id = self.next_id;
                        self.next_id += 1;
                        let frame = ClientFrame { id: RequestId(id), request };
                        let sent = connection.socket.send(WsMessage::Text(codec::encode(&frame).into()));
                        if !matches!(timeout(SOCKET_WRITE_TIMEOUT, sent).await, Ok(Ok(()))) {
                            let _ = reply.send(Err(ClientError::Disconnected));
                            break Ended::Dropped(None);
                        }
                        pending.insert(id, reply);
                    }
                },
                message = connection.socket.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(WsMessage::Text(text))) => receive(&self.shared, &self.events, &text, &mut pending),
                        Some(Ok(WsMessage::Close(frame))) => {
                            let code = frame.map(|f: CloseFrame| u16::from(f.code));
                            break match code {
                                Some(code) if is_final(code) => Ended::Closed(Some(code)),
                                code => Ended::Dropped(code),
                            };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break Ended::Dropped(None),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > connection.heartbeat_timeout {
                        break Ended::Dropped(None);
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let frame = ClientFrame { id: RequestId(id), request: Request::Ping };
                    let sent = connection.socket.send(WsMessage::Text(codec::encode(&frame).into()));
                    if !matches!(timeout(SOCKET_WRITE_TIMEOUT, sent).await, Ok(Ok(()))) {
                        break Ended::Dropped(None);
                    }
                }
            }
        };
        let failure = match ended {
            Ended::Closed(code) => ClientError::Closed(code.and_then(CloseCode::from_code)),
            Ended::Dropped(_) => ClientError::Disconnected,
        };
        for (_, reply) in pending.drain() {
            let _ = reply.send(Err(failure.clone()));
        }
        ended
    }
}

/// Routes one frame from the server: a reply to its request, anything else to the events.
fn receive(
    shared: &Shared,
    events: &mpsc::UnboundedSender<ClientEvent>,
    text: &str,
    pending: &mut HashMap<u64, oneshot::Sender<Result<ServerFrame, ClientError>>>,
) {
    let frame = match codec::decode_server_frame(text) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, "ignoring a frame that is not natter's protocol");
            return;
        }
    };
    if let Some(id) = frame.reply_to() {
        // Replies to our pings have no waiter.
        if let Some(reply) = pending.remove(&id.0) {
            let result = match frame {
                ServerFrame::Error {
                    code,
                    message,
                    retry_after_ms,
                    ..
                } => Err(ClientError::Server {
                    code,
                    message,
                    retry_after_ms,
                }),
                frame => Ok(frame),
            };
            let _ = reply.send(result);
        }
        return;
    }
    {
        let mut cursors = shared.cursors.lock().unwrap_or_else(|e| e.into_inner());
        match &frame {
            ServerFrame::Heartbeat => return,
            ServerFrame::Event { room_id, seq, .. } => {
                cursors.insert(*room_id, *seq);
            }
            ServerFrame::Gap {
                room_id, to_seq, ..
            } => {
                cursors.insert(*room_id, *to_seq);
            }
            ServerFrame::RoomAdded { room } => {
                cursors.insert(room.id, room.last_seq);
            }
            ServerFrame::RoomRemoved { room_id } => {
                cursors.remove(room_id);
            }
            _ => {}
        }
    }
    let _ = events.send(ClientEvent::Frame(frame));
}

fn jitter(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    // 50% to 100% of the delay: spreads reconnects after a server restart.
    delay / 2 + delay.mul_f64(byte[0] as f64 / 510.0)
}
