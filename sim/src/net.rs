//! Adapters that let soilstream's network code run on turmoil's simulated
//! TCP unchanged.
//!
//! - [`SimListener`]: a turmoil [`TcpListener`] as an axum
//!   [`Listener`], so a service built for `axum::serve` (the schema registry's
//!   `serve`) runs as a turmoil host;
//! - [`SimConnector`]: turmoil [`TcpStream`]s as the registry client's
//!   [`Connector`], so [`soilstream::registry::HttpRegistryClient`] talks to
//!   a simulated host by name.
//!
//! Both must be used inside a turmoil host or client: turmoil finds the
//! simulated network through the running host.

use axum::serve::Listener;
use futures::future::LocalBoxFuture;
use soilstream::registry::Connector;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use turmoil::net::{TcpListener, TcpStream};

/// Pause after a failed `accept` before the next one, so that a listener
/// whose accepts keep failing does not spin the simulated host.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// A turmoil TCP listener as an axum [`Listener`].
///
/// axum's contract is that `accept` never fails: errors are the listener's
/// to handle. A failed accept (a connection reset before it was taken, say)
/// is logged and retried after [`ACCEPT_RETRY_DELAY`].
pub struct SimListener {
    inner: TcpListener,
}

impl std::fmt::Debug for SimListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimListener")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish()
    }
}

impl SimListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }

    /// Binds a listener on every address of the current host at `port`.
    pub async fn bind(port: u16) -> io::Result<Self> {
        let inner = TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await?;
        Ok(Self::new(inner))
    }
}

impl Listener for SimListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(error) => {
                    tracing::debug!(%error, "simulated accept failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Opens turmoil TCP streams to `host:port`, where `host` is a turmoil host
/// name (or an address turmoil assigned).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConnector;

/// Splits `host:port`; the port is what follows the last `:`.
pub fn split_authority(authority: &str) -> io::Result<(&str, u16)> {
    authority
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("expected host:port, got {authority:?}"),
            )
        })
}

impl Connector for SimConnector {
    type Stream = TcpStream;

    fn connect<'a>(&'a self, authority: &'a str) -> LocalBoxFuture<'a, io::Result<Self::Stream>> {
        Box::pin(async move {
            let (host, port) = split_authority(authority)?;
            TcpStream::connect((host, port)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_at_the_last_colon() {
        assert_eq!(split_authority("registry:8081").unwrap(), ("registry", 8081));
        for bad in [
            "registry",
            "registry:",
            ":8081",
            "registry:http",
            "registry:70000",
        ] {
            assert_eq!(
                split_authority(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }
}
