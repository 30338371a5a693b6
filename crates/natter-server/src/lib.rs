//! The natter server: every adapter between the domain (`natter-core`) and the world.
//!
//! # Layout
//! - [`config`]: flags, environment and config file, validated at start.
//! - [`http`]: the router, shared handler state, HTTP errors.
//! - [`auth`]: passwords, session tokens, register/login/logout endpoints.
//! - [`transport`]: WebSocket (later SSE and long-polling) turned into session calls.
//! - [`store`]: the `Store` implementations (SQLite, PostgreSQL); the only module that knows SQL.
//! - [`redis`]: the Redis broker, for several nodes; the only module that knows Redis.
//! - [`web_assets`]: the web app, embedded at build time.
//!
//! [`run`] serves a bound listener until `shutdown` resolves, so tests start the real server on
//! `127.0.0.1:0`.

pub mod auth;
pub mod config;
pub mod http;
pub mod redis;
pub mod store;
pub mod transport;
pub mod web_assets;

use axum::serve::ListenerExt;
use config::{Config, Database};
use http::ServerState;
use natter_core::App;
use natter_core::hub::Hub;
use natter_core::ports::Store;
use natter_protocol::CloseCode;
use redis::RedisBroker;
use redis::presence::RedisPresence;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::{PostgresStore, SqliteStore};
use tokio::net::TcpListener;

/// Keeps a burst of logins from pinning memory. Each argon2 hash allocates about 19 MiB; glibc's
/// malloc raises its mmap threshold after freeing such a block, so later ones come from the heap
/// and stay in the process (measured: 40 concurrent registrations left 780 MB resident). A fixed
/// threshold makes every large block an mmap that is returned to the system when freed.
///
/// Fixing that threshold also fixes the trim threshold at glibc's 128 KiB, and the SQLite writer
/// thread's arena then gave its free top back to the kernel after nearly every send and faulted
/// it in again on the next (80,000 `madvise` calls and page faults a second at 30,000 sends/s).
/// Up to 64 MiB of free heap stays mapped instead.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before serving starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database: {0}")]
    Store(#[from] natter_core::ports::StoreError),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Broker(String),
}

/// A server ready to run: its state and its store (kept to close it cleanly).
pub struct Server {
    pub state: ServerState,
    store: Arc<dyn Store>,
}

impl Server {
    /// Opens the store (running migrations) and builds the application.
    pub async fn build(config: Config) -> Result<Server, StartError> {
        let mut cluster = None;
        let store: Arc<dyn Store> = match &config.database {
            Database::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                Arc::new(SqliteStore::open_with_commit_delay(
                    path,
                    config.settings.sqlite.commit_delay(),
                )?)
            }
            Database::Postgres(url) => {
                let store = PostgresStore::connect(url).await?;
                cluster = Some(store.cluster_id().await?);
                Arc::new(store)
            }
        };
        let limits = config.settings.limits.clone();
        let app = match (&config.redis_url, cluster) {
            (Some(url), Some(cluster)) => {
                let hub = Hub::new();
                let broker = RedisBroker::start(url, &cluster, hub.clone())
                    .await
                    .map_err(|e| StartError::Broker(e.to_string()))?;
                let presence = Arc::new(RedisPresence::new(
                    broker.client.clone(),
                    &cluster,
                    &broker.node,
                ));
                let app = App::new(store.clone(), broker, presence.clone(), hub, limits);
                redis::presence::spawn_upkeep(app.clone(), presence);
                app
            }
            _ => App::single_node(store.clone(), limits),
        };
        app.hub.spawn_heartbeats(app.limits.heartbeat_interval());
        let dummy_hash = auth::dummy_hash()
            .await
            .map_err(|e| StartError::Auth(format!("{e:?}")))?;
        Ok(Server {
            state: ServerState {
                app,
                config: Arc::new(config),
                dummy_hash,
                rpc_limits: Default::default(),
            },
            store,
        })
    }

    /// Serves until `shutdown` resolves; then stops accepting, tells every client to reconnect
    /// (close code 4004), waits briefly for sessions to end, and lets the store finish every
    /// queued write before returning.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let hub = self.state.app.hub.clone();
        let router = http::router(self.state.clone());
        let closing_hub = hub.clone();
        // Chat frames are small and latency matters more than packet count: no Nagle.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        // `into_make_service`: each connection then gets a clone of the router (a reference
        // count). Given the router itself, axum 0.8 rebuilds every route for each connection
        // (`Router::with_state`), a tenth of the CPU of a reconnect storm (docs/benchmarks.md).
        axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: closing sessions");
                closing_hub.close_all(CloseCode::ShuttingDown);
            })
            .await?;
        // Upgraded connections outlive the HTTP server; give them a moment to close.
        for _ in 0..50 {
            if hub.session_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Offline changes wait out the presence window in tasks of their own; the store must
        // hear them (last-seen times) before it closes. Bounded: a store that hangs must not
        // hold the shutdown.
        let app = &self.state.app;
        if tokio::time::timeout(Duration::from_secs(5), app.presence.flush(app))
            .await
            .is_err()
        {
            tracing::warn!("last-seen times not all recorded within 5 s of shutting down");
        }
        let store = self.store;
        drop(self.state);
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!("stopped");
        Ok(())
    }
}
