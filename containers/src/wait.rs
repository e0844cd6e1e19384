//! Small helpers: awaiting a condition, finding a free port.

use crate::FixtureError;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

/// Interval between two checks of a condition, in ms.
const POLL_INTERVAL_MS: u64 = 20;

/// Checks `condition` every 20 ms until it holds or `timeout_ms` passed.
/// Blocks the calling thread; meant for test code.
pub fn wait_until(
    what: &str,
    timeout_ms: u64,
    mut condition: impl FnMut() -> bool,
) -> Result<(), FixtureError> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if condition() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FixtureError::Timeout {
                what: what.to_string(),
                timeout_ms,
                log_tail: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// A loopback TCP port that was free a moment ago (bound, then released).
pub fn free_loopback_port() -> Result<u16, FixtureError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| FixtureError::io("binding a free loopback port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| FixtureError::io("reading the bound port", e))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_when_the_condition_holds_and_times_out_otherwise() {
        let mut calls = 0;
        wait_until("third call", 5_000, || {
            calls += 1;
            calls == 3
        })
        .unwrap();
        assert_eq!(calls, 3);
        let error = wait_until("never", 50, || false).unwrap_err();
        assert!(error.to_string().contains("never"), "{error}");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_loopback_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
