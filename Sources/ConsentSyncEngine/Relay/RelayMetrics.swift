import Metrics

/// The relay's metrics through swift-metrics; the daemon exports them in Prometheus format.
///
/// Labels carry subscriber names and outcomes, never subjects or secrets.
struct RelayMetrics: Sendable {
    private let changesFannedOut = Counter(label: "consent_sync_changes_captured_total")
    private let listenerReconnects = Counter(label: "consent_sync_listener_reconnects_total")
    private let databaseErrors = Counter(label: "consent_sync_database_errors_total")
    private let leasesExpired = Counter(label: "consent_sync_leases_expired_total")

    func fannedOut(_ changes: Int) {
        if changes > 0 { changesFannedOut.increment(by: changes) }
    }

    func listenerReconnected() { listenerReconnects.increment() }

    func databaseError() { databaseErrors.increment() }

    func expired(_ leases: Int) { leasesExpired.increment(by: leases) }

    func delivery(subscriber: String, outcome: String) {
        Counter(label: "consent_sync_deliveries_total", dimensions: [("subscriber", subscriber), ("outcome", outcome)]).increment()
    }

    func attemptDuration(subscriber: String, _ duration: Duration) {
        Timer(label: "consent_sync_attempt_duration_seconds", dimensions: [("subscriber", subscriber)]).recordNanoseconds(duration.nanoseconds)
    }

    /// From the change's capture (in the application's transaction) to the receiver's 2xx.
    func commitToAcknowledgement(subscriber: String, _ duration: Duration) {
        Timer(label: "consent_sync_delivery_lag_seconds", dimensions: [("subscriber", subscriber)]).recordNanoseconds(duration.nanoseconds)
    }

    func backlog(subscriber: String, pending: Int, oldestSeconds: Double, dead: Int) {
        Gauge(label: "consent_sync_backlog", dimensions: [("subscriber", subscriber)]).record(pending)
        Gauge(label: "consent_sync_oldest_pending_seconds", dimensions: [("subscriber", subscriber)]).record(oldestSeconds)
        Gauge(label: "consent_sync_dead_deliveries", dimensions: [("subscriber", subscriber)]).record(dead)
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
