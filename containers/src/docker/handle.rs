//! One named container of a test session and its lifecycle: what the broker
//! and gateway fixtures share (kill, stop, start again, pause, partition,
//! logs, removal).

use super::{
    Container, ContainerLogs, ContainerStatus, DockerError, DockerNetwork, LOG_TAIL_LINES, block_on,
    container_status, log_tail_for_error, remove_container, remove_container_by_name, wait_until_stopped,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testcontainers::bollard::query_parameters::KillContainerOptionsBuilder;

/// How long a killed or stopped container may take to be reported stopped,
/// in ms.
const STOP_REPORT_TIMEOUT_MS: u64 = 10_000;

/// A container on a session's network, named before it exists.
///
/// Dropping it (or [`remove`](Self::remove)) force-removes the container,
/// whether or not it was ever started.
pub(crate) struct ContainerHandle {
    network: DockerNetwork,
    name: String,
    /// What the container is, for messages and logs ("broker").
    role: &'static str,
    container: Option<Arc<Container>>,
    removed: bool,
}

impl ContainerHandle {
    /// A handle for the container `name` on `network`, not started yet.
    pub(crate) fn new(network: &DockerNetwork, name: String, role: &'static str) -> Self {
        Self {
            network: network.clone(),
            name,
            role,
            container: None,
            removed: false,
        }
    }

    /// Records the started container.
    pub(crate) fn started(&mut self, container: Arc<Container>) {
        assert!(self.container.is_none(), "{} started twice", self.name);
        self.container = Some(container);
    }

    /// The container's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The container's id ("" before it started).
    pub(crate) fn id(&self) -> &str {
        self.container.as_ref().map_or("", |c| c.id())
    }

    /// The network the container is on.
    pub(crate) fn network(&self) -> &DockerNetwork {
        &self.network
    }

    /// A handle reading the container's logs.
    pub(crate) fn logs(&self) -> ContainerLogs {
        ContainerLogs::new(self.network.engine().client(), self.name.clone())
    }

    /// The last `lines` lines of the log (every run), or why they cannot be
    /// read.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        self.logs()
            .tail(lines)
            .unwrap_or_else(|e| format!("<cannot read the logs of {}: {e}>", self.name))
    }

    /// Whether the container runs (a paused one runs).
    pub(crate) fn is_running(&self) -> Result<bool, DockerError> {
        let docker = self.network.engine().client();
        let name = self.name.clone();
        block_on(async move { Ok(container_status(&docker, &name).await?.running) })
    }

    /// Polls `ready` every `poll_interval_ms` until it holds. Fails at once
    /// with [`DockerError::Exited`] (state and log tail) if the container
    /// stops running, and with [`DockerError::Timeout`] naming `what` after
    /// `timeout_ms`.
    pub(crate) fn wait_until(
        &self,
        what: &str,
        timeout_ms: u64,
        poll_interval_ms: u64,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), DockerError> {
        let docker = self.network.engine().client();
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let name = self.name.clone();
            let client = docker.clone();
            let status = block_on(async move { container_status(&client, &name).await })?;
            if !status.running {
                let name = self.name.clone();
                let client = docker.clone();
                let log_tail = block_on(async move { Ok(log_tail_for_error(&client, &name).await) })?;
                return Err(DockerError::Exited {
                    container: self.name.clone(),
                    status: status.to_string(),
                    log_tail,
                });
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DockerError::Timeout {
                    what: what.to_string(),
                    timeout_ms,
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(poll_interval_ms));
        }
    }

    /// SIGKILL, then waits until the engine reports the container stopped.
    /// The container stays for [`start_again`](Self::start_again).
    pub(crate) fn kill(&self) -> Result<(), DockerError> {
        let docker = self.network.engine().client();
        let name = self.name.clone();
        block_on(async move {
            docker
                .kill_container(
                    &name,
                    Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build()),
                )
                .await
                .map_err(|e| DockerError::api(format!("killing {name}"), e))?;
            wait_until_stopped(&docker, &name, STOP_REPORT_TIMEOUT_MS).await?;
            Ok(())
        })?;
        tracing::info!(container = %self.name, "{} container killed (SIGKILL)", self.role);
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `timeout_s` seconds; returns the state
    /// the container stopped in.
    pub(crate) fn stop(&self, timeout_s: u32) -> Result<ContainerStatus, DockerError> {
        let container = self.container()?;
        let docker = self.network.engine().client();
        let name = self.name.clone();
        let role = self.role;
        let timeout = i32::try_from(timeout_s).unwrap_or(i32::MAX);
        block_on(async move {
            container
                .stop_with_timeout(Some(timeout))
                .await
                .map_err(|e| DockerError::Testcontainers {
                    what: format!("stopping the {role}"),
                    source: e,
                })?;
            wait_until_stopped(&docker, &name, STOP_REPORT_TIMEOUT_MS).await
        })
    }

    /// Starts the same container again after a kill or stop (same mounts,
    /// ports and network). Refused while it runs.
    pub(crate) fn start_again(&self) -> Result<(), DockerError> {
        if self.is_running()? {
            return Err(DockerError::State(format!(
                "{} runs; kill or stop it before restarting",
                self.name
            )));
        }
        let container = self.container()?;
        let role = self.role;
        block_on(async move {
            container.start().await.map_err(|e| DockerError::Testcontainers {
                what: format!("starting the {role} again"),
                source: e,
            })
        })
    }

    /// Freezes the container (cgroup freezer).
    pub(crate) fn pause(&self) -> Result<(), DockerError> {
        let container = self.container()?;
        let role = self.role;
        block_on(async move {
            container.pause().await.map_err(|e| DockerError::Testcontainers {
                what: format!("pausing the {role}"),
                source: e,
            })
        })
    }

    /// Thaws a paused container.
    pub(crate) fn unpause(&self) -> Result<(), DockerError> {
        let container = self.container()?;
        let role = self.role;
        block_on(async move {
            container
                .unpause()
                .await
                .map_err(|e| DockerError::Testcontainers {
                    what: format!("unpausing the {role}"),
                    source: e,
                })
        })
    }

    /// Cuts the container off the network until [`reconnect`](Self::reconnect).
    pub(crate) fn disconnect(&self) -> Result<(), DockerError> {
        self.network.disconnect(&self.name)?;
        tracing::info!(container = %self.name, "{} container disconnected from the network", self.role);
        Ok(())
    }

    /// Connects the container to the network again.
    pub(crate) fn reconnect(&self) -> Result<(), DockerError> {
        self.network.connect(&self.name)?;
        tracing::info!(container = %self.name, "{} container reconnected to the network", self.role);
        Ok(())
    }

    /// Force-removes the container (or what exists of it under its name);
    /// later calls do nothing.
    pub(crate) fn remove(&mut self) {
        if std::mem::replace(&mut self.removed, true) {
            return;
        }
        let engine = self.network.engine().clone();
        match self.container.take() {
            Some(container) => remove_container(&engine, &self.name, container),
            None => {
                if let Err(error) = remove_container_by_name(&engine, &self.name) {
                    tracing::warn!(container = %self.name, %error, "removing the {} container", self.role);
                }
            }
        }
    }

    fn container(&self) -> Result<Arc<Container>, DockerError> {
        self.container
            .clone()
            .ok_or_else(|| DockerError::State(format!("{} was never started", self.name)))
    }
}

impl Drop for ContainerHandle {
    fn drop(&mut self) {
        self.remove();
    }
}
