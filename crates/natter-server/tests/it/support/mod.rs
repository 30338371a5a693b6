//! The vocabulary of the integration tests: a real server on an ephemeral port with a temporary
//! data directory, users, connected clients, and waiting for what a client should receive.

#![allow(dead_code)]

pub mod chaos;
pub mod process;
pub mod raw;

use natter_client::protocol::frame::{Request, ServerFrame};
use natter_client::protocol::{RoomEvent, RoomId, RoomInfo, RoomSeq, Visibility};
use natter_client::{Auth, Client, ClientEvent, Options};
use natter_server::Server;
use natter_server::config::{Config, Database, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A SQLite store in a temporary directory.
pub fn sqlite_store() -> (TempDir, std::sync::Arc<dyn natter_core::ports::Store>) {
    let dir = TempDir::new().expect("temp dir");
    let store =
        natter_server::store::SqliteStore::open(&dir.path().join("natter.db")).expect("sqlite");
    (dir, std::sync::Arc::new(store))
}

/// The Redis the cluster tests use: `NATTER_TEST_REDIS`, or the local one.
pub fn redis_url() -> String {
    std::env::var("NATTER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL server the tests use: `NATTER_TEST_POSTGRES`, or the local one.
pub fn postgres_admin_url() -> String {
    std::env::var("NATTER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A fresh PostgreSQL database for one test, dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("natter_t_{}_{n}_{nanos}", std::process::id());
        let admin = postgres_admin_url();
        let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL for the tests (NATTER_TEST_POSTGRES, default postgres://root@127.0.0.1:5432/test)");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn store(&self) -> std::sync::Arc<dyn natter_core::ports::Store> {
        std::sync::Arc::new(
            natter_server::store::PostgresStore::connect(&self.url)
                .await
                .expect("connect"),
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (postgres_admin_url(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// How long a test waits for something that should happen at once. Generous: machines are shared.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub base_url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub settings: Settings,
    /// The node's hub, to do what a shutdown does first (`close_all`) with the server still up.
    pub hub: natter_core::hub::Hub,
    /// Set for nodes of a cluster: the shared PostgreSQL database and Redis.
    cluster: Option<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    dir: Option<TempDir>,
}

/// Settings for tests: limits high enough that load tests are not rate limited.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.limits.rate_per_sec = 100_000.0;
    settings.limits.rate_burst = 100_000.0;
    settings
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let dir = TempDir::new().expect("temp dir");
        let mut settings = test_settings();
        tweak(&mut settings);
        let any_port = "127.0.0.1:0".parse().unwrap();
        let mut server = TestServer::start_in(dir.path().to_owned(), settings, any_port).await;
        server.dir = Some(dir);
        server
    }

    /// A node of a cluster: PostgreSQL `database`, fan-out through Redis (`NATTER_TEST_REDIS`,
    /// default the local one).
    pub async fn node(database: &TestDatabase) -> TestServer {
        TestServer::node_with(database, |_| {}).await
    }

    pub async fn node_with(
        database: &TestDatabase,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestServer {
        TestServer::node_at(&database.url, &redis_url(), tweak).await
    }

    /// A node on these exact URLs (a proxy in front of PostgreSQL, a Redis of the test's own).
    pub async fn node_at(
        database_url: &str,
        redis: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let dir = TempDir::new().expect("temp dir");
        let mut settings = test_settings();
        tweak(&mut settings);
        let cluster = Some((database_url.to_owned(), redis.to_owned()));
        let any_port = "127.0.0.1:0".parse().unwrap();
        let mut server =
            TestServer::launch(dir.path().to_owned(), settings, any_port, cluster).await;
        server.dir = Some(dir);
        server
    }

    /// Starts a server on an existing data directory (to test restarts) at `addr`.
    pub async fn start_in(data_dir: PathBuf, settings: Settings, addr: SocketAddr) -> TestServer {
        TestServer::launch(data_dir, settings, addr, None).await
    }

    async fn launch(
        data_dir: PathBuf,
        settings: Settings,
        addr: SocketAddr,
        cluster: Option<(String, String)>,
    ) -> TestServer {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.clone(),
            database: match &cluster {
                Some((url, _)) => Database::Postgres(url.clone()),
                None => Database::Sqlite(data_dir.join("natter.db")),
            },
            redis_url: cluster.as_ref().map(|(_, redis)| redis.clone()),
            settings: settings.clone(),
        };
        let server = Server::build(config).await.expect("server builds");
        let hub = server.state.app.hub.clone();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            hub,
            base_url: format!("http://{addr}"),
            addr,
            data_dir,
            settings,
            cluster,
            stop: Some(stop),
            task: Some(task),
            dir: None,
        }
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }

    /// Stops this server gracefully and starts a new one on the same data directory and port.
    pub async fn restart(mut self) -> TestServer {
        self.stop().await;
        self.start_again().await
    }

    /// Starts a stopped server again on the same data directory and port.
    pub async fn start_again(mut self) -> TestServer {
        let mut next = TestServer::launch(
            self.data_dir.clone(),
            self.settings.clone(),
            self.addr,
            self.cluster.clone(),
        )
        .await;
        next.dir = self.dir.take();
        next
    }

    /// Registers `name` (password `password-<name>`).
    pub async fn user(&self, name: &str) -> Auth {
        natter_client::register(&self.base_url, name, &format!("password-{name}"), None)
            .await
            .expect("register")
    }

    pub fn options(&self, auth: &Auth) -> Options {
        let mut options = Options::new(self.base_url.clone(), auth.token.clone());
        options.backoff_min = Duration::from_millis(20);
        options.backoff_max = Duration::from_millis(500);
        options
    }

    pub async fn client(&self, auth: &Auth) -> Client {
        Client::connect(self.options(auth)).await.expect("connect")
    }

    /// A new user with a connected client whose `Connected` event was taken.
    pub async fn connected(&self, name: &str) -> (Auth, Client) {
        let auth = self.user(name).await;
        let mut client = self.client(&auth).await;
        expect_connected(&mut client).await;
        (auth, client)
    }
}

pub async fn expect_connected(client: &mut Client) -> Vec<RoomInfo> {
    match client.next_event_within(WAIT).await {
        Some(ClientEvent::Connected { rooms, .. }) => rooms,
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Creates a channel as `owner`.
pub async fn create_channel(owner: &Client, name: &str, visibility: Visibility) -> RoomInfo {
    let reply = owner
        .request(Request::CreateRoom {
            name: name.into(),
            visibility,
            topic: String::new(),
        })
        .await
        .expect("create room");
    match reply {
        ServerFrame::Room { room, .. } => room,
        other => panic!("expected a room, got {other:?}"),
    }
}

pub async fn join(client: &Client, room_id: RoomId) -> RoomInfo {
    match client
        .request(Request::Join { room_id })
        .await
        .expect("join")
    {
        ServerFrame::Room { room, .. } => room,
        other => panic!("expected a room, got {other:?}"),
    }
}

/// Joins a public channel and waits for its `room_added`: returns the sequence after which the
/// room's events (starting with the join itself) follow.
pub async fn join_and_follow(client: &mut Client, room_id: RoomId) -> RoomSeq {
    join(client, room_id).await;
    wait_for(client, |frame| match frame {
        ServerFrame::RoomAdded { room } if room.id == room_id => Some(room.last_seq),
        _ => None,
    })
    .await
}

/// The newest page of a room's history (the server's default page size).
pub async fn newest_messages(
    client: &Client,
    room_id: RoomId,
) -> Vec<natter_client::protocol::Message> {
    let request = Request::History {
        room_id,
        before: None,
        after: None,
        limit: None,
    };
    match client.request(request).await.expect("history") {
        ServerFrame::History { messages, .. } => messages,
        other => panic!("expected history, got {other:?}"),
    }
}

/// Every message of a room, oldest first, read page by page.
pub async fn all_messages(
    client: &Client,
    room_id: RoomId,
) -> Vec<natter_client::protocol::Message> {
    let mut messages = Vec::new();
    let mut after = RoomSeq::ZERO;
    loop {
        let reply = client
            .request(Request::History {
                room_id,
                before: None,
                after: Some(after),
                limit: Some(200),
            })
            .await
            .unwrap();
        let ServerFrame::History {
            messages: page,
            has_more,
            ..
        } = reply
        else {
            panic!("{reply:?}")
        };
        if let Some(last) = page.last() {
            after = last.seq;
        }
        messages.extend(page);
        if !has_more {
            return messages;
        }
    }
}

/// Waits until `user_id` is reported `status` (earlier reports, such as the first `online` of
/// a user who just connected, are skipped); returns their last-seen time.
pub async fn presence_becomes(
    client: &mut Client,
    user_id: natter_client::protocol::UserId,
    status: natter_client::protocol::PresenceStatus,
    within: Duration,
) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await {
            Some(ClientEvent::Frame(ServerFrame::Presence { presence }))
                if presence.user_id == user_id && presence.status == status =>
            {
                return presence.last_seen;
            }
            Some(_) => {}
            None => panic!("{user_id} did not become {status:?} within {within:?}"),
        }
    }
}

/// True if no presence frame saying `user_id` is `status` arrives within `within`.
pub async fn no_presence_of(
    client: &mut Client,
    user_id: natter_client::protocol::UserId,
    status: natter_client::protocol::PresenceStatus,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await {
            None => return true,
            Some(ClientEvent::Frame(ServerFrame::Presence { presence }))
                if presence.user_id == user_id && presence.status == status =>
            {
                return false;
            }
            Some(_) => {}
        }
    }
}

/// Waits for the next pushed frame that satisfies `pick`, skipping others.
pub async fn wait_for<T>(
    client: &mut Client,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event_within(left).await {
            Some(ClientEvent::Frame(frame)) => {
                if let Some(found) = pick(&frame) {
                    return found;
                }
            }
            Some(_) => {}
            None => panic!("timed out waiting for a frame"),
        }
    }
}

/// Waits for the next room event (of any room), returning `(room, seq, event)`.
pub async fn next_room_event(client: &mut Client) -> (RoomId, RoomSeq, RoomEvent) {
    wait_for(client, |frame| match frame {
        ServerFrame::Event {
            room_id,
            seq,
            event,
            ..
        } => Some((*room_id, *seq, event.clone())),
        _ => None,
    })
    .await
}

/// Collects message bodies of `room` until `count` messages arrived; checks every room event
/// of that room is exactly the next sequence.
pub async fn collect_messages(
    client: &mut Client,
    room: RoomId,
    count: usize,
    mut last_seq: RoomSeq,
) -> Vec<String> {
    let mut bodies = Vec::with_capacity(count);
    while bodies.len() < count {
        let (room_id, seq, event) = next_room_event(client).await;
        if room_id != room {
            continue;
        }
        assert_eq!(
            seq,
            last_seq.next(),
            "events of room {room} must be gapless and in order"
        );
        last_seq = seq;
        if let RoomEvent::MessageCreated { message } = event {
            bodies.push(message.body);
        }
    }
    bodies
}
