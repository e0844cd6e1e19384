//! The error type of every fixture.

/// Why a fixture operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The `tansu` binary could not be found or run.
    #[error("{detail}; {hint}")]
    TansuMissing {
        /// What was looked for and where.
        detail: String,
        /// How to install it.
        hint: &'static str,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("sending {signal} to process {pid}: {reason}")]
    Signal {
        /// Signal name.
        signal: &'static str,
        /// Target process (or process group) id.
        pid: i32,
        /// The OS error.
        reason: String,
    },
    /// A condition was not met in time.
    #[error("timed out after {timeout_ms} ms waiting for {what}{}", log_suffix(.log_tail))]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long, in ms.
        timeout_ms: u64,
        /// The end of the relevant log file, if any.
        log_tail: String,
    },
    /// The broker process exited while it was expected to run.
    #[error("the broker exited ({status}){}", log_suffix(.log_tail))]
    BrokerExited {
        /// Exit status as text.
        status: String,
        /// The end of the broker's log.
        log_tail: String,
    },
    /// A Kafka client or admin operation failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The operation does not fit the fixture's current state.
    #[error("{0}")]
    State(String),
}

fn log_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; log tail:\n{tail}")
    }
}

impl FixtureError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
