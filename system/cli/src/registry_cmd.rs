//! `soilstream registry`: the Confluent-compatible Schema Registry service.
//!
//! `soilstream registry serve --data DIR --listen ADDR` serves the REST API
//! until SIGTERM or Ctrl-C. Every registration is synced to the log in `DIR`
//! before it is answered, so a kill -9 loses nothing that was acknowledged.
//! Once listening it prints one line to stdout, `listening on http://ADDR`,
//! for scripts (and with `--listen 127.0.0.1:0`, to learn the port).

use anyhow::Context;
use clap::Subcommand;
use soilstream::disk::StdDisk;
use soilstream::registry::{ApiLimits, StoreLimits, open_router, serve as serve_api};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `soilstream registry`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Serve the Confluent Schema Registry REST API.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Data directory holding the registry log (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Largest size of the registry log, bytes; changes beyond it are refused.
    #[arg(long, value_name = "BYTES", default_value_t = soilstream::registry::store::LOG_DEFAULT_MAX_BYTES)]
    max_log_bytes: u64,
    /// Largest request body, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = soilstream::registry::api::REQUEST_BODY_DEFAULT_MAX_BYTES)]
    max_request_bytes: usize,
    /// Time limit of one request, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
}

/// Runs `soilstream registry`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        RegistryCommand::Serve(serve) => run_serve(serve).await,
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.request_timeout_ms > 0,
        "--request-timeout-ms must be positive"
    );
    let store_limits = StoreLimits {
        log_max_bytes: args.max_log_bytes,
    };
    let api_limits = ApiLimits {
        request_body_max_bytes: args.max_request_bytes,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    };
    // Two servers appending to one log would hand out the same ids.
    let _data_lock = crate::args::lock_dir(
        &args.data,
        "registry data directory",
        "stop the other registry or use another --data",
    )?;
    let (router, report) = open_router(StdDisk, &args.data, store_limits, api_limits)
        .with_context(|| format!("opening the registry store in {}", args.data.display()))?;
    tracing::info!(
        data = %args.data.display(),
        created = report.created,
        records = report.frames_replayed,
        schemas = report.schemas,
        subjects = report.subjects,
        torn_tail = ?report.torn_tail,
        "registry store open"
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    tracing::info!(%addr, "registry serving");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = serve_api(listener, router, async move {
        let _ = stopped.await;
    });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        biased;
        result = &mut server => {
            result.context("serving the registry")?;
            return Ok(ExitCode::SUCCESS);
        }
        signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
    }
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.context("serving the registry")?,
        Err(_) => tracing::warn!(
            grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
            "requests still in flight after the grace period; exiting (everything acknowledged is on disk)"
        ),
    }
    tracing::info!("registry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or Ctrl-C (SIGINT), naming the signal.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the registry");
            None
        }
    };
    let sigterm = async {
        match terminate.as_mut() {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        biased;
        _ = sigterm => "SIGTERM",
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => "SIGINT",
            Err(error) => {
                tracing::warn!(%error, "cannot watch Ctrl-C");
                std::future::pending::<&'static str>().await
            }
        },
    }
}
