//! One user-defined bridge network per test, and everything of the session
//! removed with it.

use super::{
    DockerEngine, DockerError, FIXTURE_LABEL, HOST_LABEL, PID_LABEL, SESSION_LABEL, block_on, host_name,
    is_not_found, session_labels, session_name,
};
use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use testcontainers::bollard::Docker;
use testcontainers::bollard::models::{
    EndpointSettings, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};

/// A user-defined bridge network created for one test, with a session name
/// that every container and volume of the test carries as a label.
///
/// Cloning shares it. When the last clone is dropped (the fixtures hold one
/// each), every container and volume with the session's label is
/// force-removed, then the network.
#[derive(Debug, Clone)]
pub struct DockerNetwork {
    inner: Arc<NetworkInner>,
}

#[derive(Debug)]
struct NetworkInner {
    engine: DockerEngine,
    session: String,
    name: String,
    id: String,
    gateway: Ipv4Addr,
    subnet: String,
    containers: AtomicU64,
}

impl DockerNetwork {
    /// Creates a network with a fresh session name and checks that its
    /// gateway address (the host's end of the bridge) is an address of this
    /// host, which the brokers' published ports need.
    ///
    /// First removes what sessions of dead processes on this host left
    /// behind: a test process killed by SIGKILL (or Ctrl-C) runs no
    /// destructor, and its containers would run on.
    pub fn create(engine: &DockerEngine) -> Result<Self, DockerError> {
        if let Err(error) = reap_orphans(engine) {
            tracing::warn!(%error, "removing what dead test processes left behind");
        }
        let session = session_name();
        let name = format!("{session}-net");
        let docker = engine.client();
        let labels: HashMap<String, String> = session_labels(&session).into_iter().collect();
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels),
            ..Default::default()
        };
        let created_name = name.clone();
        let (id, gateway, subnet) = block_on(async move {
            let created = docker
                .create_network(request)
                .await
                .map_err(|e| DockerError::api(format!("creating network {created_name}"), e))?;
            let inspected = docker
                .inspect_network(&created_name, None)
                .await
                .map_err(|e| DockerError::api(format!("inspecting network {created_name}"), e))?;
            let config = inspected
                .ipam
                .and_then(|ipam| ipam.config)
                .and_then(|configs| configs.into_iter().find(|c| c.gateway.is_some()));
            Ok((
                created.id,
                config.as_ref().and_then(|c| c.gateway.clone()),
                config.and_then(|c| c.subnet).unwrap_or_default(),
            ))
        })?;
        // From here on, dropping `inner` removes the network.
        let mut inner = NetworkInner {
            engine: engine.clone(),
            session,
            name,
            id,
            gateway: Ipv4Addr::UNSPECIFIED,
            subnet,
            containers: AtomicU64::new(0),
        };
        let gateway = gateway.ok_or_else(|| {
            DockerError::Unexpected(format!("network {} has no IPv4 gateway address", inner.name))
        })?;
        inner.gateway = gateway
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| {
                DockerError::Unexpected(format!(
                    "network {} has the gateway address {gateway:?}: {e}",
                    inner.name
                ))
            })?;
        TcpListener::bind((inner.gateway, 0)).map_err(|e| {
            DockerError::io(
                format!(
                    "binding the gateway address {} of network {}: the container fixtures need a \
                     Linux Docker engine on this host, whose bridge addresses are local",
                    inner.gateway, inner.name
                ),
                e,
            )
        })?;
        let network = Self {
            inner: Arc::new(inner),
        };
        tracing::info!(network = %network.name(), gateway = %network.gateway_ip(), subnet = %network.inner.subnet, "docker network created");
        Ok(network)
    }

    /// The network's name (`soilstream-<pid>-<n>-<nanos>-net`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The network's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The session name: the value of the `org.soilstream.session` label of
    /// everything created on this network.
    pub fn session(&self) -> &str {
        &self.inner.session
    }

    /// The host's address on the network (the bridge's gateway): reachable
    /// from the host and from every container on the network.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// The network's subnet, e.g. `172.18.0.0/16`.
    pub fn subnet(&self) -> &str {
        &self.inner.subnet
    }

    /// The engine the network lives in.
    pub fn engine(&self) -> &DockerEngine {
        &self.inner.engine
    }

    /// A TCP port on the gateway address that was free a moment ago.
    pub(crate) fn free_gateway_port(&self) -> Result<u16, DockerError> {
        let listener = TcpListener::bind((self.inner.gateway, 0))
            .map_err(|e| DockerError::io(format!("binding a free port on {}", self.inner.gateway), e))?;
        listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| DockerError::io("reading the bound port", e))
    }

    /// A fresh container name for `role` in this session.
    pub(crate) fn container_name(&self, role: &str) -> String {
        let n = self.inner.containers.fetch_add(1, Ordering::Relaxed);
        format!("{}-{role}-{n}", self.inner.session)
    }

    /// The labels every container and volume of the session carries.
    pub(crate) fn labels(&self) -> Vec<(String, String)> {
        session_labels(&self.inner.session)
    }

    /// Disconnects `container` from the network (force: also when it does
    /// not run).
    pub(crate) fn disconnect(&self, container: &str) -> Result<(), DockerError> {
        let docker = self.inner.engine.client();
        let network = self.inner.name.clone();
        let container = container.to_string();
        block_on(async move {
            docker
                .disconnect_network(
                    &network,
                    NetworkDisconnectRequest {
                        container: container.clone(),
                        force: Some(true),
                    },
                )
                .await
                .map_err(|e| DockerError::api(format!("disconnecting {container} from {network}"), e))
        })
    }

    /// Connects `container` to the network again (its name resolves again;
    /// its address may differ).
    pub(crate) fn connect(&self, container: &str) -> Result<(), DockerError> {
        let docker = self.inner.engine.client();
        let network = self.inner.name.clone();
        let container = container.to_string();
        block_on(async move {
            docker
                .connect_network(
                    &network,
                    NetworkConnectRequest {
                        container: container.clone(),
                        endpoint_config: Some(EndpointSettings::default()),
                    },
                )
                .await
                .map_err(|e| DockerError::api(format!("connecting {container} to {network}"), e))
        })
    }
}

impl Drop for NetworkInner {
    fn drop(&mut self) {
        let docker = self.engine.client();
        let session = self.session.clone();
        let network = self.name.clone();
        let swept = block_on(async move { sweep(&docker, &session, &network).await });
        match swept {
            Ok(()) => tracing::info!(network = %self.name, "docker network and its session removed"),
            Err(error) => tracing::warn!(network = %self.name, %error, "cleaning up the docker session"),
        }
    }
}

/// Force-removes every container and volume labelled with `session`, then
/// the network. Goes on after a failure and reports the first one.
async fn sweep(docker: &Docker, session: &str, network: &str) -> Result<(), DockerError> {
    let filter = format!("{SESSION_LABEL}={session}");
    let filters = HashMap::from([("label", vec![filter.as_str()])]);
    let mut first_error = None;
    let mut note = |error: DockerError| {
        tracing::warn!(%error, "docker clean-up");
        first_error.get_or_insert(error);
    };
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| DockerError::api(format!("listing the containers of session {session}"), e));
    match containers {
        Ok(containers) => {
            for id in containers.into_iter().filter_map(|c| c.id) {
                let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
                match docker.remove_container(&id, Some(options)).await {
                    Ok(()) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => note(DockerError::api(format!("removing container {id}"), error)),
                }
            }
        }
        Err(error) => note(error),
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::new().filters(&filters).build()))
        .await
        .map_err(|e| DockerError::api(format!("listing the volumes of session {session}"), e));
    match volumes {
        Ok(volumes) => {
            for volume in volumes.volumes.unwrap_or_default() {
                let options = RemoveVolumeOptionsBuilder::new().force(true).build();
                match docker.remove_volume(&volume.name, Some(options)).await {
                    Ok(()) => {}
                    Err(error) if is_not_found(&error) => {}
                    Err(error) => note(DockerError::api(
                        format!("removing volume {}", volume.name),
                        error,
                    )),
                }
            }
        }
        Err(error) => note(error),
    }
    match docker.remove_network(network).await {
        Ok(()) => {}
        Err(error) if is_not_found(&error) => {}
        Err(error) => note(DockerError::api(format!("removing network {network}"), error)),
    }
    first_error.map_or(Ok(()), Err)
}

/// Sweeps every session whose network says it belongs to a process of this
/// host that no longer exists. Sessions of other hosts (a shared remote
/// engine) and of live processes are left alone.
fn reap_orphans(engine: &DockerEngine) -> Result<(), DockerError> {
    let Some(this_host) = host_name() else {
        return Ok(());
    };
    let docker = engine.client();
    block_on(async move {
        let filter = format!("{FIXTURE_LABEL}=docker");
        let filters = HashMap::from([("label", vec![filter.as_str()])]);
        let networks = docker
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build()))
            .await
            .map_err(|e| DockerError::api("listing the fixtures' networks", e))?;
        for network in networks {
            let labels = network.labels.unwrap_or_default();
            let (Some(name), Some(session), Some(host), Some(pid)) = (
                network.name,
                labels.get(SESSION_LABEL),
                labels.get(HOST_LABEL),
                labels.get(PID_LABEL).and_then(|p| p.parse::<i32>().ok()),
            ) else {
                continue;
            };
            if host != &this_host || process_alive(pid) {
                continue;
            }
            tracing::info!(network = %name, pid, "removing the session of a dead test process");
            sweep(&docker, session, &name).await?;
        }
        Ok(())
    })
}

/// Whether process `pid` exists on this host (signal 0 probes without
/// sending anything; EPERM means it exists under another user).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 || u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        return true;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DockerAvailability;

    #[test]
    fn liveness_of_processes() {
        assert!(process_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!process_alive(pid), "a reaped child is gone");
    }

    #[test]
    fn sessions_of_dead_processes_are_removed_when_a_network_is_created() {
        let Some(engine) = DockerAvailability::detect()
            .engine_or_skip("reaper")
            .unwrap_or_else(|e| panic!("{e}"))
        else {
            return;
        };
        // A network and a volume as a test process killed with SIGKILL
        // leaves them: labelled with its pid and this host. The process is
        // still alive while they are made and checked (the other tests of
        // this binary create networks concurrently and would reap them at
        // once otherwise); it dies just before the network is created.
        let mut child = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        let dead_pid = child.id();
        let orphan = format!("{}-orphan", session_name());
        let mut labels: HashMap<String, String> = session_labels(&orphan).into_iter().collect();
        labels.insert(PID_LABEL.to_string(), dead_pid.to_string());
        let docker = engine.client();
        let (name, volume) = (format!("{orphan}-net"), format!("{orphan}-data"));
        {
            let (name, volume, labels) = (name.clone(), volume.clone(), labels.clone());
            block_on(async move {
                docker
                    .create_network(NetworkCreateRequest {
                        name,
                        driver: Some("bridge".into()),
                        labels: Some(labels.clone()),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| DockerError::api("creating the orphan network", e))?;
                docker
                    .create_volume(testcontainers::bollard::models::VolumeCreateRequest {
                        name: Some(volume),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| DockerError::api("creating the orphan volume", e))?;
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            engine.networks_labelled(SESSION_LABEL, &orphan).unwrap(),
            vec![name]
        );
        assert_eq!(
            engine.volumes_labelled(SESSION_LABEL, &orphan).unwrap(),
            vec![volume]
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // A live session next to it is kept.
        let live = DockerNetwork::create(&engine).unwrap();
        let network = DockerNetwork::create(&engine).unwrap();
        assert!(
            engine
                .networks_labelled(SESSION_LABEL, &orphan)
                .unwrap()
                .is_empty()
        );
        assert!(
            engine
                .volumes_labelled(SESSION_LABEL, &orphan)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            engine.networks_labelled(SESSION_LABEL, live.session()).unwrap(),
            vec![live.name().to_string()]
        );
        drop(network);
        drop(live);
    }
}
