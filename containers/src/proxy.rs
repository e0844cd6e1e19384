//! A TCP fault proxy on loopback, between clients and one target.
//!
//! Modes (switched at any time, from any thread):
//!
//! - [`ProxyMode::Pass`]: bytes are forwarded both ways, after the configured
//!   per-direction latency (order is kept; each chunk is held back by the
//!   latency in force when it was read).
//! - [`ProxyMode::Cut`]: every open connection is reset (RST, both sides) and
//!   new connections are accepted and reset at once, until restored. This is
//!   a link that fails loudly.
//! - [`ProxyMode::Blackhole`]: connections are accepted but nothing is
//!   forwarded or answered; bytes read from either side are discarded. This
//!   is a link that fails silently: clients notice only through their own
//!   timeouts. A connection that lost bytes this way can never carry its
//!   protocol again (its byte stream has a hole), so it keeps swallowing after
//!   restore until its client gives up on it; connections opened after the
//!   restore pass normally. A connection that stayed idle during the
//!   blackhole resumes forwarding.
//!
//! [`FaultProxy::restore`] returns to `Pass` with no latency.
//!
//! The proxy runs a current-thread tokio runtime on its own thread, so
//! synchronous test code can drive it; dropping it stops the thread and
//! closes every connection.

use crate::FixtureError;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// How long the proxy waits to connect to the target before resetting the
/// client's connection, in ms.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// How long [`FaultProxy::cut`] waits for open connections to be reset, in ms.
const CUT_SETTLE_TIMEOUT_MS: u64 = 5_000;

/// Read buffer per direction and connection, in bytes.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks held per direction while they wait out the latency.
const DELAY_QUEUE_CHUNKS: usize = 256;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward (with the configured latency).
    Pass,
    /// Reset every connection; refuse new ones.
    Cut,
    /// Accept, swallow, never answer.
    Blackhole,
}

/// Counters of what the proxy did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and served (forwarded or blackholed).
    pub accepted_connections: u64,
    /// Connections reset at accept because the proxy was cut or the target
    /// was unreachable.
    pub refused_connections: u64,
    /// Open connections reset by a cut.
    pub reset_connections: u64,
    /// Connections currently open.
    pub active_connections: u64,
    /// Bytes forwarded from clients to the target.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target to clients.
    pub bytes_to_client: u64,
    /// Bytes discarded by the blackhole, both directions.
    pub bytes_swallowed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProxyState {
    mode: ProxyMode,
    /// Incremented by every cut: connections older than the current
    /// generation are reset.
    cut_generation: u64,
    latency_to_target_ms: u64,
    latency_to_client_ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    active: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
    bytes_swallowed: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    state: watch::Sender<ProxyState>,
    target: Mutex<SocketAddr>,
    counters: Counters,
}

impl Shared {
    fn state(&self) -> ProxyState {
        *self.state.borrow()
    }

    fn target(&self) -> SocketAddr {
        match self.target.lock() {
            Ok(target) => *target,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

/// A running fault proxy. See the module docs.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> Result<Self, FixtureError> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| FixtureError::io("binding the fault proxy", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| FixtureError::io("reading the fault proxy address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| FixtureError::io("making the proxy listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FixtureError::io("building the fault proxy runtime", e))?;
        let (state, _) = watch::channel(ProxyState {
            mode: ProxyMode::Pass,
            cut_generation: 0,
            latency_to_target_ms: 0,
            latency_to_client_ms: 0,
        });
        let shared = Arc::new(Shared {
            state,
            target: Mutex::new(target),
            counters: Counters::default(),
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "fault proxy cannot listen");
                            return;
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = shutdown_rx => {}
                        _ = accept_loop(listener, thread_shared) => {}
                    }
                });
            })
            .map_err(|e| FixtureError::io("starting the fault proxy thread", e))?;
        tracing::debug!(%addr, %target, "fault proxy started");
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.shared.target()
    }

    /// Forwards new connections to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        match self.shared.target.lock() {
            Ok(mut current) => *current = target,
            Err(poisoned) => *poisoned.into_inner() = target,
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.state().mode
    }

    /// The current latencies `(to target, to client)`, in ms.
    pub fn latency_ms(&self) -> (u64, u64) {
        let state = self.shared.state();
        (state.latency_to_target_ms, state.latency_to_client_ms)
    }

    /// Counters since start.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted_connections: c.accepted.load(Ordering::Relaxed),
            refused_connections: c.refused.load(Ordering::Relaxed),
            reset_connections: c.reset.load(Ordering::Relaxed),
            active_connections: c.active.load(Ordering::Relaxed),
            bytes_to_target: c.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
            bytes_swallowed: c.bytes_swallowed.load(Ordering::Relaxed),
        }
    }

    /// Resets every open connection and refuses new ones until
    /// [`restore`](Self::restore) or another mode. Returns once every
    /// connection open at the cut has been reset.
    pub fn cut(&self) -> Result<(), FixtureError> {
        self.shared.state.send_modify(|s| {
            s.mode = ProxyMode::Cut;
            s.cut_generation += 1;
        });
        tracing::info!(proxy = %self.addr, "proxy: cut");
        crate::wait_until(
            "the proxy's connections to be reset",
            CUT_SETTLE_TIMEOUT_MS,
            || self.shared.counters.active.load(Ordering::Relaxed) == 0,
        )
    }

    /// Swallows all traffic (see the module docs).
    pub fn blackhole(&self) {
        self.shared.state.send_modify(|s| s.mode = ProxyMode::Blackhole);
        tracing::info!(proxy = %self.addr, "proxy: blackhole");
    }

    /// Holds back every chunk by `to_target_ms` on its way to the target and
    /// by `to_client_ms` on its way back.
    pub fn set_latency_ms(&self, to_target_ms: u64, to_client_ms: u64) {
        self.shared.state.send_modify(|s| {
            s.latency_to_target_ms = to_target_ms;
            s.latency_to_client_ms = to_client_ms;
        });
        tracing::info!(proxy = %self.addr, to_target_ms, to_client_ms, "proxy: latency");
    }

    /// Back to forwarding, with no latency.
    pub fn restore(&self) {
        self.shared.state.send_modify(|s| {
            s.mode = ProxyMode::Pass;
            s.latency_to_target_ms = 0;
            s.latency_to_client_ms = 0;
        });
        tracing::info!(proxy = %self.addr, "proxy: restored");
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
            Err(error) => {
                // Out of descriptors or an aborted handshake: keep serving.
                tracing::warn!(%error, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Closes a socket with RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Decrements the open-connection count when a connection ends.
struct ActiveGuard<'a>(&'a Counters);

impl<'a> ActiveGuard<'a> {
    fn new(counters: &'a Counters) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves when a cut newer than `generation` happens (or the proxy stops).
async fn cut_after(mut state: watch::Receiver<ProxyState>, generation: u64) {
    loop {
        if state.borrow_and_update().cut_generation != generation {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

async fn serve_connection(mut client: TcpStream, shared: Arc<Shared>) {
    let counters = &shared.counters;
    let state = shared.state();
    if state.mode == ProxyMode::Cut {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    }
    let _ = client.set_nodelay(true);
    let cut = cut_after(shared.state.subscribe(), state.cut_generation);
    // A connection accepted during a blackhole never gets a target.
    let poisoned = AtomicBool::new(state.mode == ProxyMode::Blackhole);
    let mut upstream = None;
    if state.mode == ProxyMode::Pass {
        let target = shared.target();
        let connect = tokio::time::timeout(
            Duration::from_millis(CONNECT_TIMEOUT_MS),
            TcpStream::connect(target),
        );
        match connect.await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                upstream = Some(stream);
            }
            Ok(Err(error)) => {
                tracing::debug!(%target, %error, "fault proxy: target unreachable");
                counters.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
            Err(_elapsed) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
        }
    }
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let active = ActiveGuard::new(counters);
    let was_cut = {
        let (client_read, client_write) = client.split();
        let traffic = async {
            match upstream.as_mut() {
                Some(upstream) => {
                    let (upstream_read, upstream_write) = upstream.split();
                    tokio::select! {
                        _ = pump(client_read, upstream_write, Direction::ToTarget, &shared, &poisoned) => {}
                        _ = pump(upstream_read, client_write, Direction::ToClient, &shared, &poisoned) => {}
                    }
                }
                None => swallow(client_read, &shared).await,
            }
        };
        tokio::select! {
            biased;
            _ = cut => true,
            _ = traffic => false,
        }
    };
    if was_cut {
        counters.reset.fetch_add(1, Ordering::Relaxed);
        reset(client);
        if let Some(upstream) = upstream {
            reset(upstream);
        }
    }
    drop(active);
}

/// Reads from a blackholed connection that has no target, discarding.
async fn swallow(mut reader: ReadHalf<'_>, shared: &Shared) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                shared
                    .counters
                    .bytes_swallowed
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Moves bytes one way, honouring the mode and latency; ends when the reader
/// reaches EOF (after the queued bytes are written) or the writer fails.
async fn pump(
    mut reader: ReadHalf<'_>,
    mut writer: WriteHalf<'_>,
    direction: Direction,
    shared: &Shared,
    poisoned: &AtomicBool,
) {
    let counters = &shared.counters;
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(DELAY_QUEUE_CHUNKS);
    let read_side = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let state = shared.state();
            if state.mode == ProxyMode::Blackhole || poisoned.load(Ordering::Relaxed) {
                poisoned.store(true, Ordering::Relaxed);
                counters.bytes_swallowed.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            let latency_ms = match direction {
                Direction::ToTarget => state.latency_to_target_ms,
                Direction::ToClient => state.latency_to_client_ms,
            };
            let due = Instant::now() + Duration::from_millis(latency_ms);
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let write_side = async {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if poisoned.load(Ordering::Relaxed) {
                counters
                    .bytes_swallowed
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                continue;
            }
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            let forwarded = match direction {
                Direction::ToTarget => &counters.bytes_to_target,
                Direction::ToClient => &counters.bytes_to_client,
            };
            forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = writer.shutdown().await;
    };
    tokio::pin!(read_side, write_side);
    tokio::select! {
        _ = &mut write_side => {}
        _ = &mut read_side => write_side.await,
    }
}
