//! Prometheus metrics: one registry per application (tests run many side by side).
//!
//! Request metrics are recorded by the HTTP middleware; the model, training and
//! store figures are read from the service state at scrape time.

use crate::snapshot::Snapshot;
use crate::worker::JobStatus;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::time::Duration;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Latency buckets in seconds: 0.5 ms to 30 s (the default request timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    ratings: IntGauge,
    model_version: IntGauge,
    model_loaded: IntGauge,
    holdout_rmse: Gauge,
    last_training_duration: Gauge,
    training_running: IntGauge,
    training_runs: IntCounter,
    training_failures: IntCounter,
    models_rejected: IntCounter,
    pending_changes: IntGauge,
    cluster_role: prometheus::IntGaugeVec,
    cluster_leader: IntGauge,
    checksum_failures: IntCounter,
    models_loaded: IntCounter,
    list_cache: IntCounterVec,
    /// The two series of `list_cache`, looked up once.
    list_hits: IntCounter,
    list_misses: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let list_cache = IntCounterVec::new(
            Opts::new(
                "funkrec_list_cache_requests_total",
                "Recommendation requests answered from a kept list (hit) or ranked (miss)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let labels = &["method", "route", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "funkrec_http_requests_total",
                "HTTP requests answered, by method, route template and status",
            ),
            labels,
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "funkrec_http_request_duration_seconds",
                "Time to the response head, by method, route template and status",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric");
        let int_gauge = |n: &str, h: &str| IntGauge::new(n, h).expect("valid metric");
        let gauge = |n: &str, h: &str| Gauge::new(n, h).expect("valid metric");
        let counter = |n: &str, h: &str| IntCounter::new(n, h).expect("valid metric");
        let m = Metrics {
            registry: Registry::new(),
            requests,
            latency,
            ratings: int_gauge("funkrec_ratings", "Ratings in the store"),
            model_version: int_gauge(
                "funkrec_model_version",
                "Version of the served model snapshot (0 = none yet)",
            ),
            model_loaded: int_gauge("funkrec_model_loaded", "1 when a model snapshot is served"),
            holdout_rmse: gauge(
                "funkrec_model_holdout_rmse",
                "Holdout RMSE of the served snapshot (NaN when none or nothing was held out)",
            ),
            last_training_duration: gauge(
                "funkrec_training_last_duration_seconds",
                "Wall time of the last training run, successful or not (NaN before the first)",
            ),
            training_running: int_gauge("funkrec_training_running", "1 while a run is in progress"),
            training_runs: counter(
                "funkrec_training_runs_total",
                "Training runs that published a snapshot since start",
            ),
            training_failures: counter(
                "funkrec_training_failures_total",
                "Training runs that failed since start",
            ),
            models_rejected: counter(
                "funkrec_models_rejected_total",
                "Trained models the publish gate rejected (worse holdout RMSE) since start",
            ),
            pending_changes: int_gauge(
                "funkrec_training_pending_changes",
                "Ratings written or deleted since the last run started",
            ),
            cluster_role: prometheus::IntGaugeVec::new(
                Opts::new(
                    "funkrec_cluster_role",
                    "1 for this process's cluster.role (all, api or trainer)",
                ),
                &["role"],
            )
            .expect("valid metric"),
            cluster_leader: int_gauge(
                "funkrec_cluster_trainer_lock",
                "1 while this process trains (holds the trainer lock on PostgreSQL)",
            ),
            checksum_failures: counter(
                "funkrec_model_checksum_failures_total",
                "Models from the database skipped because they failed their checksum or did not decode",
            ),
            models_loaded: counter(
                "funkrec_model_loads_total",
                "Models loaded from the database and served",
            ),
            list_hits: list_cache.with_label_values(&["hit"]),
            list_misses: list_cache.with_label_values(&["miss"]),
            list_cache,
        };
        let r = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.ratings.clone()),
            Box::new(m.model_version.clone()),
            Box::new(m.model_loaded.clone()),
            Box::new(m.holdout_rmse.clone()),
            Box::new(m.last_training_duration.clone()),
            Box::new(m.training_running.clone()),
            Box::new(m.training_runs.clone()),
            Box::new(m.training_failures.clone()),
            Box::new(m.models_rejected.clone()),
            Box::new(m.pending_changes.clone()),
            Box::new(m.cluster_role.clone()),
            Box::new(m.cluster_leader.clone()),
            Box::new(m.checksum_failures.clone()),
            Box::new(m.models_loaded.clone()),
            Box::new(m.list_cache.clone()),
        ];
        for c in all {
            r.register(c).expect("metric names are unique");
        }
        m
    }

    /// Records one answered request. `route` is the matched path template
    /// (e.g. `/v1/users/{user}/ratings`), never the raw URI.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a recommendation request answered from a kept list (`hit`) or ranked.
    pub fn observe_list_cache(&self, hit: bool) {
        match hit {
            true => self.list_hits.inc(),
            false => self.list_misses.inc(),
        }
    }

    /// Refreshes the state-derived figures. `ratings` is None when the count failed
    /// (the previous value is kept).
    pub fn update_state(&self, snap: Option<&Snapshot>, job: &JobStatus, ratings: Option<u64>) {
        if let Some(n) = ratings {
            self.ratings.set(n as i64);
        }
        self.model_loaded.set(i64::from(snap.is_some()));
        self.model_version
            .set(snap.map(|s| s.version as i64).unwrap_or(0));
        self.holdout_rmse
            .set(snap.and_then(|s| s.holdout_rmse).unwrap_or(f64::NAN));
        self.last_training_duration
            .set(job.last_duration_secs.unwrap_or(f64::NAN));
        self.training_running.set(i64::from(job.running));
        self.pending_changes.set(job.pending_changes as i64);
        // the worker's counts are monotone: advance the counters to them
        self.training_runs
            .inc_by(job.runs.saturating_sub(self.training_runs.get()));
        self.training_failures
            .inc_by(job.failures.saturating_sub(self.training_failures.get()));
        self.models_rejected
            .inc_by(job.rejected.saturating_sub(self.models_rejected.get()));
    }

    /// Refreshes the cluster figures from this process's [`Cluster`](crate::cluster::Cluster).
    pub fn update_cluster(&self, cluster: &crate::cluster::Cluster) {
        self.cluster_role
            .with_label_values(&[cluster.role().to_string().as_str()])
            .set(1);
        self.cluster_leader.set(i64::from(cluster.is_leader()));
        self.checksum_failures.inc_by(
            cluster
                .checksum_failures()
                .saturating_sub(self.checksum_failures.get()),
        );
        self.models_loaded.inc_by(
            cluster
                .models_loaded()
                .saturating_sub(self.models_loaded.get()),
        );
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_state() {
        let m = Metrics::new();
        m.observe_request(
            "GET",
            "/v1/items/{item}/similar",
            200,
            Duration::from_millis(3),
        );
        m.observe_request(
            "GET",
            "/v1/items/{item}/similar",
            200,
            Duration::from_millis(4),
        );
        let job = JobStatus {
            runs: 2,
            failures: 1,
            rejected: 3,
            last_duration_secs: Some(1.5),
            ..JobStatus::default()
        };
        m.update_state(None, &job, Some(42));
        m.update_state(None, &job, None);
        let text = m.render();
        assert!(text.contains(
            r#"funkrec_http_requests_total{method="GET",route="/v1/items/{item}/similar",status="200"} 2"#
        ), "{text}");
        assert!(text.contains("funkrec_http_request_duration_seconds_bucket{"));
        assert!(text.contains("funkrec_ratings 42\n"), "{text}");
        assert!(text.contains("funkrec_training_runs_total 2\n"));
        assert!(text.contains("funkrec_training_failures_total 1\n"));
        assert!(text.contains("funkrec_models_rejected_total 3\n"), "{text}");
        assert!(text.contains("funkrec_training_last_duration_seconds 1.5\n"));
        assert!(text.contains("funkrec_model_version 0\n"));
        assert!(text.contains("funkrec_model_holdout_rmse NaN\n"));
        let cluster = crate::cluster::Cluster::new(crate::config::ClusterRole::All, false);
        m.update_cluster(&cluster);
        let text = m.render();
        assert!(
            text.contains("funkrec_cluster_role{role=\"all\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("funkrec_cluster_trainer_lock 1\n"), "{text}");
        assert!(
            text.contains("funkrec_model_checksum_failures_total 0\n"),
            "{text}"
        );
    }
}
