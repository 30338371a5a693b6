//! RFC 6455 framing: the bytes around each WebSocket message, for both ends.
//!
//! natter writes WebSocket frames itself rather than through a general library because its hot
//! path is one encoded event sent to many connections: the payload bytes are shared, and each
//! connection only needs a 2–10 byte header in front of them, written together in one `writev`.
//! The load tool reads and writes frames with the same code, so neither side parses more than it
//! must. Pure functions only: no IO.

/// The kinds of frame (RFC 6455 §5.2). Other opcodes are a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes and never fragmented.
    pub const fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Why a frame header cannot be accepted. Each maps to a close code (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved bits or opcode set, a fragmented or long control frame, a missing or unexpected
    /// mask: 1002.
    Protocol(&'static str),
    /// The payload is longer than the receiver accepts: 1009.
    TooBig,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: usize,
    /// Bytes the header itself took.
    pub header_len: usize,
}

/// Who is reading: a server requires masked frames (clients must mask), a client rejects them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Parses the header at the start of `buf`. `Ok(None)` means more bytes are needed. Payloads
/// longer than `max_payload` are refused from the header alone, before any of them is read.
pub fn parse_header(
    buf: &[u8],
    role: Role,
    max_payload: usize,
) -> Result<Option<Header>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
    let masked = second & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(FrameError::Protocol("client frames must be masked")),
        (Role::Client, true) => {
            return Err(FrameError::Protocol("server frames must not be masked"));
        }
        _ => {}
    }
    let (payload_len, mut at) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut bytes = [0; 8];
                bytes.copy_from_slice(b);
                (u64::from_be_bytes(bytes), 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    // The length must use the shortest form, and a 64-bit length has its top bit clear.
    let minimal = match at {
        4 => payload_len >= 126,
        10 => payload_len > 0xFFFF && payload_len >> 63 == 0,
        _ => true,
    };
    if !minimal {
        return Err(FrameError::Protocol(
            "payload length not in its shortest form",
        ));
    }
    if opcode.is_control() && (!fin || payload_len > 125) {
        return Err(FrameError::Protocol(
            "control frames are short and unfragmented",
        ));
    }
    let payload_len = usize::try_from(payload_len)
        .ok()
        .filter(|len| *len <= max_payload)
        .ok_or(FrameError::TooBig)?;
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload_len,
        header_len: at,
    }))
}

/// XORs `payload` with the masking key (masking and unmasking are the same operation).
pub fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// A frame header ready to write: at most 14 bytes, kept inline.
#[derive(Clone, Copy)]
pub struct HeaderBytes {
    bytes: [u8; 14],
    len: u8,
}

impl HeaderBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The header of a final (unfragmented) frame carrying `payload_len` bytes; with a mask key when a
/// client writes it (the caller masks the payload with [`apply_mask`]).
pub fn header(opcode: Opcode, payload_len: usize, mask: Option<[u8; 4]>) -> HeaderBytes {
    let mut bytes = [0; 14];
    bytes[0] = 0x80 | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = if payload_len < 126 {
        bytes[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(short) = u16::try_from(payload_len) {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        bytes[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    HeaderBytes {
        bytes,
        len: len as u8,
    }
}

/// The payload of a close frame: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    // A control frame's payload is at most 125 bytes; natter's reasons are far shorter.
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    payload.extend_from_slice(reason);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut bytes = header(opcode, payload.len(), mask).as_slice().to_vec();
        let mut body = payload.to_vec();
        if let Some(key) = mask {
            apply_mask(&mut body, key);
        }
        bytes.extend(body);
        bytes
    }

    #[test]
    fn a_masked_client_frame_of_each_length_class_round_trips() {
        for len in [0, 5, 125, 126, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let key = [1, 2, 3, 4];
            let bytes = frame(Opcode::Text, &payload, Some(key));
            let head = parse_header(&bytes, Role::Server, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(
                (head.fin, head.opcode, head.mask),
                (true, Opcode::Text, Some(key))
            );
            assert_eq!(head.payload_len, len);
            let mut body = bytes[head.header_len..].to_vec();
            apply_mask(&mut body, key);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn a_partial_header_asks_for_more_bytes() {
        let bytes = frame(Opcode::Text, &[b'x'; 300], Some([9; 4]));
        for cut in 0..8 {
            assert_eq!(
                parse_header(&bytes[..cut], Role::Server, 1024),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn headers_that_break_the_rules_are_refused() {
        let unmasked = frame(Opcode::Text, b"hi", None);
        assert!(matches!(
            parse_header(&unmasked, Role::Server, 64),
            Err(FrameError::Protocol(_))
        ));
        let masked = frame(Opcode::Text, b"hi", Some([1; 4]));
        assert!(matches!(
            parse_header(&masked, Role::Client, 64),
            Err(FrameError::Protocol(_))
        ));
        let mut reserved = masked.clone();
        reserved[0] |= 0x40;
        assert!(matches!(
            parse_header(&reserved, Role::Server, 64),
            Err(FrameError::Protocol(_))
        ));
        let mut fragmented_ping = frame(Opcode::Ping, b"", Some([1; 4]));
        fragmented_ping[0] &= 0x7F;
        assert!(matches!(
            parse_header(&fragmented_ping, Role::Server, 64),
            Err(FrameError::Protocol(_))
        ));
        let mut unknown = masked.clone();
        unknown[0] = 0x83;
        assert!(matches!(
            parse_header(&unknown, Role::Server, 64),
            Err(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn a_length_not_in_its_shortest_form_is_refused() {
        // 5 bytes announced with the 16-bit form, then with the 64-bit form.
        let long16 = [0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        let long64 = [0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
        for bytes in [&long16[..], &long64[..]] {
            assert!(matches!(
                parse_header(bytes, Role::Server, 1 << 20),
                Err(FrameError::Protocol(_))
            ));
        }
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_from_its_header() {
        let big = header(Opcode::Text, 1 << 40, Some([0; 4]));
        assert_eq!(
            parse_header(big.as_slice(), Role::Server, 1 << 20),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn a_close_payload_carries_the_code_first() {
        assert_eq!(close_payload(4000, "go"), [0x0F, 0xA0, b'g', b'o']);
    }
}
