import Metrics
import Synchronization

/// The relay's metrics through swift-metrics; the daemon exports them in Prometheus format.
///
/// Labels carry subscriber names and outcomes, never subjects or secrets.
struct RelayMetrics: Sendable {
    /// The factory in force where the relay was made (a task's own, from `withMetricsFactory`,
    /// or the global one): deliveries are counted on the HTTP client's thread, which has none.
    private let factory: any MetricsFactory
    private let changesFannedOut: Counter
    private let listenerReconnects: Counter
    private let databaseErrors: Counter
    private let leasesExpired: Counter
    private let perSubscriber: SubscriberHandles.Cache

    init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        changesFannedOut = Counter(label: "consent_sync_changes_captured_total", factory: factory)
        listenerReconnects = Counter(label: "consent_sync_listener_reconnects_total", factory: factory)
        databaseErrors = Counter(label: "consent_sync_database_errors_total", factory: factory)
        leasesExpired = Counter(label: "consent_sync_leases_expired_total", factory: factory)
        perSubscriber = SubscriberHandles.Cache(factory: factory)
    }

    func fannedOut(_ changes: Int) {
        if changes > 0 { changesFannedOut.increment(by: changes) }
    }

    func listenerReconnected() { listenerReconnects.increment() }

    func databaseError() { databaseErrors.increment() }

    func expired(_ leases: Int) { leasesExpired.increment(by: leases) }

    /// One subscriber's per-delivery metrics, for a caller that records several of them.
    func handles(for subscriber: String) -> SubscriberHandles {
        perSubscriber.handles(for: subscriber)
    }

    func delivery(subscriber: String, outcome: String) {
        perSubscriber.handles(for: subscriber).deliveries(outcome).increment()
    }

    /// Logical capture: the WAL the replication slot holds (0 without a slot), and whether it was lost.
    func captureSlot(_ state: CaptureStore.State) {
        Gauge(label: "consent_sync_capture_slot_wal_bytes", factory: factory).record(state.slotLagBytes ?? 0)
        Gauge(label: "consent_sync_capture_slot_lost", factory: factory).record(state.slotLost ? 1 : 0)
    }

    func backlog(subscriber: String, pending: Int, oldestSeconds: Double, dead: Int) {
        Gauge(label: "consent_sync_backlog", dimensions: [("subscriber", subscriber)], factory: factory).record(pending)
        Gauge(label: "consent_sync_oldest_pending_seconds", dimensions: [("subscriber", subscriber)], factory: factory).record(oldestSeconds)
        Gauge(label: "consent_sync_dead_deliveries", dimensions: [("subscriber", subscriber)], factory: factory).record(dead)
    }

    /// Deliveries past and near their propagation deadline; pairs reported before and absent
    /// now go back to 0. Returns the pairs reported, for the next call.
    func deadlines(_ report: DeadlineReport, previously: Set<[String]>) -> Set<[String]> {
        var now: Set<[String]> = []
        for line in report.lines {
            let dimensions = [("subscriber", line.subscriber), ("event_type", line.eventType)]
            Gauge(label: "consent_sync_deliveries_past_deadline", dimensions: dimensions, factory: factory).record(line.past)
            Gauge(label: "consent_sync_deliveries_near_deadline", dimensions: dimensions, factory: factory).record(line.near)
            now.insert([line.subscriber, line.eventType])
        }
        for gone in previously.subtracting(now) {
            let dimensions = [("subscriber", gone[0]), ("event_type", gone[1])]
            Gauge(label: "consent_sync_deliveries_past_deadline", dimensions: dimensions, factory: factory).record(0)
            Gauge(label: "consent_sync_deliveries_near_deadline", dimensions: dimensions, factory: factory).record(0)
        }
        return now
    }

    func erasuresCompleted(_ count: Int) {
        if count > 0 { Counter(label: "consent_sync_erasures_completed_total", factory: factory).increment(by: count) }
    }

    func retention(pruned: Int, deleted: Int) {
        if pruned > 0 { Counter(label: "consent_sync_payloads_pruned_total", factory: factory).increment(by: pruned) }
        if deleted > 0 { Counter(label: "consent_sync_receipts_deleted_total", factory: factory).increment(by: deleted) }
    }
}

/// The per-delivery metrics of one subscriber, made once: asking the metrics factory for
/// them at every delivery (a registry lookup by name and labels, under its lock) was 3 % of
/// the daemon's CPU in a drain.
struct SubscriberHandles: Sendable {
    let subscriber: String
    let delivered: Counter
    let retried: Counter
    let dead: Counter
    let attemptDuration: Timer
    let lag: Timer

    private let factory: any MetricsFactory

    init(subscriber: String, factory: any MetricsFactory) {
        self.subscriber = subscriber
        self.factory = factory
        func deliveries(_ outcome: String) -> Counter {
            Counter(label: "consent_sync_deliveries_total", dimensions: [("subscriber", subscriber), ("outcome", outcome)], factory: factory)
        }
        delivered = deliveries("delivered")
        retried = deliveries("retry")
        dead = deliveries("dead")
        attemptDuration = Timer(label: "consent_sync_attempt_duration_seconds", dimensions: [("subscriber", subscriber)], factory: factory)
        lag = Timer(label: "consent_sync_delivery_lag_seconds", dimensions: [("subscriber", subscriber)], factory: factory)
    }

    func attempted(in duration: Duration) {
        attemptDuration.recordNanoseconds(duration.nanoseconds)
    }

    /// `sinceCommit`: from the change's capture (in the application's transaction) to the receiver's 2xx.
    func delivered(sinceCommit: Duration) {
        delivered.increment()
        lag.recordNanoseconds(sinceCommit.nanoseconds)
    }

    func deliveries(_ outcome: String) -> Counter {
        switch outcome {
        case "delivered": delivered
        case "retry": retried
        case "dead": dead
        default: Counter(label: "consent_sync_deliveries_total", dimensions: [("subscriber", subscriber), ("outcome", outcome)], factory: factory)
        }
    }

    final class Cache: Sendable {
        private let handles = Mutex<[String: SubscriberHandles]>([:])
        private let factory: any MetricsFactory

        init(factory: any MetricsFactory) {
            self.factory = factory
        }

        func handles(for subscriber: String) -> SubscriberHandles {
            if let known = handles.withLock({ $0[subscriber] }) { return known }
            let made = SubscriberHandles(subscriber: subscriber, factory: factory)
            return handles.withLock { handles in
                if let known = handles[subscriber] { return known }
                handles[subscriber] = made
                return made
            }
        }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
