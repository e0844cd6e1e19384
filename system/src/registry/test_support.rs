//! Helpers for tests that run the registry service in-process.

use super::api::{ApiLimits, open_router, serve};
use super::client::{HttpRegistryClient, HttpRegistryClientConfig, RawResponse, TcpConnector};
use super::store::StoreLimits;
use crate::disk::StdDisk;
use hyper::Method;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A registry service on 127.0.0.1 with an ephemeral port.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a service over the store in `dir`.
    pub(crate) async fn start(dir: &Path, store_limits: StoreLimits, api_limits: ApiLimits) -> Self {
        let (router, _) = open_router(StdDisk, dir, store_limits, api_limits).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a service with default limits.
    pub(crate) async fn start_default(dir: &Path) -> Self {
        Self::start(dir, StoreLimits::default(), ApiLimits::default()).await
    }

    /// The base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client with a short timeout.
    pub(crate) fn client(&self) -> HttpRegistryClient<TcpConnector> {
        let config = HttpRegistryClientConfig {
            request_timeout: Duration::from_secs(5),
            ..HttpRegistryClientConfig::default()
        };
        HttpRegistryClient::new(TcpConnector, &self.url(), config).expect("client")
    }

    /// Shuts the service down and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

/// Sends a request and returns (status, JSON body), asserting the registry
/// content type.
pub(crate) async fn call(
    client: &HttpRegistryClient<TcpConnector>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let RawResponse {
        status,
        content_type,
        body,
    } = client
        .send(method.clone(), path, body.as_ref())
        .await
        .expect("request");
    assert_eq!(
        content_type.as_deref(),
        Some(super::api::CONTENT_TYPE_V1),
        "{method} {path}"
    );
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {body:?}"));
    (status.as_u16(), value)
}

/// Writes raw bytes to the service and returns everything it answers until
/// it closes the connection (requests are sent with `Connection: close`).
pub(crate) async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}
