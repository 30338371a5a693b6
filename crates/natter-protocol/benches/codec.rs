//! The codec's cost per frame: encoding a message event (once per broadcast, whatever the room's
//! size) and decoding a client's `send` (once per request).
//! Run: `cargo bench -p natter-protocol --bench codec`.

use criterion::{Criterion, criterion_group, criterion_main};
use natter_protocol::websocket::{self, Opcode};
use natter_protocol::{codec, decode_client_frame, decode_server_frame};
use std::hint::black_box;

const EVENT: &str = r#"{"type":"event","room_id":3,"seq":43,"at":1795000000000,"actor":1,"event":{"kind":"message_created","message":{"id":101,"room_id":3,"seq":43,"author":{"id":1,"username":"ana","display_name":"Ana"},"client_msg_id":"a1b2c3","body":"Hello **everyone**","created_at":1795000000000,"edited_at":null,"deleted":false}}}"#;
const SEND: &str =
    r#"{"id":7,"type":"send","room_id":3,"client_msg_id":"a1b2c3","body":"Hello **everyone**"}"#;

fn codec_benches(c: &mut Criterion) {
    let event = decode_server_frame(EVENT).expect("the sample event decodes");
    c.bench_function("encode message_created event", |b| {
        b.iter(|| codec::encode(black_box(&event)))
    });
    c.bench_function("decode send request", |b| {
        b.iter(|| decode_client_frame(black_box(SEND)))
    });
    c.bench_function("websocket header for one recipient", |b| {
        b.iter(|| websocket::header(Opcode::Text, black_box(EVENT.len()), None))
    });
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
