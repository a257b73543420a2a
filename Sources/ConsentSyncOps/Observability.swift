import ConsentSyncCore
import Prometheus

/// Builds the Prometheus side of the daemon's metrics.
///
/// The relay records through swift-metrics; the factory made here turns those into Prometheus
/// collectors in one registry, which `/metrics` (``OpsServer``) exports. Bootstrapping the
/// global `MetricsSystem` with the factory is the caller's job (once per process); tests bind
/// it to a task instead with swift-metrics' `withMetricsFactory(_:_:)`.
public enum Observability {
    /// Buckets for `consent_sync_attempt_duration_seconds`: one HTTP try, 1 ms to 60 s.
    public static let attemptDurationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
        .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]

    /// Buckets for `consent_sync_delivery_lag_seconds`: commit to acknowledgement, 1 ms to 1 h
    /// (a delivery that waited out a receiver's outage lands in the upper buckets).
    public static let deliveryLagBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300), .seconds(900),
        .seconds(1800), .seconds(3600),
    ]

    /// A fresh registry and a swift-metrics factory that records into it, with the histogram
    /// buckets above and `consent_sync_build_info{version="…"} 1` already set.
    ///
    /// - Parameter version: reported in `consent_sync_build_info`; the running binary's by default.
    public static func makePrometheusFactory(
        version: String = ConsentSyncVersion.current
    ) -> (PrometheusMetricsFactory, PrometheusCollectorRegistry) {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            "consent_sync_attempt_duration_seconds": attemptDurationBuckets,
            "consent_sync_delivery_lag_seconds": deliveryLagBuckets,
        ]
        registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "consent_sync",
                metricName: "build",
                unitName: "info",
                helpText: "Always 1; the version label says which consent-sync is running."
            ),
            labels: [("version", version)]
        ).set(Int64(1))
        return (factory, registry)
    }
}
