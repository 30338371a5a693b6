//! Turning text into frames and back. JSON today; this is the one place to change that.
//!
//! Decoding a client frame distinguishes a frame that is not a request at all (`bad_frame`, no id
//! to answer) from a request of an unknown type (`unknown_type`) and a known request with a bad
//! field (`invalid_field`), so the client learns exactly what it got wrong.

use crate::error::ErrorCode;
use crate::frame::{ClientFrame, Request, ServerFrame};
use crate::ids::RequestId;
use serde::Serialize;
use serde_json::Value;

/// Why a client frame could not be decoded, with the request id when one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::error(self.id, self.code, self.message)
    }
}

/// A frame's `id`, read on its own: the other fields are skipped, not stored.
#[derive(serde::Deserialize)]
struct IdOnly {
    id: u64,
}

pub fn decode_client_frame(text: &str) -> Result<ClientFrame, DecodeError> {
    match decode_quickly(text) {
        Some(frame) => Ok(frame),
        None => decode_carefully(text),
    }
}

/// Well-formed frames, nearly all of them, in two lean passes (the request ignores `id`).
/// Whatever either pass refuses, a repeated field or tag included, is left to
/// `decode_carefully`, which finds the right error, or reads the frame as it always has: the
/// last of a repeated key wins. The careful way builds a `Value` first, a map with an
/// allocation per key and value; it was 14% of the runtime's time in the closed-loop durable
/// run (docs/benchmarks.md).
fn decode_quickly(text: &str) -> Option<ClientFrame> {
    let IdOnly { id } = serde_json::from_str(text).ok()?;
    let request = serde_json::from_str::<Request>(text).ok()?;
    Some(ClientFrame {
        id: RequestId(id),
        request,
    })
}

/// Decodes through a `Value`, to tell the client exactly what is wrong with its frame.
fn decode_carefully(text: &str) -> Result<ClientFrame, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(None, ErrorCode::BadFrame, format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(DecodeError::new(
            None,
            ErrorCode::BadFrame,
            "a frame must be a JSON object",
        ));
    };
    let id = match object.get("id") {
        Some(id) => id.as_u64().map(RequestId).ok_or_else(|| {
            DecodeError::new(
                None,
                ErrorCode::BadFrame,
                "`id` must be a non-negative integer",
            )
        })?,
        None => {
            return Err(DecodeError::new(
                None,
                ErrorCode::BadFrame,
                "missing field `id`",
            ));
        }
    };
    let request_type = match object.get("type") {
        Some(Value::String(request_type)) => format!("unknown variant `{request_type}`"),
        _ => {
            return Err(DecodeError::new(
                Some(id),
                ErrorCode::BadFrame,
                "`type` must be a string",
            ));
        }
    };
    let request: Request = serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        // serde reports an unknown tag as "unknown variant `x`, expected one of ..."; the same
        // words about another value (an unknown `visibility`) concern a field.
        let code = if message.starts_with(&request_type) {
            ErrorCode::UnknownType
        } else {
            ErrorCode::InvalidField
        };
        DecodeError::new(Some(id), code, message)
    })?;
    Ok(ClientFrame { id, request })
}

pub fn decode_server_frame(text: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(text)
}

/// Room for a typical frame from the start: `serde_json::to_string` begins with 128 bytes, and
/// a message's event or `sent` reply (300–500 bytes) grew through two reallocations, each a copy.
const ENCODE_CAPACITY: usize = 512;

/// Encodes any frame. Protocol types always serialize: their maps have string or integer keys.
pub fn encode<T: Serialize>(frame: &T) -> String {
    let mut bytes = Vec::with_capacity(ENCODE_CAPACITY);
    serde_json::to_writer(&mut bytes, frame).expect("protocol frames always serialize");
    String::from_utf8(bytes).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> (Option<RequestId>, ErrorCode) {
        let e = decode_client_frame(text).unwrap_err();
        (e.id, e.code)
    }

    #[test]
    fn malformed_json_is_a_bad_frame_without_id() {
        assert_eq!(code_of("{not json"), (None, ErrorCode::BadFrame));
        assert_eq!(code_of("[1,2]"), (None, ErrorCode::BadFrame));
        assert_eq!(code_of(r#"{"type":"ping"}"#), (None, ErrorCode::BadFrame));
        assert_eq!(
            code_of(r#"{"id":-1,"type":"ping"}"#),
            (None, ErrorCode::BadFrame)
        );
    }

    #[test]
    fn unknown_type_keeps_the_request_id() {
        assert_eq!(
            code_of(r#"{"id":3,"type":"fly"}"#),
            (Some(RequestId(3)), ErrorCode::UnknownType)
        );
        assert_eq!(
            code_of(r#"{"id":3,"type":7}"#),
            (Some(RequestId(3)), ErrorCode::BadFrame)
        );
    }

    #[test]
    fn an_unknown_value_of_a_field_is_an_invalid_field_not_an_unknown_type() {
        assert_eq!(
            code_of(r#"{"id":4,"type":"create_room","name":"x","visibility":"secret"}"#),
            (Some(RequestId(4)), ErrorCode::InvalidField)
        );
    }

    #[test]
    fn wrong_field_types_are_invalid_fields() {
        assert_eq!(
            code_of(r#"{"id":4,"type":"send","room_id":"x","client_msg_id":"a","body":"b"}"#),
            (Some(RequestId(4)), ErrorCode::InvalidField)
        );
        assert_eq!(
            code_of(r#"{"id":5,"type":"send","room_id":1}"#),
            (Some(RequestId(5)), ErrorCode::InvalidField)
        );
    }

    #[test]
    fn resume_cursors_are_keyed_by_room_id_strings() {
        let frame =
            decode_client_frame(r#"{"id":1,"type":"hello","token":"t","resume":{"12":40}}"#)
                .unwrap();
        let Request::Hello { resume, .. } = frame.request else {
            panic!("expected hello");
        };
        assert_eq!(resume.get(&crate::RoomId(12)), Some(&crate::RoomSeq(40)));
        assert_eq!(
            code_of(r#"{"id":1,"type":"hello","resume":{"general":40}}"#),
            (Some(RequestId(1)), ErrorCode::InvalidField)
        );
        // And what the Rust client encodes decodes.
        let hello = ClientFrame {
            id: RequestId(1),
            request: Request::Hello {
                token: None,
                resume: [(crate::RoomId(3), crate::RoomSeq(9))].into(),
            },
        };
        assert_eq!(decode_client_frame(&encode(&hello)).unwrap(), hello);
    }

    /// `decode_client_frame` takes a quick path for well-formed frames; the careful one decides
    /// everything else. Where the quick path accepts a frame, both must read it the same.
    #[test]
    fn the_quick_path_reads_every_request_as_the_careful_one_does() {
        let frames = [
            r#"{"id":1,"type":"hello","token":"t","resume":{"12":40,"3":0}}"#,
            r#"{"type":"hello","id":2}"#,
            r#"{"id":3,"type":"ping","extra":{"nested":[1,2,{"x":null}]}}"#,
            r#"{"id":4,"type":"send","room_id":1,"client_msg_id":"m-1","body":"caf\u00e9 \"quoted\" \n"}"#,
            r#"{"id":5,"type":"edit","room_id":1,"message_id":9,"body":""}"#,
            r#"{"id":6,"type":"delete","room_id":1,"message_id":9}"#,
            r#"{"id":7,"type":"history","room_id":1,"before":40,"after":null,"limit":20}"#,
            r#"{"id":8,"type":"list_rooms"}"#,
            r#"{"id":9,"type":"public_rooms"}"#,
            r#"{"id":10,"type":"create_room","name":"design","visibility":"private"}"#,
            r#"{"id":11,"type":"open_dm","usernames":["ana","bo"]}"#,
            r#"{"id":12,"type":"join","room_id":4}"#,
            r#"{"id":13,"type":"invite","room_id":4,"username":"bo"}"#,
            r#"{"id":14,"type":"set_role","room_id":4,"user_id":2,"role":"admin"}"#,
            r#"{"id":15,"type":"update_room","room_id":4,"topic":null}"#,
            r#"{"id":16,"type":"set_presence","status":"away"}"#,
            r#"{"id":17,"type":"mark_read","room_id":4,"seq":18446744073709551615}"#,
            r#"{"id":18,"type":"leave","room_id":4}"#,
            r#"{"id":19,"type":"kick","room_id":4,"user_id":2}"#,
            r#"{"id":20,"type":"members","room_id":4}"#,
            r#"{"id":21,"type":"typing","room_id":4}"#,
            r#"{"id":22,"type":"mark_delivered","room_id":4,"seq":7}"#,
        ];
        for text in frames {
            let careful = decode_carefully(text);
            assert!(careful.is_ok(), "{text}: {careful:?}");
            assert_eq!(
                decode_quickly(text).ok_or("refused"),
                careful.map_err(|_| "careful failed"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_repeated_key_reads_as_it_always_has_the_last_one_wins() {
        let text = r#"{"id":1,"type":"send","room_id":1,"client_msg_id":"m","body":"first","body":"last"}"#;
        assert_eq!(
            decode_quickly(text),
            None,
            "a repeated field is left to the careful way"
        );
        match decode_client_frame(text).map(|frame| frame.request) {
            Ok(Request::Send { body, .. }) => assert_eq!(body, "last"),
            other => panic!("{other:?}"),
        }
        let text = r#"{"id":1,"id":2,"type":"ping"}"#;
        assert_eq!(decode_client_frame(text).map(|f| f.id), Ok(RequestId(2)));
    }

    #[test]
    fn a_client_frame_round_trips() {
        let frame = ClientFrame {
            id: RequestId(9),
            request: Request::History {
                room_id: crate::RoomId(2),
                before: Some(crate::RoomSeq(40)),
                after: None,
                limit: Some(20),
            },
        };
        assert_eq!(decode_client_frame(&encode(&frame)).unwrap(), frame);
    }

    #[test]
    fn an_event_frame_by_reference_encodes_as_the_server_frame_it_stands_for() {
        use crate::{ClientMsgId, EventFrame, Message, MessageId, RoomEvent, RoomId, RoomSeq};
        use crate::{UserId, UserInfo};
        let event = RoomEvent::MessageCreated {
            message: Message {
                id: MessageId(7),
                room_id: RoomId(2),
                seq: RoomSeq(41),
                author: UserInfo {
                    id: UserId(3),
                    username: "ada".into(),
                    display_name: "Ada \"the first\" L.".into(),
                },
                client_msg_id: ClientMsgId("1733230000000-x1".into()),
                body: "hello\nworld ✓".into(),
                created_at: 1_733_230_000_000,
                edited_at: None,
                deleted: false,
            },
        };
        let by_reference = encode(&EventFrame {
            room_id: RoomId(2),
            seq: RoomSeq(41),
            at: 1_733_230_000_000,
            actor: UserId(3),
            event: &event,
        });
        let owned = ServerFrame::Event {
            room_id: RoomId(2),
            seq: RoomSeq(41),
            at: 1_733_230_000_000,
            actor: UserId(3),
            event,
        };
        assert_eq!(by_reference, encode(&owned));
        assert_eq!(decode_server_frame(&by_reference).unwrap(), owned);
    }
}
