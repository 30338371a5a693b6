//! A lean WebSocket client: a TCP socket, one read buffer, and RFC 6455 frame headers from
//! `natter_protocol::websocket`. No message objects and no UTF-8 checks: a scenario looks at the
//! payload bytes it measures and nothing else, so the load generator costs less than the server.

use crate::conn::Error;
use natter_protocol::websocket::{self, Opcode, Role};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Reads start small (thousands of idle connections) and grow while reads fill them.
const FIRST_CHUNK: usize = 2 * 1024;
const MAX_CHUNK: usize = 64 * 1024;
/// The largest frame a scenario accepts (history pages on a resume can be large).
const MAX_FRAME: usize = 16 << 20;

/// Opens a TCP connection from `local` (any 127.0.0.x spreads the ephemeral ports) and performs
/// the WebSocket handshake for `path`.
pub async fn connect(
    server: SocketAddr,
    local: Option<IpAddr>,
    path: &str,
) -> Result<(FrameReader, FrameWriter), Error> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = local {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: bmF0dGVyLWJlbmNoLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    write.write_all(request.as_bytes()).await?;
    let mut reader = FrameReader {
        io: read,
        buf: Vec::new(),
        start: 0,
        chunk: FIRST_CHUNK,
    };
    let head_end = loop {
        if let Some(at) = reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if reader.fill().await? == 0 || reader.buf.len() > 16 * 1024 {
            return Err("the server closed during the WebSocket handshake".into());
        }
    };
    let status = String::from_utf8_lossy(&reader.buf[..head_end]).into_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake refused: {}", status.lines().next().unwrap_or("")).into());
    }
    reader.start = head_end;
    Ok((reader, FrameWriter { io: write, key: 0 }))
}

/// Lets `connect` choose the local port. A `bind` to port 0 otherwise picks one itself by
/// scanning every port in use on that address: with 15,000 sockets open that scan was nearly
/// all of the load generator's CPU, and reconnect storms measured the generator, not the server.
/// At `connect` the kernel picks by the whole address pair instead.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket descriptor and an int option of the size given. A failure
        // only leaves the kernel's default (slower) port choice in place.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

pub struct FrameReader {
    io: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    chunk: usize,
}

/// What a frame handler wants next.
pub enum Flow {
    Continue,
    Stop,
}

impl FrameReader {
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + self.chunk, 0);
        let n = self.io.read(&mut self.buf[old..]).await;
        let got = *n.as_ref().unwrap_or(&0);
        self.buf.truncate(old + got);
        if got == self.chunk {
            self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        }
        n
    }

    /// Calls `on_text` with each text payload until it says stop; `Ok(false)` if the server
    /// closed first (a close frame or end of stream).
    pub async fn each_text(
        &mut self,
        mut on_text: impl FnMut(&[u8]) -> Flow,
    ) -> Result<bool, Error> {
        loop {
            while let Some(head) =
                websocket::parse_header(&self.buf[self.start..], Role::Client, MAX_FRAME)
                    .map_err(|e| format!("bad frame from the server: {e:?}"))?
            {
                let begin = self.start + head.header_len;
                let end = begin + head.payload_len;
                if end > self.buf.len() {
                    break;
                }
                self.start = end;
                match head.opcode {
                    Opcode::Text | Opcode::Continuation => {
                        if let Flow::Stop = on_text(&self.buf[begin..end]) {
                            return Ok(true);
                        }
                    }
                    Opcode::Close => return Ok(false),
                    _ => {}
                }
            }
            if self.fill().await? == 0 {
                return Ok(false);
            }
        }
    }

    /// The next text frame, as a string (for setup steps, not for measured traffic).
    pub async fn next_text(&mut self) -> Result<String, Error> {
        let mut text = None;
        self.each_text(|payload| {
            text = Some(String::from_utf8_lossy(payload).into_owned());
            Flow::Stop
        })
        .await?;
        text.ok_or_else(|| "the server closed the connection".into())
    }
}

pub struct FrameWriter {
    io: OwnedWriteHalf,
    key: u32,
}

impl FrameWriter {
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        // Clients must mask; the key need not be secret here (no proxy to poison on loopback).
        self.key = self.key.wrapping_add(0x9E37_79B9);
        let key = self.key.to_be_bytes();
        let mut frame = websocket::header(Opcode::Text, text.len(), Some(key))
            .as_slice()
            .to_vec();
        let at = frame.len();
        frame.extend_from_slice(text.as_bytes());
        websocket::apply_mask(&mut frame[at..], key);
        self.io.write_all(&frame).await
    }
}

/// The digits right after `marker` in `bytes`, as a number.
pub fn number_after(bytes: &[u8], marker: &[u8]) -> Option<u64> {
    let at = bytes.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}
