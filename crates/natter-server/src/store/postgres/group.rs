//! Group commit for sends on PostgreSQL: many sends, one transaction, two round trips.
//!
//! Every send on a node queues to one task, [`run`]. It takes everything queued (up to
//! `MAX_GROUP` sends) and, on one connection, pipelines two batches of statements:
//! 1. `BEGIN`; lock the group's rooms in id order, reading their last sequence; find which sends
//!    may be stored (`CHECK`).
//! 2. Store those (`STORE`: messages, events, the rooms' new last sequence; `MENTION`); `COMMIT`.
//!
//! Between the two, natter numbers the stored sends of each room in queue order. A commit costs
//! one WAL flush however many sends it holds, and every statement handles the whole group, so
//! the database's work per send is a few index lookups and inserts.
//!
//! The guarantees are the single-send path's:
//! - **Ack after commit.** A send is answered only when its group's `COMMIT` has succeeded.
//! - **Gapless per-room sequences.** A room's sequence is read under its row lock, and its new
//!   value written in the same transaction as the messages it numbers.
//! - **Submission order.** One task, groups one after another, sends numbered in queue order:
//!   sends are stored in the order they were queued (`Store::keeps_submission_order`).
//! - **Checks see every earlier change.** Membership and retries are checked after the room
//!   locks are held, so a member removed by a commit just before is seen as removed.
//! - **No deadlocks between groups.** A group locks its rooms in id order before touching them,
//!   on every node, so two groups sharing rooms queue behind each other instead.
//!
//! A send that `CHECK` refuses (not a member, an unknown room, a retried `client_msg_id`, also
//! one repeated within the group) is stored by nothing in the group; once the group's stored
//! sends are answered, it takes the single-send path, which says why. If the database refuses
//! the group as a whole (a conflict, a deadlock), nothing of it was committed, and each of its
//! sends takes the single-send path in order. If the database cannot be reached (no connection,
//! a lost one, no answer within `GROUP_TIMEOUT`), every send of the group is answered
//! `unavailable` at once: its client retries with the same `client_msg_id`, which cannot store
//! a message twice. All of this happens before the next group.
//!
//! Every statement's plan must stay linear in the group's size: PostgreSQL's generic plans
//! guess ten rows for an `unnest`, and a join between two large intermediate results would be
//! planned as nested loops. So each statement joins the sends only to indexed tables.

use super::{append_alone, db, seq, unavailable};
use crate::store::{Listener, NewMessage};
use deadpool_postgres::Pool;
use futures_util::future::maybe_done;
use natter_core::ports::store::{Appended, Change, StoreError};
use natter_protocol::{ClientMsgId, MessageId, RoomId, UserId, UserInfo};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::task::Poll;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

/// Sends per transaction at most; more wait for the next group.
const MAX_GROUP: usize = 512;

/// Locks the group's rooms in id order (every writer to a room takes its row lock first) and
/// reads where each room's sequence stands.
const LOCK_ROOMS: &str = "SELECT id, last_seq FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// The sends (parallel arrays, `ord` from 1 in queue order) whose author is a member of the
/// room and has not used the `client_msg_id` before, with how the author is shown.
const CHECK: &str = "SELECT t.ord, u.username, u.display_name
    FROM unnest($1::bigint[], $2::bigint[], $3::text[])
        WITH ORDINALITY AS t(room_id, author_id, client_msg_id, ord)
    JOIN members m ON m.room_id = t.room_id AND m.user_id = t.author_id
    JOIN users u ON u.id = t.author_id
    WHERE NOT EXISTS (
        SELECT 1 FROM messages x WHERE x.author_id = t.author_id AND x.client_msg_id = t.client_msg_id
    )";

/// Stores the checked sends, numbered: their messages and events, and each room's new last
/// sequence. Returns each message's `(room_id, seq, id)`.
const STORE: &str = "WITH message AS (
        INSERT INTO messages (room_id, seq, author_id, client_msg_id, body, created_at)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[])
        RETURNING id, room_id, seq, author_id, created_at
    ), event AS (
        INSERT INTO room_events (room_id, seq, at, actor_id, kind, message_id)
        SELECT room_id, seq, created_at, author_id, 'message_created', id FROM message
    ), advanced AS (
        UPDATE rooms r SET last_seq = v.last_seq
        FROM unnest($7::bigint[], $8::bigint[]) AS v(id, last_seq)
        WHERE r.id = v.id
    )
    SELECT room_id, seq, id FROM message";

/// Who the stored messages mention, `(room_id, seq, username)`, among the rooms' members other
/// than the author. A statement of its own: it reads the messages `STORE` wrote.
const MENTION: &str = "INSERT INTO mentions (user_id, message_id)
    SELECT u.id, m.id
    FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS w(room_id, seq, name)
    JOIN messages m ON m.room_id = w.room_id AND m.seq = w.seq
    JOIN users u ON lower(u.username) = lower(w.name) AND u.id != m.author_id
    JOIN members mm ON mm.room_id = w.room_id AND mm.user_id = u.id
    ON CONFLICT DO NOTHING";

/// A send waiting for its group.
pub(super) struct Pending {
    pub room_id: RoomId,
    pub actor: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub mentions: Vec<String>,
    pub now: i64,
    pub reply: oneshot::Sender<Result<Appended, StoreError>>,
}

impl Pending {
    fn into_change(self) -> (Change, oneshot::Sender<Result<Appended, StoreError>>) {
        let change = Change::Send {
            client_msg_id: self.client_msg_id,
            body: self.body,
            mentions: self.mentions,
        };
        (change, self.reply)
    }
}

/// Takes queued sends and commits them in groups until the queue closes and is empty.
pub(super) async fn run(
    pool: Pool,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    listener: Listener,
) {
    let mut group = Vec::new();
    // One connection for group after group, so its caches and statement plans stay warm; after
    // a failure, the next group takes another.
    let mut connection = None;
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        match commit(&pool, &mut connection, &group).await {
            Ok(stored) => {
                // The stored sends are answered first; the refused ones then learn why.
                let mut refused = Vec::new();
                for (pending, stored) in group.drain(..).zip(stored) {
                    match stored {
                        Some(stored) => {
                            let (value, reply) = appended(stored, pending);
                            listener.hear(&value);
                            let _ = reply.send(Ok(value));
                        }
                        None => refused.push(pending),
                    }
                }
                for pending in refused {
                    alone(&pool, &listener, pending).await;
                }
            }
            Err(Failed::Database(error)) => {
                tracing::warn!(%error, sends = group.len(), "group commit failed; sending one by one");
                for pending in group.drain(..) {
                    alone(&pool, &listener, pending).await;
                }
            }
            Err(Failed::Unreachable(error)) => {
                // Sending one by one would wait on the database once per send. The clients
                // retry with the same client_msg_id, so a group that did commit after all is
                // not stored twice.
                tracing::warn!(%error, sends = group.len(), "group commit failed: the database is unreachable");
                for pending in group.drain(..) {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// How long a group may take before its connection is given up (a normal group takes
/// milliseconds).
const GROUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why a group was not committed. Nothing of it was.
enum Failed {
    /// The database answered with an error (a conflict, a deadlock): each send, on its own,
    /// will get its own answer.
    Database(StoreError),
    /// No connection, a broken one, or no answer in time.
    Unreachable(StoreError),
}

/// One send on the single-send path, which explains a refusal or stores a retried group's send.
async fn alone(pool: &Pool, listener: &Listener, pending: Pending) {
    let (room_id, actor, now) = (pending.room_id, pending.actor, pending.now);
    let (change, reply) = pending.into_change();
    let result = append_alone(pool, room_id, actor, change, now).await;
    if let Ok(appended) = &result {
        listener.hear(appended);
    }
    let _ = reply.send(result);
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

/// What the group stored for one send.
struct Stored {
    id: MessageId,
    seq: i64,
    username: String,
    display_name: String,
}

fn appended(stored: Stored, pending: Pending) -> (Appended, Reply) {
    let value = Appended {
        record: NewMessage {
            id: stored.id,
            room_id: pending.room_id,
            seq: seq(stored.seq),
            author: UserInfo {
                id: pending.actor,
                username: stored.username,
                display_name: stored.display_name,
            },
            client_msg_id: pending.client_msg_id,
            body: pending.body,
            at: pending.now,
        }
        .into_event(),
        duplicate: false,
    };
    (value, pending.reply)
}

/// Commits one group. `Ok` holds, per send in queue order, what was stored for it (`None`:
/// nothing, it takes the single-send path).
async fn commit(
    pool: &Pool,
    connection: &mut Option<deadpool_postgres::Object>,
    group: &[Pending],
) -> Result<Vec<Option<Stored>>, Failed> {
    let client = match connection.take().filter(|client| !client.is_closed()) {
        Some(client) => client,
        None => pool
            .get()
            .await
            .map_err(|error| Failed::Unreachable(unavailable(error)))?,
    };
    match tokio::time::timeout(GROUP_TIMEOUT, commit_on(&client, group)).await {
        Ok(Ok(stored)) => {
            *connection = Some(client);
            Ok(stored)
        }
        Ok(Err(_)) | Err(_) if client.is_closed() => Err(Failed::Unreachable(
            StoreError::Unavailable("the connection to the database was lost".into()),
        )),
        Ok(Err(error)) => {
            // The transaction may still be open (a failure before COMMIT was sent): end it
            // before the connection goes back to the pool.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(Failed::Database(error))
        }
        Err(_elapsed) => {
            // In an unknown state: never back to the pool.
            drop(deadpool_postgres::Object::take(client));
            Err(Failed::Unreachable(StoreError::Unavailable(
                "the database did not answer in time".into(),
            )))
        }
    }
}

async fn commit_on(
    client: &deadpool_postgres::Object,
    group: &[Pending],
) -> Result<Vec<Option<Stored>>, StoreError> {
    // Each statement must see what committed before it ran (CHECK after the locks are held).
    let begin = db(client
        .prepare_cached("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await)?;
    let lock = db(client.prepare_cached(LOCK_ROOMS).await)?;
    let check = db(client.prepare_cached(CHECK).await)?;
    let store = db(client.prepare_cached(STORE).await)?;
    let mention = db(client.prepare_cached(MENTION).await)?;
    let end = db(client.prepare_cached("COMMIT").await)?;

    // Round trip 1: lock, read the sequences, check every send.
    let mut rooms: Vec<i64> = group.iter().map(|p| p.room_id.0).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let room_ids: Vec<i64> = group.iter().map(|p| p.room_id.0).collect();
    let authors: Vec<i64> = group.iter().map(|p| p.actor.0).collect();
    let client_msg_ids: Vec<&str> = group.iter().map(|p| p.client_msg_id.0.as_str()).collect();
    let lock_params: [&(dyn ToSql + Sync); 1] = [&rooms];
    let check_params: [&(dyn ToSql + Sync); 3] = [&room_ids, &authors, &client_msg_ids];
    let [begun, locked, checked] = in_order([
        client.query(&begin, &[]),
        client.query(&lock, &lock_params),
        client.query(&check, &check_params),
    ])
    .await;
    db(begun)?;
    let mut last_seq: HashMap<i64, i64> = db(locked)?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut shown: HashMap<i64, (String, String)> = db(checked)?
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();

    // Number the accepted sends of each room in queue order.
    // Per send: its sequence and how its author is shown, if it is stored.
    let mut accepted: Vec<Option<(i64, String, String)>> = Vec::with_capacity(group.len());
    let mut columns = StoreColumns::default();
    // A client_msg_id repeated within the group (a retry while the first was still queued) is
    // stored once; the repeat goes on its own afterwards and is answered as a duplicate.
    let mut ids_taken = std::collections::HashSet::new();
    let mut advanced: HashMap<i64, i64> = HashMap::new();
    for (pending, ord) in group.iter().zip(1i64..) {
        let room = pending.room_id.0;
        let first_use = ids_taken.insert((pending.actor.0, pending.client_msg_id.0.as_str()));
        let (true, Some((username, display_name)), Some(last)) =
            (first_use, shown.remove(&ord), last_seq.get_mut(&room))
        else {
            accepted.push(None);
            continue;
        };
        *last += 1;
        advanced.insert(room, *last);
        columns.push(pending, *last);
        accepted.push(Some((*last, username, display_name)));
    }
    let (room_last, last_values): (Vec<i64>, Vec<i64>) = advanced.into_iter().unzip();

    // Round trip 2: store, commit.
    let store_params: [&(dyn ToSql + Sync); 8] = [
        &columns.room_ids,
        &columns.seqs,
        &columns.authors,
        &columns.client_msg_ids,
        &columns.bodies,
        &columns.ats,
        &room_last,
        &last_values,
    ];
    let mention_params: [&(dyn ToSql + Sync); 3] = [
        &columns.mention_rooms,
        &columns.mention_seqs,
        &columns.mention_names,
    ];
    let [written, mentioned, committed] = in_order([
        client.query(&store, &store_params),
        client.query(&mention, &mention_params),
        client.query(&end, &[]),
    ])
    .await;
    // After a failure PostgreSQL refuses the rest of the transaction, and the COMMIT rolls it
    // back: an error in any result means nothing was committed.
    let ids: HashMap<(i64, i64), i64> = db(written)?
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    db(mentioned)?;
    db(committed)?;
    let mut stored = Vec::with_capacity(group.len());
    for (pending, accepted) in group.iter().zip(accepted) {
        stored.push(match accepted {
            None => None,
            Some((seq, username, display_name)) => {
                let id =
                    ids.get(&(pending.room_id.0, seq))
                        .copied()
                        .ok_or(StoreError::Unavailable(
                            "a stored message was not returned".into(),
                        ))?;
                Some(Stored {
                    id: MessageId(id),
                    seq,
                    username,
                    display_name,
                })
            }
        });
    }
    Ok(stored)
}

/// The accepted sends as the parallel arrays `STORE` takes.
#[derive(Default)]
struct StoreColumns<'a> {
    room_ids: Vec<i64>,
    seqs: Vec<i64>,
    authors: Vec<i64>,
    client_msg_ids: Vec<&'a str>,
    bodies: Vec<&'a str>,
    ats: Vec<i64>,
    mention_rooms: Vec<i64>,
    mention_seqs: Vec<i64>,
    mention_names: Vec<&'a str>,
}

impl<'a> StoreColumns<'a> {
    fn push(&mut self, pending: &'a Pending, seq: i64) {
        self.room_ids.push(pending.room_id.0);
        self.seqs.push(seq);
        self.authors.push(pending.actor.0);
        self.client_msg_ids.push(&pending.client_msg_id.0);
        self.bodies.push(&pending.body);
        self.ats.push(pending.now);
        for name in &pending.mentions {
            self.mention_rooms.push(pending.room_id.0);
            self.mention_seqs.push(seq);
            self.mention_names.push(name);
        }
    }
}

/// Runs the futures concurrently and first polls them in order. tokio-postgres sends a
/// statement when its future is first polled, so they reach the server back to back, in this
/// order, on one connection: a pipeline, one round trip for all of them.
async fn in_order<F: Future, const N: usize>(futures: [F; N]) -> [F::Output; N] {
    let mut futures = futures.map(|future| Box::pin(maybe_done(future)));
    poll_fn(|cx| {
        let mut all_done = true;
        for future in &mut futures {
            all_done &= future.as_mut().poll(cx).is_ready();
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    futures.map(|mut future| {
        future
            .as_mut()
            .take_output()
            .unwrap_or_else(|| unreachable!("every future is done"))
    })
}
