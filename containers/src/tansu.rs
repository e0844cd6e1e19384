//! A Tansu 0.6.0 broker as a process, with the SQLite storage engine in a
//! temporary directory.
//!
//! Tansu reads `.env` files from its working directory and the parents, and
//! every setting also from the environment, so the fixture passes every flag
//! explicitly and removes the matching variables from the child's
//! environment. The SQLite engine commits every produce before acknowledging
//! it, so acknowledged records survive kill -9.

use crate::process::{ChildProcess, ChildSpec, LOG_TAIL_BYTES, Termination};
use crate::{FaultProxy, FixtureError};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use soilstream::transport::kafka::{KafkaClientConfig, ensure_topics};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the `tansu` binary to run.
pub const TANSU_ENV: &str = "SOILSTREAM_TANSU";

/// How to install the broker the fixture needs.
pub const TANSU_INSTALL_HINT: &str = "install Tansu 0.6.0 with `cargo install tansu@0.6.0 --locked --features libsql,dynostore` \
     (or set SOILSTREAM_TANSU to the path of a tansu 0.6.0 binary)";

/// Environment variable whose value, if set, becomes the broker's `RUST_LOG`.
const TANSU_LOG_ENV: &str = "SOILSTREAM_TANSU_LOG";

/// Variables Tansu would read settings from; removed from its environment.
const TANSU_SETTING_VARS: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "RUST_LOG",
];

/// Timeout of one readiness probe (a metadata request), in ms.
const PROBE_TIMEOUT_MS: u64 = 1_000;

/// Attempts at a first start on a fresh port (another process may grab the
/// free port between probing and the broker binding it).
const FIRST_START_ATTEMPTS: u32 = 3;

/// Where the broker keeps its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TansuStorage {
    /// SQLite in the data directory (`sqlite://tansu.db`): each produce is
    /// committed before its ack, so acknowledged data survives kill -9.
    #[default]
    Sqlite,
    /// In memory (`memory://`): everything is lost when the process ends,
    /// and a restart creates the topics again, empty. For benchmarks of the
    /// clients' cost, where the SQLite engine would be what is measured.
    Memory,
}

impl TansuStorage {
    /// The `--storage-engine` URL.
    pub fn engine_url(self) -> &'static str {
        match self {
            TansuStorage::Sqlite => "sqlite://tansu.db",
            TansuStorage::Memory => "memory://",
        }
    }
}

/// How the broker fixture is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TansuConfig {
    /// Topics to create once the broker is ready: `(name, partitions)`.
    pub topics: Vec<(String, u32)>,
    /// Where the broker keeps its log.
    pub storage: TansuStorage,
    /// Put a [`FaultProxy`] in front of the broker and advertise its address,
    /// so every client connection goes through it.
    pub with_proxy: bool,
    /// How long to wait for the broker to answer metadata requests, in ms.
    pub ready_timeout_ms: u64,
    /// How long [`TansuBroker::stop`] waits after SIGTERM before SIGKILL, in
    /// ms.
    pub stop_timeout_ms: u64,
}

impl Default for TansuConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            storage: TansuStorage::Sqlite,
            with_proxy: false,
            ready_timeout_ms: 30_000,
            // Tansu 0.6.0 takes about 5 s to exit on SIGTERM while clients
            // are connected (under 2 s without).
            stop_timeout_ms: 10_000,
        }
    }
}

impl TansuConfig {
    /// Adds a topic to create.
    pub fn topic(mut self, name: impl Into<String>, partitions: u32) -> Self {
        self.topics.push((name.into(), partitions));
        self
    }

    /// Sets where the broker keeps its log.
    pub fn storage(mut self, storage: TansuStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Puts a fault proxy in front of the broker.
    pub fn with_proxy(mut self) -> Self {
        self.with_proxy = true;
        self
    }
}

/// Locates the `tansu` binary: `$SOILSTREAM_TANSU`, then `tansu` on `PATH`,
/// then cargo's install directory. Checks that it runs and warns if it is not
/// version 0.6.
pub fn find_tansu() -> Result<PathBuf, FixtureError> {
    let explicit = std::env::var_os(TANSU_ENV).map(PathBuf::from);
    let mut search: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    search.extend(cargo_home.map(|home| home.join("bin")));
    locate_tansu(explicit, &search)
}

fn locate_tansu(explicit: Option<PathBuf>, search_dirs: &[PathBuf]) -> Result<PathBuf, FixtureError> {
    let missing = |detail: String| FixtureError::TansuMissing {
        detail,
        hint: TANSU_INSTALL_HINT,
    };
    let candidate = match explicit {
        Some(path) if path.is_file() => path,
        Some(path) => {
            return Err(missing(format!("{TANSU_ENV}={} is not a file", path.display())));
        }
        None => search_dirs
            .iter()
            .map(|dir| dir.join("tansu"))
            .find(|path| path.is_file())
            .ok_or_else(|| missing("no `tansu` binary on PATH or in cargo's bin directory".into()))?,
    };
    let output = Command::new(&candidate)
        .arg("--version")
        .output()
        .map_err(|e| missing(format!("{} cannot be run: {e}", candidate.display())))?;
    if !output.status.success() {
        return Err(missing(format!(
            "`{} --version` failed ({})",
            candidate.display(),
            output.status
        )));
    }
    let version = String::from_utf8_lossy(&output.stdout);
    if !version.trim().starts_with("tansu 0.6.") {
        tracing::warn!(version = %version.trim(), path = %candidate.display(), "expected tansu 0.6.x");
    }
    Ok(candidate)
}

/// A running (or stopped) Tansu broker. See the module docs.
///
/// Dropping it kills the broker and deletes its data.
#[derive(Debug)]
pub struct TansuBroker {
    config: TansuConfig,
    tansu: PathBuf,
    cluster_id: String,
    broker_addr: SocketAddr,
    proxy: Option<FaultProxy>,
    child: Option<ChildProcess>,
    log_path: PathBuf,
    // Declared last: removed after the child is killed (fields drop in order).
    data_dir: tempfile::TempDir,
}

impl TansuBroker {
    /// Starts a broker as configured, waits until it is ready and creates
    /// the topics.
    pub fn start(config: TansuConfig) -> Result<Self, FixtureError> {
        let tansu = find_tansu()?;
        let data_dir = tempfile::Builder::new()
            .prefix("soilstream-tansu-")
            .tempdir()
            .map_err(|e| FixtureError::io("creating the broker's data directory", e))?;
        let log_path = data_dir.path().join("tansu.log");
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let cluster_id = format!(
            "soilstream-{}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let port = crate::free_loopback_port()?;
        let broker_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let proxy = if config.with_proxy {
            Some(FaultProxy::start(broker_addr)?)
        } else {
            None
        };
        let mut broker = Self {
            config,
            tansu,
            cluster_id,
            broker_addr,
            proxy,
            child: None,
            log_path,
            data_dir,
        };
        let mut attempt = 1;
        loop {
            match broker.spawn_and_wait(false) {
                Ok(()) => break,
                Err(FixtureError::BrokerExited { status, log_tail }) if attempt < FIRST_START_ATTEMPTS => {
                    tracing::warn!(%status, %log_tail, "broker exited at start; retrying on another port");
                    attempt += 1;
                    broker.broker_addr =
                        SocketAddr::from((Ipv4Addr::LOCALHOST, crate::free_loopback_port()?));
                    if let Some(proxy) = &broker.proxy {
                        proxy.set_target(broker.broker_addr);
                    }
                }
                Err(error) => return Err(error),
            }
        }
        broker.create_configured_topics()?;
        tracing::info!(
            broker = %broker.broker_addr,
            bootstrap = %broker.bootstrap_servers(),
            data_dir = %broker.data_dir.path().display(),
            "tansu broker ready"
        );
        Ok(broker)
    }

    /// What clients use as `bootstrap.servers`: the proxy's address when
    /// there is a proxy, else the broker's.
    pub fn bootstrap_servers(&self) -> String {
        self.advertised_addr().to_string()
    }

    /// A client configuration pointing at [`bootstrap_servers`](Self::bootstrap_servers).
    pub fn client_config(&self) -> KafkaClientConfig {
        KafkaClientConfig::new(self.bootstrap_servers())
    }

    /// The broker's own listening address (bypassing any proxy).
    pub fn broker_addr(&self) -> SocketAddr {
        self.broker_addr
    }

    /// The fault proxy in front of the broker, if configured.
    pub fn proxy(&self) -> Option<&FaultProxy> {
        self.proxy.as_ref()
    }

    /// The directory holding the SQLite database and the log.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The broker's log file (stdout and stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `max_bytes` of the broker's log.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        crate::process::read_tail(&self.log_path, max_bytes)
    }

    /// Lines of the broker's log reporting a panic. Tansu keeps running
    /// after a request handler panics (and may answer errors from then on),
    /// so suites check this at the end.
    pub fn panics_in_log(&self) -> Vec<String> {
        std::fs::read(&self.log_path)
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter(|line| line.contains("panicked at"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The broker's process id, if it runs.
    pub fn pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.child.as_ref().map(ChildProcess::pid)
        } else {
            None
        }
    }

    /// Whether the broker process runs (a paused broker runs).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// Creates the topics of the configuration that do not exist yet.
    fn create_configured_topics(&self) -> Result<(), FixtureError> {
        let topics: Vec<(&str, u32)> = self
            .config
            .topics
            .iter()
            .map(|(name, partitions)| (name.as_str(), *partitions))
            .collect();
        self.create_topics(&topics)
    }

    /// Creates topics (`(name, partitions)`) that do not exist yet, talking
    /// to the broker directly (not through the proxy).
    pub fn create_topics(&self, topics: &[(&str, u32)]) -> Result<(), FixtureError> {
        if topics.is_empty() {
            return Ok(());
        }
        let bootstrap = self.broker_addr.to_string();
        let owned: Vec<(String, u32)> = topics.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        run_on_helper_runtime(move || async move {
            let borrowed: Vec<(&str, u32)> = owned.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            ensure_topics(&bootstrap, &BTreeMap::new(), &borrowed)
                .await
                .map_err(|e| FixtureError::Kafka(e.to_string()))
        })
    }

    /// Stops the broker: SIGTERM, then SIGKILL after the configured
    /// `stop_timeout_ms` (Tansu may not honour SIGTERM promptly).
    pub fn stop(&mut self) -> Result<Termination, FixtureError> {
        let timeout_ms = self.config.stop_timeout_ms;
        let child = self.running_child("stop")?;
        let termination = child.terminate(timeout_ms)?;
        tracing::info!(?termination, "tansu broker stopped");
        Ok(termination)
    }

    /// Kills the broker with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) -> Result<(), FixtureError> {
        self.running_child("kill")?.kill9()?;
        tracing::info!("tansu broker killed (SIGKILL)");
        Ok(())
    }

    /// Starts the broker again on the same data directory, port and cluster
    /// id after a stop or kill, and waits until it is ready and serves the
    /// configured topics again (with [`TansuStorage::Memory`] they come back
    /// empty: the fixture creates them again).
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        if self.is_running() {
            return Err(FixtureError::State(
                "the broker is running; stop or kill it before restarting".into(),
            ));
        }
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.config.ready_timeout_ms);
        // The port may linger briefly after a kill: retry while the broker
        // exits at once, until the readiness deadline.
        // A memory broker comes back empty: it cannot list the topics
        // until they are created again.
        let durable = self.config.storage == TansuStorage::Sqlite;
        loop {
            match self.spawn_and_wait(durable) {
                Ok(()) => break,
                Err(FixtureError::BrokerExited { status, log_tail }) if Instant::now() < deadline => {
                    tracing::warn!(%status, %log_tail, "broker exited at restart; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        }
        if !durable {
            self.create_configured_topics()?;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tansu broker restarted"
        );
        Ok(())
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is
    /// answered.
    pub fn pause(&mut self) -> Result<(), FixtureError> {
        self.running_child("pause")?.pause()
    }

    /// Resumes a paused broker (SIGCONT).
    pub fn resume(&mut self) -> Result<(), FixtureError> {
        self.running_child("resume")?.resume()
    }

    fn running_child(&mut self, action: &str) -> Result<&mut ChildProcess, FixtureError> {
        if !self.is_running() {
            return Err(FixtureError::State(format!(
                "cannot {action} the broker: it is not running"
            )));
        }
        self.child
            .as_mut()
            .ok_or_else(|| FixtureError::State(format!("cannot {action} the broker: it never started")))
    }

    fn advertised_addr(&self) -> SocketAddr {
        self.proxy.as_ref().map_or(self.broker_addr, FaultProxy::addr)
    }

    fn spec(&self) -> ChildSpec {
        let listener = format!("tcp://{}", self.broker_addr);
        let advertised = format!("tcp://{}", self.advertised_addr());
        let mut spec = ChildSpec::new(&self.tansu, &self.log_path)
            .current_dir(self.data_dir.path())
            .args(["broker", "--storage-engine", self.config.storage.engine_url()])
            .args(["--listener-url", listener.as_str()])
            .args(["--advertised-listener-url", advertised.as_str()])
            .args(["--cluster-id", self.cluster_id.as_str()]);
        for var in TANSU_SETTING_VARS {
            spec = spec.env_remove(*var);
        }
        if let Some(level) = std::env::var_os(TANSU_LOG_ENV) {
            spec = spec.env("RUST_LOG", level);
        }
        spec
    }

    /// Starts the process (fresh or again) and waits until it answers a
    /// metadata request (and, when `expect_topics`, lists the configured
    /// topics).
    fn spawn_and_wait(&mut self, expect_topics: bool) -> Result<(), FixtureError> {
        match self.child.as_mut() {
            Some(child) => child.restart()?,
            None => self.child = Some(ChildProcess::spawn(self.spec())?),
        }
        let expected: Vec<String> = if expect_topics {
            self.config.topics.iter().map(|(name, _)| name.clone()).collect()
        } else {
            Vec::new()
        };
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker_addr.to_string())
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "200")
            .create()
            .map_err(|e| FixtureError::Kafka(format!("creating the readiness probe: {e}")))?;
        let timeout_ms = self.config.ready_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.exit_status()
            {
                return Err(FixtureError::BrokerExited {
                    status: status.to_string(),
                    log_tail: self.log_tail(LOG_TAIL_BYTES),
                });
            }
            if let Ok(metadata) = probe.fetch_metadata(None, Duration::from_millis(PROBE_TIMEOUT_MS)) {
                let listed = |name: &String| metadata.topics().iter().any(|t| t.name() == name);
                if expected.iter().all(listed) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(FixtureError::Timeout {
                    what: format!("tansu on {} to become ready", self.broker_addr),
                    timeout_ms,
                    log_tail: self.log_tail(LOG_TAIL_BYTES),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs an async operation to completion on a fresh current-thread runtime on
/// a helper thread, so callers may be inside or outside a runtime.
fn run_on_helper_runtime<F, Fut, T>(make: F) -> Result<T, FixtureError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, FixtureError>>,
    T: Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name("tansu-admin".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| FixtureError::io("building the admin runtime", e))?;
            runtime.block_on(make())
        })
        .map_err(|e| FixtureError::io("starting the admin thread", e))?;
    handle
        .join()
        .map_err(|_| FixtureError::State("the admin thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_broker_is_reported_with_install_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let error = locate_tansu(Some(dir.path().join("nope")), &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("SOILSTREAM_TANSU"), "{text}");
        assert!(
            text.contains("cargo install tansu@0.6.0 --locked --features libsql,dynostore"),
            "{text}"
        );
        let error = locate_tansu(None, &[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(error, FixtureError::TansuMissing { .. }), "{error}");
        // A file that is not a runnable tansu is refused too.
        let fake = dir.path().join("tansu");
        std::fs::write(&fake, "not a program").unwrap();
        let error = locate_tansu(None, &[dir.path().to_path_buf()]).unwrap_err();
        assert!(error.to_string().contains("cannot be run"), "{error}");
    }
}
