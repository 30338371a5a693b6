//! Durability: what was acknowledged survives a restart, a SIGTERM and a `kill -9` under load.
//! These tests run the real `natter` binary as a child process.

use crate::support::process::Process;
use crate::support::raw::{RawSocket, Received};
use crate::support::*;
use natter_client::protocol::{Message, Visibility};
use natter_client::{Client, Options};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test]
async fn a_restart_keeps_history_and_sequences_continue() {
    let server = TestServer::start().await;
    let (ana_auth, ana) = server.connected("ana").await;
    let room = create_channel(&ana, "archive", Visibility::Public).await;
    let mut sent = Vec::new();
    for n in 0..50 {
        sent.push(ana.send_message(room.id, format!("m{n}")).await.unwrap());
    }
    drop(ana);
    let server = server.restart().await;
    let ana = server.client(&ana_auth).await;
    assert_eq!(all_messages(&ana, room.id).await, sent);
    let next = ana.send_message(room.id, "after restart").await.unwrap();
    assert_eq!(next.seq, sent.last().unwrap().seq.next());
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9_under_load() {
    const SENDERS: usize = 4;
    const MAX_PER_SENDER: usize = 5_000;
    let dir = tempfile::TempDir::new().unwrap();
    let mut process = Process::start(dir.path()).await;
    let owner = natter_client::register(&process.base_url, "owner", "password-owner", None)
        .await
        .unwrap();
    let owner_client = Client::connect(Options::new(&process.base_url, &owner.token))
        .await
        .unwrap();
    let room = create_channel(&owner_client, "load", Visibility::Public).await;

    // Everyone joins first, so that the messages' sequences follow each other.
    let mut clients = Vec::new();
    for i in 0..SENDERS {
        let auth = natter_client::register(&process.base_url, &format!("w{i}"), "password-w", None)
            .await
            .unwrap();
        let mut options = Options::new(&process.base_url, &auth.token);
        options.send_attempts = 1;
        options.request_timeout = Duration::from_secs(2);
        let client = Client::connect(options).await.unwrap();
        join(&client, room.id).await;
        clients.push(client);
    }
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..MAX_PER_SENDER {
                match client.send_message(room.id, format!("{i}:{n}")).await {
                    Ok(message) => acked.push(message),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Let the load build, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(700)).await;
    process.signal("-KILL");
    let _ = process.child.wait().await;
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "the load was real: {} acknowledged",
        acked.len()
    );

    let process = Process::start(dir.path()).await;
    let auth = natter_client::login(&process.base_url, "owner", "password-owner")
        .await
        .unwrap();
    let client = Client::connect(Options::new(&process.base_url, &auth.token))
        .await
        .unwrap();
    let stored: BTreeMap<String, Message> = all_messages(&client, room.id)
        .await
        .into_iter()
        .map(|m| (m.client_msg_id.0.clone(), m))
        .collect();
    for message in &acked {
        assert_eq!(
            stored.get(&message.client_msg_id.0),
            Some(message),
            "an acknowledged message was lost"
        );
    }
    // Sequences stayed gapless: every event up to the newest is there.
    let seqs: Vec<u64> = stored.values().map(|m| m.seq.0).collect();
    let newest = *seqs.iter().max().unwrap();
    let first = *seqs.iter().min().unwrap();
    assert_eq!(
        seqs.len() as u64,
        newest - first + 1,
        "message sequences are contiguous"
    );
}

/// A connection upgraded before the shutdown says `hello` after it: the store is closed, and
/// the client is told the server is going away (4004), not that its storage failed (1013).
#[tokio::test]
async fn a_hello_after_the_shutdown_began_is_told_to_reconnect() {
    let mut server = TestServer::start().await;
    let ana = server.user("ana").await;
    let mut raw = RawSocket::connect(&server.base_url).await;
    server.stop().await;
    raw.send(&format!(
        r#"{{"id":1,"type":"hello","token":"{}"}}"#,
        ana.token
    ))
    .await;
    match raw.recv().await {
        Received::Frame(natter_client::protocol::ServerFrame::Error { id, code, .. }) => {
            assert_eq!(id.map(|id| id.0), Some(1));
            assert_eq!(code, natter_client::protocol::ErrorCode::Unavailable);
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert_eq!(
        raw.recv().await,
        Received::Closed(Some(
            natter_client::protocol::CloseCode::ShuttingDown.code()
        ))
    );
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_exits_cleanly() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut process = Process::start(dir.path()).await;
    let ana = natter_client::register(&process.base_url, "ana", "password-ana", None)
        .await
        .unwrap();
    let mut client = Client::connect(Options::new(&process.base_url, &ana.token))
        .await
        .unwrap();
    expect_connected(&mut client).await;
    process.signal("-TERM");
    match client.next_event_within(WAIT).await {
        Some(natter_client::ClientEvent::Disconnected { close_code }) => {
            assert_eq!(
                close_code,
                Some(natter_client::protocol::CloseCode::ShuttingDown.code())
            );
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    let status = tokio::time::timeout(WAIT, process.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
