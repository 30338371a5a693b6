//! The hub's fan-out: one room event to every session in the room, as the writer then takes it.
//! The event is encoded once per broadcast; each recipient costs a queue push and a take.
//! Run: `cargo bench -p natter-core --bench hub`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natter_core::hub::Hub;
use natter_core::ports::broker::Envelope;
use natter_core::ports::store::{EventRecord, TokenId};
use natter_core::session::outbox::Outbox;
use natter_protocol::frame::ServerFrame;
use natter_protocol::{RoomId, RoomSeq, UserId, decode_server_frame};
use std::sync::Arc;

const EVENT: &str = r#"{"type":"event","room_id":3,"seq":43,"at":1795000000000,"actor":1,"event":{"kind":"message_created","message":{"id":101,"room_id":3,"seq":43,"author":{"id":1,"username":"ana","display_name":"Ana"},"client_msg_id":"a1b2c3","body":"Hello **everyone**","created_at":1795000000000,"edited_at":null,"deleted":false}}}"#;

fn fan_out(c: &mut Criterion) {
    let Ok(ServerFrame::Event { event, .. }) = decode_server_frame(EVENT) else {
        panic!("the sample event decodes");
    };
    let mut group = c.benchmark_group("hub fan-out");
    for members in [10usize, 100, 1000] {
        let hub = Hub::new();
        let outboxes: Vec<Arc<Outbox>> = (0..members)
            .map(|i| {
                let outbox = Arc::new(Outbox::new(1024));
                let key = hub
                    .register(UserId(i as i64), TokenId([0; 32]), outbox.clone())
                    .expect("the hub is not closing");
                hub.subscribe(key, [RoomId(3)]);
                outbox
            })
            .collect();
        let mut taken = Vec::new();
        let mut seq = 0;
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                seq += 1;
                hub.deliver(Envelope::Room(Arc::new(EventRecord {
                    room_id: RoomId(3),
                    seq: RoomSeq(seq),
                    at: 0,
                    actor: UserId(1),
                    event: event.clone(),
                })));
                for outbox in &outboxes {
                    let _ = outbox.try_take(&mut taken);
                    taken.clear();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
