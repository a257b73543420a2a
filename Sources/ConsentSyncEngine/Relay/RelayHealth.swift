import Synchronization

/// What the relay knows about its own health, for `/healthz`, `/readyz`, `STATUS=` and the
/// watchdog. Written by the relay as it works, read by the ops side at any time.
public final class RelayHealth: Sendable {
    public struct Snapshot: Sendable, Equatable {
        /// When the pipeline loop last completed a round (or woke up idle).
        public var lastLoopTurn: ContinuousClock.Instant?
        /// The pipeline's database connection works and the schema is at the expected version.
        public var databaseReady = false
        /// LISTEN is active on the listener's connection.
        public var listening = false
        /// The schema version found at connect.
        public var schemaVersion: Int?
        /// The last error of the pipeline, cleared by the next successful round.
        public var lastError: String?
        /// Requests in flight from this instance.
        public var inFlight = 0
        /// Subscribers known to this instance (enabled and disabled).
        public var subscribers = 0
        /// Deliveries pending or in flight, over all subscribers, as last counted.
        public var backlog = 0
        /// True once the relay has been asked to stop.
        public var stopping = false

        public init() {}

        /// Connected, listening and migrated: ready to deliver.
        public var isReady: Bool { databaseReady && listening && !stopping }

        /// The loop has turned within `window`: it is not hung.
        public func isAlive(within window: Duration, now: ContinuousClock.Instant = .now) -> Bool {
            guard let lastLoopTurn else { return false }
            return now - lastLoopTurn <= window
        }
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public var snapshot: Snapshot { state.withLock { $0 } }

    /// Changes the snapshot (the relay does; tests may, to drive the ops side).
    public func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }
}
