//! The archive's object store as a turmoil host: the unchanged
//! [`DiskArchiveStore`] (objects as files on a [`SimDisk`]) behind a small
//! request/response protocol on simulated TCP, and [`SimStoreClient`], the
//! [`ArchiveStore`] seam over that protocol.
//!
//! It plays the part S3 plays in the real world: a remote service the
//! archive instances share, reached over a network that can fail. A put is
//! answered only after the object is durable on the host's disk (data and
//! directory entry synced), so a power cut of the host (`Sim::crash`) loses
//! only unanswered puts, and with the world's `block_size` those may be
//! torn: a concurrent put's directory sync can make a half-written object's
//! entry durable. A put whose answer was lost (the archive crashed, or the
//! link went down) may or may not have happened: the archive's protocol
//! must cope with both, as it must with S3.
//!
//! Frames are the broker protocol's ([`crate::protocol`]: length, CRC-32C,
//! correlation id, postcard payload) with their own message types.

use crate::disk::{DiskFaults, SimDisk};
use crate::protocol::{self, ProtocolError};
use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use soilstream::archive::store::{ArchiveStore, DiskArchiveStore, StoreError, StoredObject};
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use turmoil::net::{TcpListener, TcpStream};

/// The store's port (S3-compatible servers often use 9000).
pub const STORE_DEFAULT_PORT: u16 = 9000;
/// Where the store keeps its objects on the host's disk.
pub const STORE_DEFAULT_DATA_DIR: &str = "/objects";
/// Bound on one frame: the largest object plus headroom.
pub const STORE_MAX_FRAME_BYTES: u32 = 64 << 20;
/// Most connections served at once; more are refused.
pub const STORE_CONNECTIONS_MAX: usize = 64;

/// A request to the store host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// [`ArchiveStore::put_if_absent`].
    Put {
        /// Object path.
        path: String,
        /// Contents.
        bytes: Vec<u8>,
    },
    /// [`ArchiveStore::get`].
    Get {
        /// Object path.
        path: String,
    },
    /// [`ArchiveStore::list`].
    List {
        /// Path prefix.
        prefix: String,
    },
    /// [`ArchiveStore::delete`].
    Delete {
        /// Object path.
        path: String,
    },
}

/// Why a request failed, on the wire ([`StoreError`]'s kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreErrorKind {
    /// [`StoreError::AlreadyExists`].
    AlreadyExists,
    /// [`StoreError::NotFound`].
    NotFound,
    /// [`StoreError::Unavailable`].
    Unavailable,
    /// [`StoreError::Other`].
    Other,
}

/// The store host's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreResponse {
    /// A put or delete succeeded.
    Done,
    /// A get's object.
    Object(Vec<u8>),
    /// A list's objects: path and size in bytes, sorted by path.
    Listed(Vec<(String, u64)>),
    /// The request failed.
    Failed {
        /// Kind.
        kind: StoreErrorKind,
        /// The store's message.
        message: String,
    },
}

impl StoreResponse {
    fn failed(error: StoreError) -> Self {
        let (kind, message) = match error {
            StoreError::AlreadyExists(m) => (StoreErrorKind::AlreadyExists, m),
            StoreError::NotFound(m) => (StoreErrorKind::NotFound, m),
            StoreError::Unavailable(m) => (StoreErrorKind::Unavailable, m),
            StoreError::Other(m) => (StoreErrorKind::Other, m),
        };
        StoreResponse::Failed { kind, message }
    }
}

/// How the store host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHostConfig {
    /// Port it listens on.
    pub port: u16,
    /// Directory of the objects on the host's disk.
    pub data_dir: PathBuf,
    /// A connection idle this long is closed, ms.
    pub idle_timeout_ms: u64,
}

impl Default for StoreHostConfig {
    fn default() -> Self {
        Self {
            port: STORE_DEFAULT_PORT,
            data_dir: PathBuf::from(STORE_DEFAULT_DATA_DIR),
            idle_timeout_ms: 600_000,
        }
    }
}

/// What the store host did, kept across its restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHostStatus {
    /// Starts so far.
    pub boots: u32,
    /// Requests answered, by kind: put, get, list, delete.
    pub requests: [u64; 4],
    /// Puts refused because the object existed.
    pub puts_refused: u64,
    /// Starts that failed (store directory or listener), with the error.
    pub failures: Vec<String>,
}

/// The store host: configuration and the handles that survive restarts.
#[derive(Debug, Clone)]
pub struct StoreHost {
    /// Configuration.
    pub config: StoreHostConfig,
    /// Faults of the host's disk.
    pub disk_faults: DiskFaults,
    status: Rc<RefCell<StoreHostStatus>>,
}

impl StoreHost {
    /// A store host whose disk faults draw from a stream seeded with
    /// `disk_seed`.
    pub fn new(config: StoreHostConfig, disk_seed: u64) -> Self {
        Self {
            config,
            disk_faults: DiskFaults::new(disk_seed),
            status: Rc::new(RefCell::new(StoreHostStatus::default())),
        }
    }

    /// What the host did so far.
    pub fn status(&self) -> StoreHostStatus {
        self.status.borrow().clone()
    }

    /// The host software for `Sim::host`: each call (each start or bounce)
    /// runs [`StoreHost::run`] on clones of the handles.
    pub fn software(&self) -> impl Fn() -> LocalBoxFuture<'static, turmoil::Result> + 'static {
        let host = self.clone();
        move || {
            let host = host.clone();
            Box::pin(host.run())
        }
    }

    /// Opens the object directory on the host's disk and serves until the
    /// host stops. Must run inside a turmoil host.
    pub async fn run(self) -> turmoil::Result {
        self.status.borrow_mut().boots += 1;
        let disk = Rc::new(SimDisk::new(self.disk_faults.clone()));
        let store = match DiskArchiveStore::new(disk, &self.config.data_dir) {
            Ok(store) => Rc::new(store),
            Err(error) => {
                self.status
                    .borrow_mut()
                    .failures
                    .push(format!("cannot open {}: {error}", self.config.data_dir.display()));
                return Ok(());
            }
        };
        let listener = match TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.config.port)).await {
            Ok(listener) => listener,
            Err(error) => {
                self.status
                    .borrow_mut()
                    .failures
                    .push(format!("cannot listen on port {}: {error}", self.config.port));
                return Ok(());
            }
        };
        let connections = Rc::new(Cell::new(0_usize));
        loop {
            let (stream, peer) = listener.accept().await?;
            if connections.get() >= STORE_CONNECTIONS_MAX {
                tracing::warn!(%peer, "store connection refused: too many connections");
                continue;
            }
            connections.set(connections.get() + 1);
            let connections = connections.clone();
            let store = store.clone();
            let status = self.status.clone();
            let idle_ms = self.config.idle_timeout_ms;
            tokio::task::spawn_local(async move {
                if let Err(error) = serve_connection(stream, &store, &status, idle_ms).await {
                    tracing::debug!(%peer, %error, "store connection closed");
                }
                connections.set(connections.get().saturating_sub(1));
            });
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    store: &DiskArchiveStore,
    status: &RefCell<StoreHostStatus>,
    idle_ms: u64,
) -> Result<(), ProtocolError> {
    let idle = Duration::from_millis(idle_ms);
    loop {
        let frame = match tokio::time::timeout(idle, protocol::read_frame(&mut stream, STORE_MAX_FRAME_BYTES))
            .await
        {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(frame))) => frame,
            Ok(Err(error)) => return Err(error),
        };
        let request: StoreRequest = protocol::decode(&frame.payload)?;
        let response = apply(store, status, request).await;
        let payload = protocol::encode(&response)?;
        protocol::write_frame(&mut stream, frame.correlation_id, &payload, STORE_MAX_FRAME_BYTES).await?;
    }
}

async fn apply(
    store: &DiskArchiveStore,
    status: &RefCell<StoreHostStatus>,
    request: StoreRequest,
) -> StoreResponse {
    let (kind, result) = match request {
        StoreRequest::Put { path, bytes } => (
            0,
            store
                .put_if_absent(&path, bytes)
                .await
                .map(|()| StoreResponse::Done),
        ),
        StoreRequest::Get { path } => (1, store.get(&path).await.map(StoreResponse::Object)),
        StoreRequest::List { prefix } => (
            2,
            store.list(&prefix).await.map(|objects| {
                StoreResponse::Listed(objects.into_iter().map(|o| (o.path, o.size_bytes)).collect())
            }),
        ),
        StoreRequest::Delete { path } => (3, store.delete(&path).await.map(|()| StoreResponse::Done)),
    };
    let mut status = status.borrow_mut();
    status.requests[kind] += 1;
    match result {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, StoreError::AlreadyExists(_)) {
                status.puts_refused += 1;
            }
            StoreResponse::failed(error)
        }
    }
}

/// How a [`SimStoreClient`] reaches the store host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreClientConfig {
    /// The store host's name.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Timeout of one request, ms.
    pub request_timeout_ms: u64,
}

impl StoreClientConfig {
    /// Defaults for the store at `host`.
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_string(),
            port: STORE_DEFAULT_PORT,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// The [`ArchiveStore`] seam over simulated TCP to a [`StoreHost`]. One
/// connection is kept between requests; any transport failure drops it
/// and reports [`StoreError::Unavailable`] (the request may or may not
/// have been applied). Must be used inside a turmoil host or client.
pub struct SimStoreClient {
    config: StoreClientConfig,
    connection: RefCell<Option<TcpStream>>,
    next_correlation_id: Cell<u64>,
}

impl SimStoreClient {
    /// A client (connects on first use).
    pub fn new(config: StoreClientConfig) -> Self {
        Self {
            config,
            connection: RefCell::new(None),
            next_correlation_id: Cell::new(1),
        }
    }

    async fn call(&self, request: StoreRequest) -> Result<StoreResponse, StoreError> {
        let address = format!("{}:{}", self.config.host, self.config.port);
        let unavailable = |why: String| StoreError::Unavailable(format!("store {address}: {why}"));
        // Taken out for the call: a concurrent call opens its own.
        let taken = self.connection.borrow_mut().take();
        let mut stream = match taken {
            Some(stream) => stream,
            None => {
                let connect = TcpStream::connect((self.config.host.as_str(), self.config.port));
                match tokio::time::timeout(Duration::from_millis(self.config.connect_timeout_ms), connect)
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return Err(unavailable(format!("cannot connect: {error}"))),
                    Err(_) => {
                        return Err(unavailable(format!(
                            "no answer to connect within {} ms",
                            self.config.connect_timeout_ms
                        )));
                    }
                }
            }
        };
        let correlation_id = self.next_correlation_id.get();
        self.next_correlation_id.set(correlation_id + 1);
        let payload = protocol::encode(&request).map_err(|e| StoreError::Other(e.to_string()))?;
        let exchange = async {
            protocol::write_frame(&mut stream, correlation_id, &payload, STORE_MAX_FRAME_BYTES).await?;
            let frame = protocol::read_frame(&mut stream, STORE_MAX_FRAME_BYTES)
                .await?
                .ok_or(ProtocolError::Truncated)?;
            if frame.correlation_id != correlation_id {
                return Err(ProtocolError::Decode(format!(
                    "response id {} does not answer request {correlation_id}",
                    frame.correlation_id
                )));
            }
            protocol::decode::<StoreResponse>(&frame.payload)
        };
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let response = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(unavailable(error.to_string())),
            Err(_) => {
                return Err(unavailable(format!(
                    "no answer within {} ms",
                    self.config.request_timeout_ms
                )));
            }
        };
        *self.connection.borrow_mut() = Some(stream);
        match response {
            StoreResponse::Failed { kind, message } => Err(match kind {
                StoreErrorKind::AlreadyExists => StoreError::AlreadyExists(message),
                StoreErrorKind::NotFound => StoreError::NotFound(message),
                StoreErrorKind::Unavailable => StoreError::Unavailable(message),
                StoreErrorKind::Other => StoreError::Other(message),
            }),
            other => Ok(other),
        }
    }
}

fn unexpected(response: &StoreResponse) -> StoreError {
    StoreError::Other(format!("the store answered with {response:?}"))
}

impl ArchiveStore for SimStoreClient {
    fn put_if_absent<'a>(
        &'a self,
        path: &'a str,
        bytes: Vec<u8>,
    ) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self
                .call(StoreRequest::Put {
                    path: path.to_string(),
                    bytes,
                })
                .await?
            {
                StoreResponse::Done => Ok(()),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn get<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            match self
                .call(StoreRequest::Get {
                    path: path.to_string(),
                })
                .await?
            {
                StoreResponse::Object(bytes) => Ok(bytes),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> LocalBoxFuture<'a, Result<Vec<StoredObject>, StoreError>> {
        Box::pin(async move {
            match self
                .call(StoreRequest::List {
                    prefix: prefix.to_string(),
                })
                .await?
            {
                StoreResponse::Listed(objects) => Ok(objects
                    .into_iter()
                    .map(|(path, size_bytes)| StoredObject { path, size_bytes })
                    .collect()),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn delete<'a>(&'a self, path: &'a str) -> LocalBoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self
                .call(StoreRequest::Delete {
                    path: path.to_string(),
                })
                .await?
            {
                StoreResponse::Done => Ok(()),
                other => Err(unexpected(&other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        for request in [
            StoreRequest::Put {
                path: "a/b".into(),
                bytes: vec![0, 1, 255],
            },
            StoreRequest::Get { path: "a/b".into() },
            StoreRequest::List { prefix: "a/".into() },
            StoreRequest::Delete { path: "a/b".into() },
        ] {
            let bytes = protocol::encode(&request).unwrap();
            assert_eq!(protocol::decode::<StoreRequest>(&bytes).unwrap(), request);
        }
        let failed = StoreResponse::failed(StoreError::AlreadyExists("x".into()));
        let bytes = protocol::encode(&failed).unwrap();
        assert_eq!(protocol::decode::<StoreResponse>(&bytes).unwrap(), failed);
        assert!(protocol::decode::<StoreRequest>(&[9, 9, 9]).is_err());
    }

    /// The client keeps the store contract through the host, survives the
    /// host's power cut for acknowledged puts, and reports an unreachable
    /// host as unavailable.
    #[test]
    fn the_store_host_serves_the_contract_over_simulated_tcp() {
        let mut sim = turmoil::Builder::new().build();
        let host = StoreHost::new(StoreHostConfig::default(), 7);
        sim.host("store", host.software());
        let outcome: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
        {
            let outcome = outcome.clone();
            sim.client("archive", async move {
                let client = SimStoreClient::new(StoreClientConfig::new("store"));
                client
                    .put_if_absent("t/x.parquet", b"one".to_vec())
                    .await
                    .unwrap();
                let again = client.put_if_absent("t/x.parquet", b"two".to_vec()).await;
                outcome.borrow_mut().push(format!("{again:?}"));
                let listed = client.list("t/").await.unwrap();
                outcome.borrow_mut().push(format!("{listed:?}"));
                client.delete("t/none").await.unwrap();
                let missing = client.get("t/none").await;
                outcome.borrow_mut().push(format!("{missing:?}"));
                Ok(())
            });
        }
        sim.run().unwrap();
        sim.crash("store");
        sim.bounce("store");
        {
            let outcome = outcome.clone();
            sim.client("reader", async move {
                let client = SimStoreClient::new(StoreClientConfig::new("store"));
                let bytes = client.get("t/x.parquet").await.unwrap();
                outcome
                    .borrow_mut()
                    .push(String::from_utf8_lossy(&bytes).into_owned());
                Ok(())
            });
        }
        sim.run().unwrap();
        let outcome = outcome.borrow();
        assert!(outcome[0].contains("AlreadyExists"), "{}", outcome[0]);
        assert!(outcome[1].contains("t/x.parquet") && outcome[1].contains("size_bytes: 3"));
        assert!(outcome[2].contains("NotFound"), "{}", outcome[2]);
        assert_eq!(outcome[3], "one");
        assert_eq!(host.status().boots, 2);
    }

    #[test]
    fn an_unreachable_store_is_unavailable() {
        let mut sim = turmoil::Builder::new().build();
        let host = StoreHost::new(StoreHostConfig::default(), 7);
        sim.host("store", host.software());
        sim.host("other", || async {
            std::future::pending::<turmoil::Result>().await
        });
        let error: Rc<RefCell<Option<StoreError>>> = Rc::new(RefCell::new(None));
        {
            let error = error.clone();
            sim.client("archive", async move {
                turmoil::partition("archive", "store");
                let mut config = StoreClientConfig::new("store");
                config.connect_timeout_ms = 1_000;
                let client = SimStoreClient::new(config);
                *error.borrow_mut() = client.get("t/x").await.err();
                Ok(())
            });
        }
        sim.run().unwrap();
        assert!(
            matches!(error.borrow().as_ref(), Some(StoreError::Unavailable(_))),
            "{:?}",
            error.borrow()
        );
    }
}
