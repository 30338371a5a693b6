//! Keeps `docs/protocol.md` true: every transcript line in it is decoded here.
//!
//! - `> ...` lines are client frames. One that does not decode must be answered, on the next `<`
//!   line, by the very error the codec produces for it.
//! - `< ...` lines are server frames. Each must decode, and encode back to the same text, so the
//!   documented field names and order are the real ones.

use natter_protocol::{ServerFrame, codec};

#[test]
fn every_transcript_line_in_the_protocol_doc_is_a_real_frame() {
    let doc = include_str!("../../../docs/protocol.md");
    let mut in_transcript = false;
    let mut expected_error = None;
    let mut checked = 0;
    for (number, line) in doc.lines().enumerate() {
        let number = number + 1;
        if line.starts_with("```") {
            in_transcript = line == "```text";
            continue;
        }
        if !in_transcript {
            continue;
        }
        if let Some(text) = line.strip_prefix("> ") {
            assert!(
                expected_error.is_none(),
                "line {number}: the previous bad frame has no documented error"
            );
            if let Err(error) = codec::decode_client_frame(text) {
                expected_error = Some(error);
            }
            checked += 1;
        } else if let Some(text) = line.strip_prefix("< ") {
            let frame = codec::decode_server_frame(text)
                .unwrap_or_else(|e| panic!("line {number}: not a server frame: {e}\n{text}"));
            assert_eq!(
                codec::encode(&frame),
                text,
                "line {number}: field names or order differ"
            );
            if let Some(error) = expected_error.take() {
                let ServerFrame::Error {
                    id, code, message, ..
                } = &frame
                else {
                    panic!("line {number}: a bad frame must be answered by an error");
                };
                assert_eq!(
                    (*id, *code, message),
                    (error.id, error.code, &error.message),
                    "line {number}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        expected_error.is_none(),
        "the last bad frame has no documented error"
    );
    assert!(checked > 40, "only {checked} transcript lines found");
}
