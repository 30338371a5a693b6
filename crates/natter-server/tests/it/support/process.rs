//! A real `natter serve` process, for the tests that kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub struct Process {
    pub child: Child,
    pub base_url: String,
}

impl Process {
    /// A single node on SQLite in `data_dir`.
    pub async fn start(data_dir: &Path) -> Process {
        Process::start_with(data_dir, &[]).await
    }

    /// A node with extra arguments (`--database-url`, `--redis-url`).
    pub async fn start_with(data_dir: &Path, extra: &[&str]) -> Process {
        // Ask the OS for a free port, then hand it to the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_natter"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn natter");
        let base_url = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(format!("{base_url}/healthz")).await
                && response.status().is_success()
            {
                return Process { child, base_url };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("natter did not become healthy");
    }

    /// A cluster node on the test's database and Redis.
    pub async fn node(data_dir: &Path, database: &super::TestDatabase) -> Process {
        let redis = super::redis_url();
        Process::start_with(
            data_dir,
            &["--database-url", &database.url, "--redis-url", &redis],
        )
        .await
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// `kill -9`, and wait until it is gone.
    pub async fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }
}
