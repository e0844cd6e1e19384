//! A soilstream component as a process: `soilstream gateway`, `qaqc` or
//! `archive`, each started the same way (a TOML file in its own directory,
//! `--config FILE`, its log in that directory, `/metrics` on a free port it
//! announces in the log) and each killed, stopped and restarted the same
//! way. The registry is the fourth long-running command; it announces its
//! URL instead.

use super::metrics::{Metrics, metrics_addr_in_log, scrape};
use crate::{ChildProcess, ChildSpec, FixtureError, Termination, wait_until};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How long a component may take to open its state and serve `/metrics`, ms.
pub const COMPONENT_START_TIMEOUT_MS: u64 = 30_000;

/// Bytes of a component's log shown in an error.
pub const LOG_TAIL_BYTES: u64 = 6_000;

/// Environment variables the component commands read settings from:
/// removed from their environment so that only the written file counts.
pub const SETTINGS_ENV_VARS: &[&str] = &[
    "SOILSTREAM_CONFIG",
    "SOILSTREAM_GATEWAY_ID",
    "SOILSTREAM_BROKERS",
    "SOILSTREAM_TOPIC",
    "SOILSTREAM_SPOOL_DIR",
    "SOILSTREAM_INTERVAL_MS",
    "SOILSTREAM_SENSORS",
    "SOILSTREAM_SEED",
    "SOILSTREAM_METRICS_LISTEN",
    "SOILSTREAM_REGISTRY_URL",
    "SOILSTREAM_QAQC_CONFIG",
    "SOILSTREAM_QAQC_INSTANCE_ID",
    "SOILSTREAM_QAQC_GROUP_ID",
    "SOILSTREAM_QAQC_STATE_DIR",
    "SOILSTREAM_QAQC_METRICS_LISTEN",
    "SOILSTREAM_ARCHIVE_CRASH_AT",
    "SOILSTREAM_ARCHIVE_CRASH_AFTER",
];

/// Which component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ComponentKind {
    /// `soilstream gateway`: sampler, spool, forwarder.
    Gateway,
    /// `soilstream qaqc`: the QA/QC stream processor.
    Qaqc,
    /// `soilstream archive`: the Parquet archive.
    Archive,
}

impl ComponentKind {
    /// The subcommand.
    pub fn command(self) -> &'static str {
        match self {
            ComponentKind::Gateway => "gateway",
            ComponentKind::Qaqc => "qaqc",
            ComponentKind::Archive => "archive",
        }
    }
}

/// A running (or stopped) component process with its own directory.
#[derive(Debug)]
pub struct Component {
    kind: ComponentKind,
    name: String,
    dir: PathBuf,
    child: ChildProcess,
    metrics_addr: SocketAddr,
    boots: u32,
}

impl Component {
    /// Writes `config_toml` to `dir/<command>.toml` and starts `program
    /// <command> --config FILE [extra_args]` with `SOILSTREAM_LOG=log_filter`;
    /// returns once its metrics endpoint answers.
    pub fn start(
        program: &Path,
        kind: ComponentKind,
        name: &str,
        dir: &Path,
        config_toml: &str,
        extra_args: &[&str],
        log_filter: &str,
    ) -> Result<Self, FixtureError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| FixtureError::io(format!("creating {}", dir.display()), e))?;
        let config_path = dir.join(format!("{}.toml", kind.command()));
        std::fs::write(&config_path, config_toml)
            .map_err(|e| FixtureError::io(format!("writing {}", config_path.display()), e))?;
        let mut spec = ChildSpec::new(program, dir.join(format!("{}.log", kind.command())))
            .arg(kind.command())
            .arg("--config")
            .arg(&config_path)
            .args(extra_args.iter().copied())
            .env("SOILSTREAM_LOG", log_filter);
        for var in SETTINGS_ENV_VARS {
            spec = spec.env_remove(var);
        }
        let child = ChildProcess::spawn(spec)?;
        let mut component = Self {
            kind,
            name: name.to_owned(),
            dir: dir.to_owned(),
            child,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            boots: 1,
        };
        component.await_metrics()?;
        Ok(component)
    }

    /// Its name (`gw-0`, `qaqc-0`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which component it is.
    pub fn kind(&self) -> ComponentKind {
        self.kind
    }

    /// Its directory (configuration, state, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts so far.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The exit status, if the process exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.exit_status()
    }

    /// Scrapes `/metrics` once.
    pub fn metrics(&self) -> Result<Metrics, String> {
        scrape(self.metrics_addr)
    }

    /// The last bytes of its log (every incarnation).
    pub fn log_tail(&self) -> String {
        self.child.log_tail(LOG_TAIL_BYTES)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// SIGKILL: no chance to flush, commit or leave the group.
    pub fn kill9(&mut self) -> Result<(), FixtureError> {
        self.child.kill9().map(|_| ())
    }

    /// SIGTERM, then SIGKILL after `timeout_ms`.
    pub fn terminate(&mut self, timeout_ms: u64) -> Result<Termination, FixtureError> {
        self.child.terminate(timeout_ms)
    }

    /// Starts it again (same file, state and log) after it exited or was
    /// killed; returns once its metrics endpoint answers.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.child.restart()?;
        self.boots += 1;
        self.await_metrics()
    }

    fn await_metrics(&mut self) -> Result<(), FixtureError> {
        let log_path = self.child.log_path().to_owned();
        let mut found = None;
        let mut exited = None;
        let waited = wait_until(
            &format!("{}'s metrics endpoint", self.name),
            COMPONENT_START_TIMEOUT_MS,
            || {
                found = metrics_addr_in_log(&log_path).filter(|addr| scrape(*addr).is_ok());
                exited = self.child.exit_status();
                found.is_some() || exited.is_some()
            },
        );
        if let Some(status) = exited.filter(|_| found.is_none()) {
            return Err(FixtureError::State(format!(
                "{} ({} in {}) exited at start ({status}); log tail:\n{}",
                self.name,
                self.kind.command(),
                self.dir.display(),
                self.log_tail()
            )));
        }
        waited.map_err(|error| with_log_tail(error, self.log_tail()))?;
        self.metrics_addr = found.expect("found above");
        Ok(())
    }
}

/// `soilstream registry serve` as a process on a fixed loopback port (so a
/// restart keeps its URL), its log in its directory.
#[derive(Debug)]
pub struct RegistryComponent {
    child: ChildProcess,
    url: String,
    boots: u32,
}

/// What the registry prints once it listens.
const REGISTRY_LISTENING: &str = "listening on ";

impl RegistryComponent {
    /// Starts the registry on `127.0.0.1:port` over `dir/data`.
    pub fn start(program: &Path, dir: &Path, port: u16) -> Result<Self, FixtureError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| FixtureError::io(format!("creating {}", dir.display()), e))?;
        let spec = ChildSpec::new(program, dir.join("registry.log"))
            .args(["registry", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir.join("data"))
            .env("SOILSTREAM_LOG", "info");
        let child = ChildProcess::spawn(spec)?;
        let mut registry = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            boots: 1,
        };
        registry.await_listening()?;
        Ok(registry)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts so far.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) -> Result<(), FixtureError> {
        self.child.kill9().map(|_| ())
    }

    /// SIGTERM, then SIGKILL after `timeout_ms`.
    pub fn terminate(&mut self, timeout_ms: u64) -> Result<Termination, FixtureError> {
        self.child.terminate(timeout_ms)
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.child.restart()?;
        self.boots += 1;
        self.await_listening()
    }

    /// The last bytes of its log.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(LOG_TAIL_BYTES)
    }

    fn await_listening(&mut self) -> Result<(), FixtureError> {
        let log_path = self.child.log_path().to_owned();
        let mut exited = None;
        let waited = wait_until("the registry to listen", COMPONENT_START_TIMEOUT_MS, || {
            exited = self.child.exit_status();
            exited.is_some()
                || std::fs::read_to_string(&log_path).is_ok_and(|log| {
                    log.rfind(crate::process::START_BANNER)
                        .is_some_and(|at| log[at..].contains(REGISTRY_LISTENING))
                })
        });
        if let Some(status) = exited {
            return Err(FixtureError::State(format!(
                "the registry exited at start ({status}); log tail:\n{}",
                self.log_tail()
            )));
        }
        waited.map_err(|error| with_log_tail(error, self.log_tail()))
    }
}

/// A timeout with the component's log tail attached (other errors as they are).
fn with_log_tail(error: FixtureError, log_tail: String) -> FixtureError {
    match error {
        FixtureError::Timeout { what, timeout_ms, .. } => FixtureError::Timeout {
            what,
            timeout_ms,
            log_tail,
        },
        other => other,
    }
}
