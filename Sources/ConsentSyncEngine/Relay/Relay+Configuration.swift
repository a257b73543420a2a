import ConsentSyncCore

extension Relay {
    /// How the relay paces itself. Every value has a default that suits production.
    public struct Configuration: Sendable {
        /// LISTEN for wake-ups (with NOTIFY sent only while this daemon is idle). Off: poll
        /// only, for setups where LISTEN cannot work (a transaction-pooling PgBouncer).
        public var listen: Bool = true
        /// Safety net: look for work this often even without a notification.
        public var pollInterval: Duration = .seconds(2)
        /// While switching from `logical` capture back to `table`, how often the rest of the
        /// replication slot is read (while `logical`, the slot is streamed).
        public var capturePollInterval: Duration = .milliseconds(20)
        /// Outbox rows turned into deliveries per transaction.
        public var fanOutBatchSize: Int = 1000
        /// Deliveries claimed per subscriber per round.
        public var claimBatchSize: Int = 100
        /// Requests in flight at once from this instance, over all subscribers.
        public var maxInFlight: Int = 512
        public var retry: RetryPolicy = RetryPolicy()
        /// A claim's lease is the subscriber's timeout plus this margin.
        public var leaseMargin: Duration = .seconds(30)
        /// How often expired leases of dead instances are taken back.
        public var janitorInterval: Duration = .seconds(5)
        /// A subscriber whose every attempt has failed for this long is disabled (its deliveries
        /// are kept); `nil`: never.
        public var disableAfterFailing: Duration? = .seconds(5 * 24 * 3600)
        /// How often the backlog per subscriber is counted for metrics and `STATUS=`.
        public var backlogInterval: Duration = .seconds(10)
        /// After a shutdown request, how long requests in flight may take to finish.
        public var drainTimeout: Duration = .seconds(10)
        /// The CloudEvents `source`; by default `urn:consent-sync:<installation id>`.
        public var eventSource: String?
        /// How much of a receiver's answer is kept in the attempt log.
        public var responseExcerptBytes: Int = 1024
        public var userAgent: String = ConsentSyncVersion.userAgent
        /// Propagation deadlines per event type (`consent.withdrawn`: 24 h, …): deliveries
        /// past or near theirs are counted in metrics, logged and shown by `status`.
        public var deadlines: [String: Duration] = Relay.Configuration.defaultDeadlines
        /// Payloads of finished changes older than this are removed; `nil`: kept.
        public var payloadRetention: Duration? = .seconds(90 * 86_400)
        /// Whole records (the receipts) older than this are deleted; `nil`: kept.
        public var receiptRetention: Duration? = .seconds(730 * 86_400)
        /// How often erasures are completed, retention applied and deadlines checked.
        public var housekeepingInterval: Duration = .seconds(60)

        /// Opt-outs and erasures within 24 hours (well inside CPRA's 15 business days).
        public static let defaultDeadlines: [String: Duration] = [
            "consent.withdrawn": .seconds(86_400),
            "consent.denied": .seconds(86_400),
            "subject.erased": .seconds(86_400),
        ]

        public init() {}
    }
}
