//! What a running broker says about itself from the outside: its
//! Prometheus counters and gauges, and its resident memory as the kernel
//! counts it.

use crate::Broker;

/// The value of an unlabelled metric on `/metrics` (0 when absent).
pub fn metric(b: &Broker, name: &str) -> f64 {
    let (status, text) = b.http_get("/metrics");
    assert_eq!(status, 200, "GET /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Resident memory of process `pid` in bytes (`VmRSS` in
/// `/proc/<pid>/status`).
pub fn rss_bytes(pid: i32) -> u64 {
    try_rss_bytes(pid).unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// [`rss_bytes`], `None` when the process is gone.
pub fn try_rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}
