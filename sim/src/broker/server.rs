//! The broker on a turmoil host: a TCP listener in front of [`BrokerCore`].
//!
//! One task per connection (`spawn_local`); each reads a frame, applies the
//! injected faults, hands the request to the core and writes the response.
//! Requests on one connection are answered in order. Idle connections are
//! closed after `idle_timeout_ms`; a frame that does not decode closes the
//! connection. A fetch with `max_wait_ms` waits (up to the configured bound)
//! until a produce appends or the wait ends. Under `IntervalMs` a task syncs
//! dirty partitions periodically; another expires consumer-group sessions
//! and ends overdue rebalances every `group_tick_ms`.
//!
//! ```no_run
//! use soilstream_sim::broker::{BrokerConfig, BrokerHost, TopicConfig};
//! let config = BrokerConfig::new(vec![TopicConfig { name: "raw".into(), partitions: 4 }]);
//! let broker = BrokerHost::new(config, 42).expect("valid config");
//! let mut sim = turmoil::Builder::new().build();
//! sim.host("broker", broker.software());
//! // Keep `broker.faults` and `broker.observer` to script and inspect it.
//! ```

use super::{BrokerConfig, BrokerCore, BrokerFaults, BrokerObserver, ConfigError, FlushPolicy};
use crate::digest::derive_seed;
use crate::disk::{DiskFaults, SimDisk};
use crate::protocol::{self, ProtocolError, Request, Response};
use futures::future::LocalBoxFuture;
use soilstream::disk::Disk;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use turmoil::net::{TcpListener, TcpStream};

/// Simulated time since the start of the simulation, in ms (0 outside a
/// host).
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Everything needed to run a broker as a turmoil host, and the handles the
/// scenario runner keeps.
#[derive(Debug, Clone)]
pub struct BrokerHost {
    /// Configuration.
    pub config: BrokerConfig,
    /// Faults of the broker host's disk.
    pub disk_faults: DiskFaults,
    /// Faults of the broker itself.
    pub faults: BrokerFaults,
    /// Read-only view of the running core.
    pub observer: BrokerObserver,
}

impl BrokerHost {
    /// A broker host whose fault streams derive from `seed`.
    pub fn new(config: BrokerConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            disk_faults: DiskFaults::new(derive_seed(seed, "broker-disk")),
            faults: BrokerFaults::new(derive_seed(seed, "broker-faults")),
            observer: BrokerObserver::new(),
        })
    }

    /// The host software for `Sim::host`: each call (each start or bounce)
    /// runs [`BrokerHost::run`] on clones of the handles.
    pub fn software(&self) -> impl Fn() -> LocalBoxFuture<'static, turmoil::Result> + 'static {
        let host = self.clone();
        move || {
            let host = host.clone();
            Box::pin(host.run())
        }
    }

    /// Recovers the broker from the host's disk and serves until the host
    /// stops. Must run inside a turmoil host.
    pub async fn run(self) -> turmoil::Result {
        let disk: Rc<dyn Disk> = Rc::new(SimDisk::new(self.disk_faults.clone()));
        let core = BrokerCore::open(self.config.clone(), disk, sim_now_ms());
        tracing::info!(stats = ?core.stats(), offline = ?core.offline_partitions(), "broker started");
        let core = Rc::new(RefCell::new(core));
        self.observer.attach(&core);
        let context = Rc::new(ServerContext {
            config: self.config.clone(),
            core: core.clone(),
            faults: self.faults.clone(),
            appended: Notify::new(),
            connections: Cell::new(0),
        });
        if let FlushPolicy::IntervalMs(interval_ms) = self.config.flush {
            let core = core.clone();
            let period = Duration::from_millis((interval_ms / 2).max(1));
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(period).await;
                    core.borrow_mut().on_tick(sim_now_ms());
                }
            });
        }
        {
            let core = core.clone();
            let period = Duration::from_millis(self.config.group_tick_ms);
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(period).await;
                    core.borrow_mut().tick_groups(sim_now_ms());
                }
            });
        }
        let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.config.port)).await?;
        loop {
            let (stream, peer) = listener.accept().await?;
            if context.connections.get() >= context.config.max_connections {
                tracing::warn!(%peer, "connection refused: too many connections");
                drop(stream);
                continue;
            }
            context.connections.set(context.connections.get() + 1);
            let context = context.clone();
            tokio::task::spawn_local(async move {
                let _guard = ConnectionGuard(context.clone());
                if let Err(error) = serve_connection(stream, &context).await {
                    tracing::debug!(%peer, %error, "connection closed");
                }
            });
        }
    }
}

struct ServerContext {
    config: BrokerConfig,
    core: Rc<RefCell<BrokerCore>>,
    faults: BrokerFaults,
    appended: Notify,
    connections: Cell<usize>,
}

struct ConnectionGuard(Rc<ServerContext>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let open = self.0.connections.get();
        debug_assert!(open > 0);
        self.0.connections.set(open.saturating_sub(1));
    }
}

async fn serve_connection(mut stream: TcpStream, context: &ServerContext) -> Result<(), ProtocolError> {
    let idle = Duration::from_millis(context.config.idle_timeout_ms);
    let max_frame_bytes = context.config.max_frame_bytes;
    loop {
        let frame = match tokio::time::timeout(idle, protocol::read_frame(&mut stream, max_frame_bytes)).await
        {
            Err(_) => return Ok(()), // idle
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(frame))) => frame,
            Ok(Err(error)) => return Err(error),
        };
        let request: Request = protocol::decode(&frame.payload)?;
        let plan = context.faults.plan_request(sim_now_ms());
        if plan.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
        let response = match plan.error {
            Some(code) => Response::Error(code),
            None => process(context, request).await,
        };
        if context.faults.drop_ack(&response) {
            tracing::debug!(correlation_id = frame.correlation_id, "ack dropped (injected)");
            continue;
        }
        let payload = protocol::encode(&response)?;
        let write = protocol::write_frame(&mut stream, frame.correlation_id, &payload, max_frame_bytes);
        match tokio::time::timeout(idle, write).await {
            Err(_) => return Ok(()),
            Ok(result) => result?,
        }
    }
}

async fn process(context: &ServerContext, request: Request) -> Response {
    let fetch = match request {
        Request::Fetch(fetch) if fetch.max_wait_ms > 0 => fetch,
        other => {
            let is_produce = matches!(other, Request::Produce(_));
            let response = context.core.borrow_mut().handle(other, sim_now_ms());
            if is_produce {
                context.appended.notify_waiters();
            }
            return response;
        }
    };
    let wait = Duration::from_millis(fetch.max_wait_ms.min(context.config.fetch_max_wait_ms));
    let deadline = Instant::now() + wait;
    loop {
        let appended = context.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let response = context
            .core
            .borrow_mut()
            .handle(Request::Fetch(fetch.clone()), sim_now_ms());
        let nothing_yet = matches!(
            &response,
            Response::Fetch { results }
                if results.iter().all(|r| matches!(&r.result, Ok(f) if f.records.is_empty()))
        );
        if !nothing_yet || Instant::now() >= deadline {
            return response;
        }
        // Woken by an append or by the deadline, whichever comes first.
        let _ = tokio::time::timeout_at(deadline, appended).await;
    }
}
