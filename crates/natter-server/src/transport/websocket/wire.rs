//! A WebSocket connection's two directions, over the raw upgraded socket.
//!
//! - [`Reader`] holds no buffer while the connection is idle: it reads into a per-thread scratch
//!   buffer and keeps bytes only while a frame is incomplete. Most connections are idle most of
//!   the time, so this is most of what a connection costs in memory.
//! - [`Writer`] writes a batch of frames in as few `writev` calls as possible: a 2–4 byte header
//!   per frame next to the payload bytes the hub shared between every recipient. Nothing is
//!   copied per recipient.

use natter_protocol::CloseCode;
use natter_protocol::websocket::{self, FrameError, HeaderBytes, Opcode, Role};
use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read from the socket per call; shared by every connection on a worker thread.
const SCRATCH_BYTES: usize = 16 * 1024;
/// iovecs per `writev` (Linux accepts 1,024).
const MAX_SLICES: usize = 512;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// One complete message from the client.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: the connection is over.
    Close,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The socket failed or closed without a close frame.
    Io,
    /// The client broke the protocol; answer with this close code.
    Close(CloseCode),
}

impl From<FrameError> for ReadError {
    fn from(error: FrameError) -> ReadError {
        ReadError::Close(match error {
            FrameError::Protocol(_) => CloseCode::ProtocolError,
            FrameError::TooBig => CloseCode::TooBig,
        })
    }
}

pub struct Reader<R> {
    io: R,
    /// Bytes read but not yet parsed, from `consumed` on: empty (and unallocated) between
    /// messages.
    pending: Vec<u8>,
    /// How much of `pending` is parsed. Advanced per frame and compacted per read, so a read
    /// full of tiny frames costs one pass, not one copy of the rest per frame.
    consumed: usize,
    /// The data frames of a fragmented message so far, and its opcode.
    message: Vec<u8>,
    message_opcode: Option<Opcode>,
    max_message: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_message: usize) -> Reader<R> {
        Reader {
            io,
            pending: Vec::new(),
            consumed: 0,
            message: Vec::new(),
            message_opcode: None,
            max_message,
        }
    }

    /// The next complete message. Cancel-safe: bytes already read stay in `self`.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        loop {
            if let Some(message) = self.parse()? {
                return Ok(message);
            }
            if self.fill().await? == 0 {
                return Err(ReadError::Io);
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, ReadError> {
        self.pending.drain(..self.consumed);
        self.consumed = 0;
        poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(scratch);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))
                    .map_err(|_| ReadError::Io)?;
                self.pending.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            })
        })
        .await
    }

    /// Takes one frame off `pending` if it is complete; returns a message once one is whole.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let unparsed = &self.pending[self.consumed..];
            let Some(head) = websocket::parse_header(unparsed, Role::Server, self.max_message)?
            else {
                return Ok(None);
            };
            let end = head.header_len + head.payload_len;
            if unparsed.len() < end {
                return Ok(None);
            }
            let mut payload = unparsed[head.header_len..end].to_vec();
            self.consumed += end;
            if self.consumed == self.pending.len() {
                // An idle connection keeps no buffer.
                self.pending = Vec::new();
                self.consumed = 0;
            }
            if let Some(key) = head.mask {
                websocket::apply_mask(&mut payload, key);
            }
            let data_opcode = match head.opcode {
                Opcode::Ping => return Ok(Some(Incoming::Ping(payload))),
                Opcode::Pong => return Ok(Some(Incoming::Pong)),
                Opcode::Close => return Ok(Some(Incoming::Close)),
                Opcode::Continuation => self
                    .message_opcode
                    .ok_or(FrameError::Protocol("continuation without a message"))?,
                Opcode::Text | Opcode::Binary if self.message_opcode.is_some() => {
                    return Err(FrameError::Protocol("new message inside a fragmented one").into());
                }
                opcode => opcode,
            };
            if !head.fin || self.message_opcode.is_some() {
                if self.message.len() + payload.len() > self.max_message {
                    return Err(FrameError::TooBig.into());
                }
                self.message.extend_from_slice(&payload);
                self.message_opcode = Some(data_opcode);
                if !head.fin {
                    continue;
                }
                payload = std::mem::take(&mut self.message);
                self.message_opcode = None;
            }
            return match data_opcode {
                Opcode::Text => String::from_utf8(payload)
                    .map(|text| Some(Incoming::Text(text)))
                    .map_err(|_| ReadError::Close(CloseCode::InvalidText)),
                _ => Ok(Some(Incoming::Binary)),
            };
        }
    }
}

/// The write half: frames out, in batches.
pub struct Writer<W> {
    io: W,
    headers: Vec<HeaderBytes>,
    /// A write was abandoned part-way (its timeout fired): the stream may end inside a frame, so
    /// nothing more may be framed on it; a close only shuts the socket.
    broken: bool,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(io: W) -> Writer<W> {
        Writer {
            io,
            headers: Vec::new(),
            broken: false,
        }
    }

    /// Writes every frame, in order, as text messages.
    pub async fn write_text(&mut self, frames: &[Arc<str>]) -> io::Result<()> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.broken = true;
        // One frame is the usual batch below saturation: its slices fit on the stack.
        if let [frame] = frames {
            let head = websocket::header(Opcode::Text, frame.len(), None);
            let mut slices = [
                IoSlice::new(head.as_slice()),
                IoSlice::new(frame.as_bytes()),
            ];
            write_all_vectored(&mut self.io, &mut slices).await?;
            self.broken = false;
            return Ok(());
        }
        for chunk in frames.chunks(MAX_SLICES / 2) {
            self.headers.clear();
            self.headers.extend(
                chunk
                    .iter()
                    .map(|frame| websocket::header(Opcode::Text, frame.len(), None)),
            );
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunk.len() * 2);
            for (head, frame) in self.headers.iter().zip(chunk) {
                slices.push(IoSlice::new(head.as_slice()));
                slices.push(IoSlice::new(frame.as_bytes()));
            }
            write_all_vectored(&mut self.io, &mut slices).await?;
        }
        // An idle connection keeps no buffer; one allocation per batch is nothing beside the
        // write itself.
        self.headers = Vec::new();
        self.broken = false;
        Ok(())
    }

    /// Writes one control frame (pong or close).
    pub async fn write_control(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.broken = true;
        let head = websocket::header(opcode, payload.len(), None);
        let mut slices = [IoSlice::new(head.as_slice()), IoSlice::new(payload)];
        write_all_vectored(&mut self.io, &mut slices).await?;
        self.broken = false;
        Ok(())
    }

    /// Sends a close frame with `code` and shuts the socket; after an abandoned write, only shuts
    /// it (a close frame there would land inside the unfinished one).
    pub async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        if !self.broken {
            let payload = websocket::close_payload(code, reason);
            self.write_control(Opcode::Close, &payload).await?;
            self.io.flush().await?;
        }
        self.io.shutdown().await
    }

    pub async fn close_with(&mut self, code: CloseCode) -> io::Result<()> {
        self.close(code.code(), code.reason()).await
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::websocket::{apply_mask, header};
    use tokio::io::AsyncWriteExt;

    fn client_frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let key = [7, 1, 9, 3];
        let mut bytes = header(opcode, payload.len(), Some(key)).as_slice().to_vec();
        if !fin {
            bytes[0] &= 0x7F;
        }
        let mut body = payload.to_vec();
        apply_mask(&mut body, key);
        bytes.extend(body);
        bytes
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, ReadError>> {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // Dribbled in small writes, so frames arrive split at every boundary.
            for chunk in bytes.chunks(3) {
                let _ = client.write_all(chunk).await;
            }
        });
        let mut reader = Reader::new(server, max);
        let mut out = Vec::new();
        for _ in 0..16 {
            let next = reader.next().await;
            let end = matches!(next, Err(_) | Ok(Incoming::Close));
            out.push(next);
            if end {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn fragmented_and_interleaved_frames_make_whole_messages() {
        let mut bytes = client_frame(false, Opcode::Text, "héllo ".as_bytes());
        bytes.extend(client_frame(true, Opcode::Ping, b"p"));
        bytes.extend(client_frame(true, Opcode::Continuation, b"world"));
        bytes.extend(client_frame(true, Opcode::Text, b"{}"));
        bytes.extend(client_frame(true, Opcode::Close, &[0x03, 0xE8]));
        let got = read_all(bytes, 1024).await;
        assert!(matches!(&got[0], Ok(Incoming::Ping(p)) if p == b"p"));
        assert!(matches!(&got[1], Ok(Incoming::Text(t)) if t == "héllo world"));
        assert!(matches!(&got[2], Ok(Incoming::Text(t)) if t == "{}"));
        assert!(matches!(got[3], Ok(Incoming::Close)));
    }

    #[tokio::test]
    async fn a_message_over_the_limit_closes_with_1009_even_in_fragments() {
        let got = read_all(client_frame(true, Opcode::Text, &[b'a'; 100]), 64).await;
        assert!(matches!(got[0], Err(ReadError::Close(CloseCode::TooBig))));
        let mut bytes = client_frame(false, Opcode::Text, &[b'a'; 40]);
        bytes.extend(client_frame(true, Opcode::Continuation, &[b'a'; 40]));
        let got = read_all(bytes, 64).await;
        assert!(matches!(got[0], Err(ReadError::Close(CloseCode::TooBig))));
    }

    #[tokio::test]
    async fn invalid_utf8_closes_with_1007_and_an_unmasked_frame_with_1002() {
        let got = read_all(client_frame(true, Opcode::Text, &[0xFF, 0xFE]), 64).await;
        assert!(matches!(
            got[0],
            Err(ReadError::Close(CloseCode::InvalidText))
        ));
        let unmasked = header(Opcode::Text, 2, None).as_slice().to_vec();
        let got = read_all([unmasked, b"{}".to_vec()].concat(), 64).await;
        assert!(matches!(
            got[0],
            Err(ReadError::Close(CloseCode::ProtocolError))
        ));
        let got = read_all(client_frame(true, Opcode::Continuation, b"x"), 64).await;
        assert!(matches!(
            got[0],
            Err(ReadError::Close(CloseCode::ProtocolError))
        ));
    }

    #[tokio::test]
    async fn a_batch_is_written_as_consecutive_text_frames() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut writer = Writer::new(client);
        let long: Arc<str> = Arc::from("x".repeat(300));
        let frames = [Arc::from("{\"a\":1}"), long.clone(), Arc::from("{}")];
        // A batch of one takes its own path; the frames must come out the same.
        writer.write_text(&frames[..1]).await.unwrap();
        writer.write_text(&frames[1..]).await.unwrap();
        drop(writer);
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut bytes)
            .await
            .unwrap();
        let mut at = 0;
        for frame in &frames {
            let head = websocket::parse_header(&bytes[at..], Role::Client, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(head.opcode, Opcode::Text);
            let body = &bytes[at + head.header_len..at + head.header_len + head.payload_len];
            assert_eq!(body, frame.as_bytes());
            at += head.header_len + head.payload_len;
        }
        assert_eq!(at, bytes.len());
    }

    #[tokio::test]
    async fn after_an_abandoned_write_a_close_only_shuts_the_socket() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut writer = Writer::new(client);
        let big: Arc<str> = Arc::from("x".repeat(1000));
        let abandoned = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            writer.write_text(&[big]),
        )
        .await;
        assert!(
            abandoned.is_err(),
            "the write cannot finish into a full pipe"
        );
        let reading = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut bytes).await;
            bytes
        });
        writer.close(1000, "").await.unwrap();
        drop(writer);
        let bytes = reading.await.unwrap();
        let head = websocket::parse_header(&bytes, Role::Client, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(head.opcode, Opcode::Text);
        // Exactly what fit in the pipe before the write was abandoned: no close frame after it.
        assert_eq!(bytes.len(), 64);
    }
}
