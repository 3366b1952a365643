//! The operator's own metrics (Prometheus) and logging setup.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub leader: IntGauge,
    pub certificates_issued: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("raftmq_operator".into()), None)?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "reconciles_total",
                "Reconciles by outcome (ok, degraded, error)",
            ),
            &["outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Reconcile errors by kind"),
            &["error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            &["outcome"],
        )?;
        let leader = IntGauge::new("leader", "1 while this replica holds the leader Lease")?;
        let certificates_issued = IntCounterVec::new(
            Opts::new(
                "certificates_issued_total",
                "Certificates issued, by kind (ca, server)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(certificates_issued.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            certificates_issued,
        })
    }

    pub fn observe(&self, outcome: &str, took: Duration) {
        self.reconciles.with_label_values(&[outcome]).inc();
        self.duration
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
    }

    /// Text exposition format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
