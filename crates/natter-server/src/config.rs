//! Configuration: flags and environment variables for what every deployment sets, and an optional
//! TOML file for the rest. Everything is validated before the server starts; an error names the
//! option at fault.

use clap::{Args, Parser, Subcommand, ValueEnum};
use natter_core::Limits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "natter",
    version,
    about = "A self-hosted real-time chat server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone may create an account.
    Open,
    /// Only the first account (the admin) registers itself; admins create the others.
    Closed,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for natter's data (the SQLite database).
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./natter-data")]
    pub data_dir: PathBuf,
    /// Database to use, e.g. `sqlite:///var/lib/natter/natter.db`. Default: SQLite in the data
    /// directory.
    #[arg(long, env = "NATTER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for fan-out between nodes, e.g. `redis://127.0.0.1:6379`. Needs PostgreSQL.
    #[arg(long, env = "NATTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A TOML file with the other settings (see README).
    #[arg(long, env = "NATTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `registration` from the config file.
    #[arg(long, env = "NATTER_REGISTRATION")]
    pub registration: Option<Registration>,
    /// Log filter, e.g. `info` or `info,natter_core=debug`.
    #[arg(long, env = "NATTER_LOG", default_value = "info")]
    pub log: String,
}

/// The settings of the config file. Unknown keys are an error, so a typo never passes silently.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub registration: Registration,
    /// Origins (scheme://host[:port]) whose pages may use the session cookie on the WebSocket,
    /// besides the server's own origin.
    pub allowed_origins: Vec<String>,
    /// Mark the session cookie `Secure` (set when natter is served over HTTPS).
    pub cookie_secure: bool,
    /// How long a login lasts.
    pub token_ttl_days: u32,
    pub limits: Limits,
    pub sqlite: SqliteSettings,
}

/// The `[sqlite]` table: tuning of the embedded store (ignored on PostgreSQL).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSettings {
    /// How long, in milliseconds, the writer may wait for one more write before a commit, when
    /// writes come faster than one per this long: each commit then serves several, for up to
    /// this much more latency. 0 never waits.
    pub commit_delay_ms: f64,
}

/// A commit delay beyond this is a mistake: a send's acknowledgement would wait on it.
const MAX_COMMIT_DELAY_MS: f64 = 50.0;

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            commit_delay_ms: crate::store::sqlite::DEFAULT_COMMIT_DELAY.as_secs_f64() * 1000.0,
        }
    }
}

impl SqliteSettings {
    /// For settings that passed `Settings::validate` (a negative or infinite delay panics).
    pub fn commit_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.commit_delay_ms / 1000.0)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registration: Registration::Open,
            allowed_origins: Vec::new(),
            cookie_secure: false,
            token_ttl_days: 30,
            limits: Limits::default(),
            sqlite: SqliteSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// A libpq connection URL, `postgres://user@host:port/database`.
    Postgres(String),
}

/// Everything the server needs to start, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: Database,
    /// Fan-out between nodes; `None` for a single node.
    pub redis_url: Option<String>,
    pub settings: Settings,
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|span| format!(" (at byte {})", span.start))
                    .unwrap_or_default(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate().map_err(ConfigError::Invalid)?;
        // `contains` is false for NaN as well.
        if !(0.0..=MAX_COMMIT_DELAY_MS).contains(&self.sqlite.commit_delay_ms) {
            return Err(ConfigError::Invalid(format!(
                "sqlite.commit_delay_ms must be between 0 and {MAX_COMMIT_DELAY_MS}"
            )));
        }
        if self.token_ttl_days == 0 {
            return Err(ConfigError::Invalid(
                "token_ttl_days must be at least 1".into(),
            ));
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                return Err(ConfigError::Invalid(format!(
                    "allowed_origins: `{origin}` is not an origin like https://chat.example.com"
                )));
            }
        }
        Ok(())
    }
}

/// Parses `--database-url`: `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or `postgresql://…`.
pub fn parse_database_url(url: &str) -> Result<Database, ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Database::Postgres(url.to_owned()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"));
    match path {
        Some(path) if !path.is_empty() => Ok(Database::Sqlite(PathBuf::from(path))),
        _ => Err(ConfigError::Invalid(format!(
            "--database-url `{}`: expected sqlite://PATH or postgres://USER@HOST/DATABASE",
            url.split('@').next_back().unwrap_or_default()
        ))),
    }
}

impl Config {
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut settings = match &args.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(registration) = args.registration {
            settings.registration = registration;
        }
        settings.validate()?;
        let database = match &args.database_url {
            Some(url) => parse_database_url(url)?,
            None => Database::Sqlite(args.data_dir.join("natter.db")),
        };
        if args.redis_url.is_some() && !matches!(database, Database::Postgres(_)) {
            return Err(ConfigError::Invalid(
                "--redis-url needs --database-url postgres://…: nodes must share their database"
                    .into(),
            ));
        }
        Ok(Config {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            database,
            redis_url: args.redis_url.clone(),
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_config_key_is_named_in_the_error() {
        let error = toml::from_str::<Settings>("registraton = \"closed\"").unwrap_err();
        assert!(error.message().contains("registraton"), "{error}");
    }

    #[test]
    fn limits_are_read_from_the_limits_table_and_checked() {
        let settings: Settings =
            toml::from_str("[limits]\nmax_message_bytes = 100\nrate_per_sec = 0").unwrap();
        assert_eq!(settings.limits.max_message_bytes, 100);
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("rate_per_sec"), "{error}");
    }

    #[test]
    fn the_sqlite_commit_delay_is_read_in_milliseconds_and_bounded() {
        let settings: Settings = toml::from_str("[sqlite]\ncommit_delay_ms = 0.5").unwrap();
        assert_eq!(
            settings.sqlite.commit_delay(),
            std::time::Duration::from_micros(500)
        );
        assert_eq!(
            Settings::default().sqlite.commit_delay(),
            crate::store::sqlite::DEFAULT_COMMIT_DELAY
        );
        for good in ["0", "50"] {
            let settings: Settings =
                toml::from_str(&format!("[sqlite]\ncommit_delay_ms = {good}")).unwrap();
            assert!(settings.validate().is_ok(), "{good}");
        }
        for bad in ["-1", "51", "nan", "inf"] {
            let settings: Settings =
                toml::from_str(&format!("[sqlite]\ncommit_delay_ms = {bad}")).unwrap();
            let error = settings.validate().unwrap_err().to_string();
            assert!(error.contains("commit_delay_ms"), "{bad}: {error}");
        }
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            parse_database_url("sqlite:///tmp/x.db").unwrap(),
            Database::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            parse_database_url("sqlite:x.db").unwrap(),
            Database::Sqlite("x.db".into())
        );
        assert_eq!(
            parse_database_url("postgres://u@db/natter").unwrap(),
            Database::Postgres("postgres://u@db/natter".into())
        );
        let error = parse_database_url("mysql://user:secret@db/natter").unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
