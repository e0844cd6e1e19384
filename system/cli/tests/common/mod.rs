//! Helpers shared by the CLI's integration suites: the registry service as a
//! process (here), the gateway as a process ([`gateway`]), the QA/QC
//! processor as a process and the checkers of its outputs ([`qaqc`]), the
//! real broker and the checker over its raw topic ([`broker`]), Confluent's
//! Python client ([`python`]) and log tails printed when a test fails
//! ([`logs`]).

#![allow(dead_code)] // each test binary uses a different part

pub mod broker;
pub mod gateway;
pub mod logs;
pub mod python;
pub mod qaqc;

use soilstream::registry::{HttpRegistryClient, HttpRegistryClientConfig, TcpConnector};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a registry process may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `soilstream registry serve` process.
pub struct RegistryProcess {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stderr_path: PathBuf,
}

impl RegistryProcess {
    /// Starts the registry on a free loopback port over `data`; its log goes
    /// to `stderr_path`.
    pub fn start(data: &Path, stderr_path: &Path) -> Self {
        Self::start_on("127.0.0.1:0", data, stderr_path)
    }

    /// Starts the registry listening on `listen` (e.g. `172.18.0.1:0`, the
    /// host side of a Docker network, for containers to reach it).
    pub fn start_on(listen: &str, data: &Path, stderr_path: &Path) -> Self {
        let stderr = std::fs::File::create(stderr_path).expect("create the stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_soilstream"))
            .args(["registry", "serve", "--listen", listen, "--data"])
            .arg(data)
            .env("SOILSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn soilstream");
        let stdout = child.stdout.take().expect("stdout");
        // Read the "listening on" line on a thread so that a process that
        // never prints it cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the process never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "registry did not start within {START_TIMEOUT:?}; stderr:\n{}",
                    read_to_string(stderr_path)
                );
            }
        };
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let status = child.wait().ok();
            panic!(
                "registry did not start (exit {status:?}), stdout {line:?}; stderr:\n{}",
                read_to_string(stderr_path)
            );
        };
        Self {
            url: url.to_owned(),
            child: Some(child),
            stderr_path: stderr_path.to_owned(),
        }
    }

    /// A client with a short timeout.
    pub fn client(&self) -> HttpRegistryClient<TcpConnector> {
        let config = HttpRegistryClientConfig {
            request_timeout: Duration::from_secs(5),
            ..HttpRegistryClientConfig::default()
        };
        HttpRegistryClient::new(TcpConnector, &self.url, config).expect("client")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_9(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Sends `signal` (e.g. `TERM`, `INT`) and waits up to `timeout` for the
    /// process to exit.
    pub fn signal_and_wait(mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "registry did not exit within {timeout:?} of SIG{signal}; stderr:\n{}",
                    read_to_string(&self.stderr_path)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far.
    pub fn stderr(&self) -> String {
        read_to_string(&self.stderr_path)
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A file's contents, or a note that it could not be read.
pub fn read_to_string(path: &Path) -> String {
    let mut text = String::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        Ok(_) => text,
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A record schema with one int field named `field`: distinct schemas for
/// tests that need many.
pub fn numbered_schema(field: &str) -> String {
    format!(r#"{{"type":"record","name":"T","fields":[{{"name":"{field}","type":"int"}}]}}"#)
}
