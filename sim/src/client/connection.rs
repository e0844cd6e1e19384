//! One request/response connection to the broker.

use crate::protocol::{self, ProtocolError, Request, Response};
use std::time::Duration;
use turmoil::net::TcpStream;

/// Why a call failed; in every case the connection must be dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The connection could not be opened.
    #[error("connect to {address}: {reason}")]
    Connect {
        /// host:port.
        address: String,
        /// Why.
        reason: String,
    },
    /// No response in time.
    #[error("no response within {0} ms")]
    Timeout(u64),
    /// The stream failed or carried garbage.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// A response that does not answer the request.
    #[error("response id {got} does not match request id {expected}")]
    Mismatch {
        /// Request id.
        expected: u64,
        /// Response id.
        got: u64,
    },
}

/// An open connection; requests are sent one at a time.
pub(crate) struct Connection {
    stream: TcpStream,
    next_correlation_id: u64,
    max_frame_bytes: u32,
}

impl Connection {
    /// Connects within `timeout_ms`.
    pub(crate) async fn connect(
        host: &str,
        port: u16,
        timeout_ms: u64,
        max_frame_bytes: u32,
    ) -> Result<Self, CallError> {
        let address = format!("{host}:{port}");
        let connect = TcpStream::connect((host, port));
        let stream = match tokio::time::timeout(Duration::from_millis(timeout_ms), connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(CallError::Connect {
                    address,
                    reason: error.to_string(),
                });
            }
            Err(_) => {
                return Err(CallError::Connect {
                    address,
                    reason: format!("no answer within {timeout_ms} ms"),
                });
            }
        };
        Ok(Self {
            stream,
            next_correlation_id: 1,
            max_frame_bytes,
        })
    }

    /// Sends `request` and waits up to `timeout_ms` for its response.
    pub(crate) async fn call(&mut self, request: &Request, timeout_ms: u64) -> Result<Response, CallError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let payload = protocol::encode(request)?;
        let exchange = async {
            protocol::write_frame(&mut self.stream, correlation_id, &payload, self.max_frame_bytes).await?;
            let frame = protocol::read_frame(&mut self.stream, self.max_frame_bytes)
                .await?
                .ok_or(CallError::Closed)?;
            if frame.correlation_id != correlation_id {
                return Err(CallError::Mismatch {
                    expected: correlation_id,
                    got: frame.correlation_id,
                });
            }
            Ok(protocol::decode::<Response>(&frame.payload)?)
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout_ms)),
        }
    }
}
