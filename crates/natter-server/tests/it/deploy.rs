//! The sample configurations of docs/deploy.md, run for real: nginx in front of two nodes.

use crate::support::*;
use natter_client::protocol::Visibility;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[tokio::test]
async fn the_sample_nginx_config_serves_a_chat_across_two_nodes() {
    let database = TestDatabase::create().await;
    let a = TestServer::node(&database).await;
    let b = TestServer::node(&database).await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sample = include_str!("../../../../deploy/nginx.conf");
    let config = sample
        .replace("127.0.0.1:8081", &a.addr.to_string())
        .replace("127.0.0.1:8082", &b.addr.to_string())
        .replace("listen 127.0.0.1:8080;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "http {",
            &format!(
                "pid {0}/nginx.pid;\nerror_log {0}/error.log;\nhttp {{\n    access_log off;\n    client_body_temp_path {0}/body;\n    proxy_temp_path {0}/proxy;",
                dir.path().display()
            ),
        );
    let config_path = dir.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|path| {
            std::process::Command::new(path)
                .arg("-v")
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .expect("nginx (apt-get install nginx-light)");
    let mut proxy = Command::new(nginx)
        .arg("-c")
        .arg(&config_path)
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"])
        .kill_on_drop(true)
        .spawn()
        .expect("start nginx");
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Round robin puts consecutive connections on different nodes; the chat does not care.
    let ana = natter_client::register(&base, "ana", "password-ana", None)
        .await
        .unwrap();
    let bo = natter_client::register(&base, "bo", "password-bo", None)
        .await
        .unwrap();
    let ana_client = natter_client::Client::connect(natter_client::Options::new(&base, &ana.token))
        .await
        .unwrap();
    let mut bo_client =
        natter_client::Client::connect(natter_client::Options::new(&base, &bo.token))
            .await
            .unwrap();
    expect_connected(&mut bo_client).await;
    let room = create_channel(&ana_client, "through-nginx", Visibility::Public).await;
    let from = join_and_follow(&mut bo_client, room.id).await;
    for n in 0..10 {
        ana_client
            .send_message(room.id, format!("m{n}"))
            .await
            .unwrap();
    }
    let bodies = collect_messages(&mut bo_client, room.id, 10, from).await;
    assert_eq!(bodies, (0..10).map(|n| format!("m{n}")).collect::<Vec<_>>());

    // The HTTP transports through the same round robin: a stream and its requests land on
    // different nodes, and the chat does not notice.
    let cy = natter_client::register(&base, "cy", "password-cy", None)
        .await
        .unwrap();
    let mut wire = crate::transports::Wire::open(
        crate::transports::Kind::Sse,
        &base,
        &cy.token,
        &Default::default(),
    )
    .await;
    let cursor = crate::transports::joined(&mut wire, room.id).await;
    for n in 0..6 {
        let reply = wire
            .request(natter_client::protocol::frame::Request::Send {
                room_id: room.id,
                client_msg_id: natter_client::protocol::ClientMsgId(format!("cy{n}")),
                body: format!("cy{n}"),
            })
            .await;
        assert!(
            matches!(
                reply,
                natter_client::protocol::frame::ServerFrame::Sent { .. }
            ),
            "{reply:?}"
        );
    }
    let (seen, _) = crate::transports::messages_in_order(&mut wire, room.id, cursor, 6).await;
    assert_eq!(seen, (0..6).map(|n| format!("cy{n}")).collect::<Vec<_>>());
    // SIGTERM: nginx's master stops its workers too (SIGKILL would orphan them).
    if let Some(pid) = proxy.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), proxy.wait()).await;
}
