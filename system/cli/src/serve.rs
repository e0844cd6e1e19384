//! What every long-running component command shares: the metrics endpoint,
//! the SIGTERM / Ctrl-C handling, and stopping everything when one part ends.

use anyhow::Context;
use soilstream::component::{Shutdown, ShutdownTrigger};
use soilstream::metrics::{MetricsRenderer, serve_metrics_text};
use std::future::Future;
use std::rc::Rc;

/// Binds the metrics endpoint on `listen` (empty: none). Binding happens
/// before the component starts, so a taken port is a configuration error
/// now, not a surprise at shutdown.
pub async fn bind_metrics(listen: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "metrics endpoint at /metrics");
    Ok(Some(listener))
}

/// Runs `component` with the metrics endpoint and signal handling until it
/// ends; a signal triggers `trigger`, and the end of the component stops the
/// endpoint. Returns the component's result.
pub async fn run_component<T>(
    metrics_listener: Option<tokio::net::TcpListener>,
    render: MetricsRenderer,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    component: impl Future<Output = T>,
) -> anyhow::Result<T> {
    let trigger = Rc::new(trigger);
    let mut metrics_stop = shutdown.clone();
    let metrics_server = async {
        match metrics_listener {
            Some(listener) => serve_metrics_text(listener, render, async move { metrics_stop.wait().await })
                .await
                .context("metrics endpoint failed"),
            None => Ok(()),
        }
    };
    let signal_trigger = trigger.clone();
    let mut stop = shutdown.clone();
    let signals = async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            biased;
            _ = stop.wait() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        signal_trigger.trigger();
        anyhow::Ok(())
    };
    let component = async {
        let result = component.await;
        // Whatever ended the component ends the endpoint and the signal wait.
        trigger.trigger();
        result
    };
    let (result, metrics_result, signal_result) = tokio::join!(component, metrics_server, signals);
    metrics_result?;
    signal_result?;
    Ok(result)
}
