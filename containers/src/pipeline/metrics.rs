//! A component's `/metrics` endpoint, as the real world reads it: where the
//! current incarnation listens (from its log) and one scrape, parsed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// What `soilstream gateway`, `qaqc` and `archive` log once their metrics
/// endpoint listens (followed by the address).
pub const METRICS_LOG_MARKER: &str = "metrics endpoint at /metrics address=";

/// Timeout of one `/metrics` request, ms.
pub const SCRAPE_TIMEOUT_MS: u64 = 2_000;

/// Longest `/metrics` answer read, bytes.
const SCRAPE_MAX_BYTES: u64 = 4 << 20;

/// One scrape: every sample by its exposed name (labels included, e.g.
/// `soilstream_qaqc_lag_records{partition="0"}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses the OpenMetrics / Prometheus text format (comments skipped,
    /// lines that do not parse ignored).
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (name, value) = line.rsplit_once(' ')?;
                    Some((name.to_owned(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// A sample's value, if exposed.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// A sample's value, 0 if not exposed (yet): a labelled family shows a
    /// label set only once it was used.
    pub fn value(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// A sample's value as a count (0 if not exposed, negatives as 0).
    pub fn count(&self, name: &str) -> u64 {
        self.value(name).max(0.0) as u64
    }

    /// The sum over every label set of family `name` (and the unlabelled
    /// sample, if any).
    pub fn sum_family(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(sample, _)| {
                sample.as_str() == name
                    || sample
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{'))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// The metrics address the current incarnation logged: the first
/// [`METRICS_LOG_MARKER`] after the last start banner the process fixture
/// wrote, if there is one yet.
pub fn metrics_addr_in_log(log_path: &Path) -> Option<SocketAddr> {
    let log = std::fs::read_to_string(log_path).ok()?;
    let current = &log[log.rfind(crate::process::START_BANNER)?..];
    let rest = &current[current.find(METRICS_LOG_MARKER)? + METRICS_LOG_MARKER.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// One `GET /metrics` over HTTP/1.0 (the server closes the connection after
/// the body, so there is no chunked framing), parsed.
pub fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    scrape_text(addr).map(|text| Metrics::parse(&text))
}

/// One `GET /metrics`, the body as text.
pub fn scrape_text(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_millis(SCRAPE_TIMEOUT_MS);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: soilstream\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .take(SCRAPE_MAX_BYTES)
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        format!(
            "not an HTTP response: {:?}",
            crate::pipeline::shorten(&response, 200)
        )
    })?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response: {head}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_by_name_with_labels_and_families_sum() {
        let m = Metrics::parse(
            "# HELP x\nsoilstream_spool_depth_records 12\n\
             soilstream_qaqc_lag_records{partition=\"0\"} 3\n\
             soilstream_qaqc_lag_records{partition=\"1\"} 4\nbroken line\n",
        );
        assert_eq!(m.get("soilstream_spool_depth_records"), Some(12.0));
        assert_eq!(m.count("soilstream_qaqc_lag_records{partition=\"1\"}"), 4);
        assert_eq!(m.sum_family("soilstream_qaqc_lag_records"), 7.0);
        assert_eq!(m.sum_family("soilstream_qaqc_lag"), 0.0);
        assert_eq!(m.value("absent"), 0.0);
    }
}
