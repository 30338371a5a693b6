//! How an envelope travels between nodes: JSON built from the protocol's own types, tagged with
//! the node that published it (which skips its own).

use natter_core::ports::broker::{Envelope, UserNotice};
use natter_core::ports::store::{EventRecord, TokenId};
use natter_protocol::frame::{EventFrame, ServerFrame};
use natter_protocol::{PresenceInfo, RoomId, RoomSeq, UserId, UserInfo};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Wire {
    /// A room event, as the `event` frame clients receive.
    Room {
        frame: ServerFrame,
    },
    RoomAdded {
        user_id: UserId,
        room_id: RoomId,
        from_seq: RoomSeq,
    },
    TokenRevoked {
        user_id: UserId,
        token: String,
    },
    Typing {
        room_id: RoomId,
        user: UserInfo,
    },
    Receipt {
        room_id: RoomId,
        user_id: UserId,
        delivered_seq: RoomSeq,
        read_seq: RoomSeq,
    },
    Presence {
        presence: PresenceInfo,
        rooms: Vec<RoomId>,
    },
    /// A node's ping to itself (is its subscription alive?).
    Ping,
    /// A node's publishes failed: every node's sessions should catch up from the store.
    Resync,
}

/// What a packet carries.
pub enum Decoded {
    Envelope(Envelope),
    Ping,
    Resync,
}

fn control(node: &str, wire: Wire) -> String {
    natter_protocol::encode(&Packet {
        node: node.to_owned(),
        wire,
    })
}

pub fn ping(node: &str) -> String {
    control(node, Wire::Ping)
}

pub fn resync(node: &str) -> String {
    control(node, Wire::Resync)
}

#[derive(Serialize, Deserialize)]
struct Packet {
    node: String,
    #[serde(flatten)]
    wire: Wire,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A room envelope as `Packet` encodes `Wire::Room`, borrowing the event: every send on a
/// cluster is published, and this spares each a copy of the message's text and names.
#[derive(Serialize)]
struct RoomPacket<'a> {
    node: &'a str,
    k: &'static str,
    frame: EventFrame<'a>,
}

pub fn encode(node: &str, envelope: &Envelope) -> String {
    let wire = match envelope.clone() {
        Envelope::Room(record) => {
            return natter_protocol::encode(&RoomPacket {
                node,
                k: "room",
                frame: EventFrame {
                    room_id: record.room_id,
                    seq: record.seq,
                    at: record.at,
                    actor: record.actor,
                    event: &record.event,
                },
            });
        }
        Envelope::User { user_id, notice } => match notice {
            UserNotice::RoomAdded { room_id, from_seq } => Wire::RoomAdded {
                user_id,
                room_id,
                from_seq,
            },
            UserNotice::TokenRevoked { token } => Wire::TokenRevoked {
                user_id,
                token: hex(&token.0),
            },
        },
        Envelope::Typing { room_id, user } => Wire::Typing { room_id, user },
        Envelope::Receipt {
            room_id,
            user_id,
            delivered_seq,
            read_seq,
        } => Wire::Receipt {
            room_id,
            user_id,
            delivered_seq,
            read_seq,
        },
        Envelope::Presence { presence, rooms } => Wire::Presence {
            presence,
            rooms: rooms.to_vec(),
        },
    };
    natter_protocol::encode(&Packet {
        node: node.to_owned(),
        wire,
    })
}

/// The publishing node and what it sent.
pub fn decode(payload: &str) -> Result<(String, Decoded), String> {
    let packet: Packet = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    let envelope = match packet.wire {
        Wire::Ping => return Ok((packet.node, Decoded::Ping)),
        Wire::Resync => return Ok((packet.node, Decoded::Resync)),
        Wire::Room {
            frame:
                ServerFrame::Event {
                    room_id,
                    seq,
                    at,
                    actor,
                    event,
                },
        } => Envelope::Room(Arc::new(EventRecord {
            room_id,
            seq,
            at,
            actor,
            event,
        })),
        Wire::Room { .. } => return Err("a room envelope must carry an event frame".into()),
        Wire::RoomAdded {
            user_id,
            room_id,
            from_seq,
        } => Envelope::User {
            user_id,
            notice: UserNotice::RoomAdded { room_id, from_seq },
        },
        Wire::TokenRevoked { user_id, token } => Envelope::User {
            user_id,
            notice: UserNotice::TokenRevoked {
                token: TokenId(unhex(&token).ok_or("bad token hash")?),
            },
        },
        Wire::Typing { room_id, user } => Envelope::Typing { room_id, user },
        Wire::Receipt {
            room_id,
            user_id,
            delivered_seq,
            read_seq,
        } => Envelope::Receipt {
            room_id,
            user_id,
            delivered_seq,
            read_seq,
        },
        Wire::Presence { presence, rooms } => Envelope::Presence {
            presence,
            rooms: rooms.into(),
        },
    };
    Ok((packet.node, Decoded::Envelope(envelope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::{ClientMsgId, Message, MessageId, RoomEvent};

    #[test]
    fn a_room_envelope_travels_as_the_event_frame_and_arrives_whole() {
        let record = EventRecord {
            room_id: RoomId(7),
            seq: RoomSeq(42),
            at: 1_700_000_000_000,
            actor: UserId(3),
            event: RoomEvent::MessageCreated {
                message: Message {
                    id: MessageId(9),
                    room_id: RoomId(7),
                    seq: RoomSeq(42),
                    author: UserInfo {
                        id: UserId(3),
                        username: "ana".into(),
                        display_name: "Ana \"A\" Lima".into(),
                    },
                    client_msg_id: ClientMsgId("c-1".into()),
                    body: "hi @bo \u{1F44B}".into(),
                    created_at: 1_700_000_000_000,
                    edited_at: None,
                    deleted: false,
                },
            },
        };
        let encoded = encode("node-a", &Envelope::Room(Arc::new(record.clone())));
        let as_wire = natter_protocol::encode(&Packet {
            node: "node-a".into(),
            wire: Wire::Room {
                frame: ServerFrame::Event {
                    room_id: record.room_id,
                    seq: record.seq,
                    at: record.at,
                    actor: record.actor,
                    event: record.event.clone(),
                },
            },
        });
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("JSON");
        assert_eq!(json(&encoded), json(&as_wire));
        let Ok((node, Decoded::Envelope(Envelope::Room(arrived)))) = decode(&encoded) else {
            panic!("a room envelope did not decode as one: {encoded}");
        };
        assert_eq!(node, "node-a");
        assert_eq!(*arrived, record);
    }
}
