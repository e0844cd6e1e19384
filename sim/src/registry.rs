//! The schema registry as a turmoil host: the unchanged registry service
//! (`soilstream::registry::open_router` + `serve`) on a [`SimDisk`] and a
//! [`SimListener`].
//!
//! Its store is durable on the host's simulated disk: every change is synced
//! before it is answered, so a crash (`Sim::crash`) loses nothing that was
//! acknowledged, and a bounce replays the log. Ids stay stable across
//! restarts. Clients reach it with
//! [`soilstream::registry::HttpRegistryClient`] over [`crate::net::SimConnector`]
//! at `http://{host name}:{port}`.

use crate::disk::{DiskFaults, SimDisk};
use crate::net::SimListener;
use futures::future::LocalBoxFuture;
use soilstream::registry::store::OpenReport;
use soilstream::registry::{ApiLimits, StoreLimits, open_router, serve};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

/// The registry's port, as in Confluent's default.
pub const REGISTRY_DEFAULT_PORT: u16 = 8081;
/// Where the registry keeps its store on the host's disk.
pub const REGISTRY_DEFAULT_DATA_DIR: &str = "/registry";

/// How the registry host runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryHostConfig {
    /// Port it listens on.
    pub port: u16,
    /// Data directory of the store (absolute: simulated paths are).
    pub data_dir: PathBuf,
    /// Limits of the store.
    pub store_limits: StoreLimits,
    /// Limits of the HTTP layer.
    pub api_limits: ApiLimits,
}

impl Default for RegistryHostConfig {
    fn default() -> Self {
        Self {
            port: REGISTRY_DEFAULT_PORT,
            data_dir: PathBuf::from(REGISTRY_DEFAULT_DATA_DIR),
            store_limits: StoreLimits::default(),
            api_limits: ApiLimits::default(),
        }
    }
}

/// What the registry host did, kept across its restarts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryHostStatus {
    /// Starts so far (first start and every bounce).
    pub boots: u32,
    /// What the store's last successful open found.
    pub last_open: Option<OpenReport>,
    /// Starts whose store could not be opened or whose listener could not
    /// be bound, with the error; the host then stays down until bounced.
    pub failures: Vec<String>,
}

/// A registry host: its configuration and the handles that survive restarts.
#[derive(Debug, Clone)]
pub struct RegistryHost {
    /// Configuration.
    pub config: RegistryHostConfig,
    /// Faults of the host's disk.
    pub disk_faults: DiskFaults,
    status: Rc<RefCell<RegistryHostStatus>>,
}

impl RegistryHost {
    /// A registry host whose disk faults draw from a stream seeded with
    /// `disk_seed`.
    pub fn new(config: RegistryHostConfig, disk_seed: u64) -> Self {
        Self {
            config,
            disk_faults: DiskFaults::new(disk_seed),
            status: Rc::new(RefCell::new(RegistryHostStatus::default())),
        }
    }

    /// What the host did so far.
    pub fn status(&self) -> RegistryHostStatus {
        self.status.borrow().clone()
    }

    /// The host software for `Sim::host`: each call (each start or bounce)
    /// runs [`RegistryHost::run`] on clones of the handles.
    pub fn software(&self) -> impl Fn() -> LocalBoxFuture<'static, turmoil::Result> + 'static {
        let host = self.clone();
        move || {
            let host = host.clone();
            Box::pin(host.run())
        }
    }

    /// Opens the store from the host's disk and serves until the host stops.
    /// Must run inside a turmoil host. A store that cannot be opened is
    /// recorded in the status and the host stops (as the real service exits).
    pub async fn run(self) -> turmoil::Result {
        self.status.borrow_mut().boots += 1;
        let disk = SimDisk::new(self.disk_faults.clone());
        let opened = open_router(
            disk,
            &self.config.data_dir,
            self.config.store_limits,
            self.config.api_limits,
        );
        let router = match opened {
            Ok((router, report)) => {
                tracing::info!(?report, "registry started");
                self.status.borrow_mut().last_open = Some(report);
                router
            }
            Err(error) => {
                tracing::error!(%error, "registry store cannot be opened");
                self.status.borrow_mut().failures.push(error.to_string());
                return Ok(());
            }
        };
        let listener = match SimListener::bind(self.config.port).await {
            Ok(listener) => listener,
            Err(error) => {
                self.status
                    .borrow_mut()
                    .failures
                    .push(format!("cannot listen on port {}: {error}", self.config.port));
                return Ok(());
            }
        };
        serve(listener, router, std::future::pending()).await?;
        Ok(())
    }
}
