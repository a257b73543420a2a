import ConsentSyncCore
import ConsentSyncHTTP
import ConsentSyncPostgres
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The daemon's pipeline as one service: wakes on NOTIFY (or the poll interval), fans new
/// outbox rows out into deliveries, claims due deliveries and sends them, and writes back
/// each result.
///
/// One database connection runs the pipeline's statements in turn; requests run
/// concurrently, bounded per subscriber and in all, each in its own child task.
public final class Relay: Service {
    private let settings: Mutex<Configuration>
    /// Set by ``reconfigure(_:)``: reload subscribers at the next round.
    private let subscribersStale = Atomic<Bool>(false)

    /// The settings in force; ``reconfigure(_:)`` changes them while running.
    public var configuration: Configuration { settings.withLock { $0 } }
    private let database: PostgresConfiguration
    private let http: HTTPClient
    /// Decrypts the subscribers' signing secrets; fixed for the relay's life.
    private let keyring: SecretKeyring
    private let logger: Logger
    /// This process's identity in leases.
    public let instanceID = UUID()
    private let doorbell = Doorbell()
    /// Builds, signs and starts each round's requests (``startAll``), one round after another,
    /// while the relay loop goes on to its next round trip.
    private let sending = DispatchQueue(label: "consent-sync.relay.sending")
    private let finished = Mutex<[AttemptRecord]>([])
    /// Deliveries this instance is sending now, with their lease length: the janitor renews them,
    /// and `takeBackOwnLeases` leaves them alone.
    private let leased = Mutex<[Int64: Duration]>([:])
    /// The requests of those deliveries not answered yet: what a drain out of time cancels.
    private let outstanding = Mutex<[Int64: HTTPRequestHandle]>([:])
    /// Hand-overs (see ``runRound``) the database refused in a row; after three, every
    /// delivery is claimed instead, for as long as this process runs.
    private let handOverFailures = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// The schema as the janitor last found it, when it is not the one this binary was built
    /// for: the relay loop stops on it (see ``janitor()``).
    private let schemaMismatchSeen = Mutex<SchemaError?>(nil)
    /// Daemons seen recently in `consent_sync.listeners` (this one included).
    private let liveInstances = Atomic<Int>(1)
    private let metrics = RelayMetrics()
    /// Live health, for the ops endpoints and systemd.
    public let health = RelayHealth()

    public init(configuration: Configuration, database: PostgresConfiguration, http: HTTPClient, keyring: SecretKeyring = .plaintextOnly, logger: Logger) {
        self.settings = Mutex(configuration)
        self.database = database.with("application_name", "consent-sync relay")
        self.http = http
        self.keyring = keyring
        var logger = logger
        logger[metadataKey: "instance"] = "\(instanceID.uuidString.prefix(8))"
        self.logger = logger
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                if self.configuration.listen {
                    group.addTask { await self.watch() }
                } else {
                    self.health.update { $0.listening = true }  // polling stands in for LISTEN
                }
                group.addTask { await self.janitor() }
                group.addTask { await self.captureFromWAL() }
                try await self.pipeline()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    /// Applies new settings (a SIGHUP reload) without dropping work: limits, pacing and the
    /// retry policy apply from the next round; subscribers are re-read at once.
    public func reconfigure(_ configuration: Configuration) {
        settings.withLock { $0 = configuration }
        subscribersStale.store(true, ordering: .relaxed)
        doorbell.ring()
    }

    /// Stops claiming; requests in flight get up to `drainTimeout` to finish. `run()` then returns.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        health.update { $0.stopping = true }
        doorbell.ring()
    }

    // MARK: - Wake-ups

    /// Rings the doorbell on every notification, and after a reconnect (anything could have
    /// been missed while the listener was away).
    private func watch() async {
        let listener = PostgresListener(
            configuration: database.with("application_name", "consent-sync listener"),
            channels: [RelayWakeup.channel],
            logger: logger
        )
        for await event in listener.events() {
            switch event {
            case .notification(_, let payload):
                if payload == RelayWakeup.subscribers.rawValue { subscribersStale.store(true, ordering: .relaxed) }
                doorbell.ring()
            case .listening(let reconnected):
                if reconnected {
                    logger.info("listener reconnected; catching up")
                    metrics.listenerReconnected()
                }
                health.update { $0.listening = true }
                doorbell.ring()
            case .disconnected(let reason):
                health.update { $0.listening = false }
                logger.warning("listener lost its connection; polling until it is back", metadata: ["reason": "\(reason)"])
            }
        }
    }

    /// In `logical` capture mode, streams the replication slot into the capture queue and
    /// wakes the pipeline (the database NOTIFYs the other daemons while they are idle). One
    /// daemon streams at a time (PostgreSQL lets one process use a slot); the others retry
    /// every second and take over when it stops. While switching back to `table`, the rest
    /// of the slot is read without a stream, which then drops it. In `table` mode, one cheap
    /// query per poll interval notices a switch.
    private func captureFromWAL() async {
        var connection: PostgresConnection?
        var failures = 0
        while !Task.isCancelled && !stopping.load(ordering: .relaxed) {
            let configuration = self.configuration
            var wait = configuration.pollInterval
            do {
                let db: PostgresConnection
                if let connection { db = connection } else {
                    db = try await PostgresConnection.connect(database.with("application_name", "consent-sync capture"), logger: logger)
                    connection = db
                }
                let state = try await CaptureStore.state(on: db)
                if state.slotLost {
                    logger.error("the replication slot of the logical capture is lost: changes since were not captured; run 'consent-sync resync'", metadata: [
                        "slot": "\(state.slotName ?? "")",
                    ])
                } else if let slot = state.slotName, state.mode == .logical {
                    wait = try await streamCapture(slot: slot, from: state.position ?? 0, on: db)
                } else if state.slotName != nil {
                    let step = try await CaptureStore.capture(maxChanges: configuration.fanOutBatchSize, on: db)
                    if step.taken > 0 { doorbell.ring() }
                    wait = step.more ? .zero : configuration.capturePollInterval
                }
                failures = 0
            } catch {
                guard !Task.isCancelled && !stopping.load(ordering: .relaxed) else { break }
                failures += 1
                wait = Backoff(initial: .milliseconds(200), maximum: .seconds(15)).delay(forRetry: failures)
                logger.error("cannot read the replication slot of the logical capture; retrying", metadata: [
                    "error": "\(error)", "retry_in_ms": "\(wait.milliseconds)",
                ])
                await connection?.close()
                connection = nil
            }
            if wait > .zero { try? await Task.sleep(for: wait) }
        }
        await connection?.close()
    }

    /// Streams `slot` until this daemon stops or the mode changes; returns how long to wait
    /// before looking again (another daemon streaming it: a second).
    private func streamCapture(slot: String, from position: UInt64, on db: PostgresConnection) async throws -> Duration {
        let stream: PostgresReplicationStream
        do {
            stream = try await PostgresReplicationStream.start(
                database.with("application_name", "consent-sync capture"),
                slot: slot, from: position,
                options: [("proto_version", "1"), ("publication_names", "consent_sync_capture"), ("messages", "true")],
                logger: logger
            )
        } catch let error as PostgresError where error.sqlState == "55006" {
            return .seconds(1)  // the slot is in use: another daemon streams it
        }
        logger.info("streaming the replication slot of the logical capture", metadata: ["slot": "\(slot)"])
        var reader = PgOutputReader()
        var checkedAt = ContinuousClock.now
        do {
            while !Task.isCancelled && !stopping.load(ordering: .relaxed) {
                let done = reader.feed(try await stream.read(timeout: .milliseconds(500)))
                if let last = done.last {
                    var payloads: [String] = []
                    var times: [Int64] = []
                    var ends: [UInt64] = []
                    for transaction in done {
                        payloads += transaction.payloads
                        times += Array(repeating: transaction.commitTime, count: transaction.payloads.count)
                        ends += Array(repeating: transaction.end, count: transaction.payloads.count)
                    }
                    let taken = try await CaptureStore.queue(payloads: payloads, commitTimes: times, ends: ends, through: last.end, on: db)
                    if taken > 0 { doorbell.ring() }
                    try await stream.confirm(last.end)
                }
                if ContinuousClock.now - checkedAt > .seconds(2) {
                    checkedAt = .now
                    try await CaptureStore.mark(after: 16 << 20, on: db)
                    let state = try await CaptureStore.state(on: db)
                    if state.mode != .logical || state.slotName != slot { break }
                }
            }
        } catch {
            await stream.close()
            throw error
        }
        await stream.close()
        return .zero
    }

    private func janitor() async {
        var connection: PostgresConnection?
        var backlogSchedule = BacklogSchedule(interval: configuration.backlogInterval)
        var housekeptAt = ContinuousClock.now - .seconds(86_400)
        var deadlinePairs: Set<[String]> = []
        while !Task.isCancelled {
            do {
                let live: PostgresConnection
                if let connection { live = connection } else {
                    live = try await PostgresConnection.connect(database.with("application_name", "consent-sync janitor"), logger: logger)
                    try await DeliveryStore.prepareSession(live)
                    connection = live
                }
                // `consent-sync migrate` of another version, run while this daemon goes on: its
                // statements may still run, with meanings or plans the migration changed (since
                // schema 11 an older claim no longer finds deliveries_due, and reads every live
                // delivery instead). So the relay loop stops and says why, as when one of its
                // statements fails on the new schema, and so does this janitor's work.
                if let mismatch = await Self.schemaMismatch(on: live) {
                    let first = schemaMismatchSeen.withLock { seen in
                        defer { seen = mismatch }
                        return seen == nil
                    }
                    if first {
                        // The mismatch says what to do: upgrade this binary, or run migrate.
                        logger.error("the database schema does not match this consent-sync; delivery stops until it does", metadata: ["schema": "\(mismatch)"])
                        doorbell.ring()
                    }
                } else {
                    let instances = try await DeliveryStore.touchListener(instance: instanceID, staleAfter: max(.seconds(300), configuration.janitorInterval * 10), on: live)
                    liveInstances.store(max(1, instances), ordering: .relaxed)
                    let renewals = leased.withLock { $0 }
                    if !renewals.isEmpty {
                        try await DeliveryStore.renewLeases(owner: instanceID, leases: renewals, on: live)
                    }
                    // Other instances' only: see `takeBackOwnLeases`.
                    let expired = try await DeliveryStore.expireLeases(.ofOthers(than: instanceID), on: live)
                    if expired > 0 {
                        logger.warning("took back expired leases", metadata: ["count": "\(expired)"])
                        metrics.expired(expired)
                        doorbell.ring()
                    }
                    backlogSchedule.interval = configuration.backlogInterval
                    if backlogSchedule.isDue(at: .now) {
                        let countStarted = ContinuousClock.now
                        let lines = try await DeliveryStore.backlog(on: live)
                        let took = ContinuousClock.now - countStarted
                        backlogSchedule.counted(startedAt: countStarted, took: took)
                        let pending = lines.reduce(0) { $0 + $1.backlog }
                        logger.debug("counted the backlog", metadata: ["pending": "\(pending)", "took_ms": "\(took.milliseconds)"])
                        for line in lines {
                            metrics.backlog(subscriber: line.subscriber, pending: line.backlog, oldestSeconds: line.oldestSeconds, dead: line.dead)
                        }
                        health.update { $0.backlog = pending }
                        metrics.captureSlot(try await CaptureStore.state(on: live))
                    }
                    if ContinuousClock.now - housekeptAt >= configuration.housekeepingInterval {
                        housekeptAt = .now
                        deadlinePairs = try await housekeeping(on: live, deadlinePairs: deadlinePairs)
                    }
                }
            } catch {
                if !Task.isCancelled { logger.warning("janitor failed", metadata: ["error": "\(error)"]) }
                await connection?.close()
                connection = nil
            }
            try? await Task.sleep(for: configuration.janitorInterval)
        }
        await connection?.close()
    }

    /// Completes erasures every recipient has acknowledged, applies retention, and reports
    /// deliveries past or near their deadline (metric and a warning per subscriber and type).
    private func housekeeping(on db: PostgresConnection, deadlinePairs: Set<[String]>) async throws -> Set<[String]> {
        let configuration = self.configuration
        for completion in try await ErasureStore.completeDue(on: db) {
            logger.notice("erasure complete: every recipient acknowledged subject.erased; personal data removed, receipt kept", metadata: [
                "erasure": "\(completion.erasureID)", "changes": "\(completion.changes)",
            ])
            metrics.erasuresCompleted(1)
        }
        let pass = try await RetentionStore.run(payloadAge: configuration.payloadRetention, receiptAge: configuration.receiptRetention, on: db)
        metrics.retention(pruned: pass.pruned, deleted: pass.deleted)
        if pass.pruned > 0 || pass.deleted > 0 {
            logger.info("retention", metadata: ["payloads_pruned": "\(pass.pruned)", "receipts_deleted": "\(pass.deleted)"])
        }
        let report = try await DeadlineReport.load(deadlines: configuration.deadlines, on: db)
        for line in report.lines {
            let metadata: Logger.Metadata = [
                "subscriber": "\(line.subscriber)", "event_type": "\(line.eventType)", "deadline_seconds": "\(line.deadlineSeconds)",
                "past_deadline": "\(line.past)", "near_deadline": "\(line.near)",
                "earliest_deadline": "\(EventEnvelope.timestamp(line.earliestDeadline))",
            ]
            if line.past > 0 {
                logger.warning("deliveries past their propagation deadline", metadata: metadata)
            } else {
                logger.warning("deliveries near their propagation deadline", metadata: metadata)
            }
        }
        return metrics.deadlines(report, previously: deadlinePairs)
    }

    // MARK: - Pipeline

    private func pipeline() async throws {
        var state = DispatchState(maxInFlight: configuration.maxInFlight)
        var configuration = self.configuration
        var connection: PostgresConnection?
        var failures = 0
        var subscribers: [Int64: Subscriber] = [:]
        var subscribersLoadedAt = ContinuousClock.now - .seconds(3600)
        var installationID = ""
        /// This instance told the database it is idle (so the trigger NOTIFYs it).
        var armed = false
        var ownLeasesCheckedAt = ContinuousClock.now

        while !stopping.load(ordering: .relaxed) && !Task.isCancelled {
            do {
                configuration = self.configuration
                state.maxInFlight = configuration.maxInFlight
                state.instances = liveInstances.load(ordering: .relaxed)
                let db: PostgresConnection
                if let connection {
                    if let mismatch = schemaMismatchSeen.withLock({ $0 }) {
                        // Found by the janitor: connect anew, where the check holds every
                        // further try until the schema matches this binary.
                        throw mismatch
                    }
                    db = connection
                } else {
                    db = try await PostgresConnection.connect(database, logger: logger)
                    try await DeliveryStore.prepareSession(db)
                    try await Migrator.requireCurrent(db)
                    schemaMismatchSeen.withLock { $0 = nil }
                    installationID = try await DeliveryStore.installationID(on: db)
                    // Registered even when polling only: rate limits are shared among the daemons here.
                    try await DeliveryStore.setIdle(false, instance: instanceID, on: db)
                    armed = false
                    connection = db
                    health.update {
                        $0.databaseReady = true
                        $0.schemaVersion = Migrations.latestVersion
                    }
                    logger.info("relay connected", metadata: ["backend_pid": "\(db.backendPID)"])
                }

                if subscribersStale.exchange(false, ordering: .relaxed) || ContinuousClock.now - subscribersLoadedAt > configuration.pollInterval {
                    subscribers = try await SubscriberStore.all(on: db, keyring: keyring, keeping: subscribers, logger: logger)
                    subscribersLoadedAt = .now
                }

                if ContinuousClock.now - ownLeasesCheckedAt >= configuration.janitorInterval {
                    ownLeasesCheckedAt = .now
                    try await takeBackOwnLeases(on: db)
                }

                // One round trip: write back what finished, fan out one batch, claim. One
                // batch per round, then claim: draining the whole outbox first let a steady
                // stream of writes starve delivery (found by the benchmark). A full batch
                // counts as work, so the next round comes at once.
                let lease = (subscribers.values.map(\.limits.timeout).max() ?? .seconds(10)) + configuration.leaseMargin
                let roundStarted = ContinuousClock.now
                let round = try await runRound(&state, subscribers: subscribers, lease: lease, configuration: configuration, on: db)
                let fannedOutTotal = round.fannedOut
                var claimed = round.claimed
                if !claimed.isEmpty && ContinuousClock.now - roundStarted > configuration.leaseMargin / 2 {
                    claimed = try await keepLeases(of: claimed, lease: lease, roundTook: ContinuousClock.now - roundStarted, on: db)
                }
                metrics.fannedOut(fannedOutTotal)
                // Each claimed delivery takes its slot and its lease here. Its request is built,
                // signed and started on the sending queue, so that this loop's next round trip
                // runs meanwhile (see ``startAll``); but a rate-limited subscriber's start here,
                // at the instant each spends its token, so that no delay in that queue bunches
                // two rounds' requests together.
                var batch: [(ClaimedDelivery, Subscriber)] = []
                var paced: [(ClaimedDelivery, Subscriber)] = []
                batch.reserveCapacity(claimed.count)
                for delivery in claimed {
                    guard let subscriber = subscribers[delivery.subscriberID] else {
                        // Added since the last refresh: fetch it next round; give the claim back now.
                        try await DeliveryStore.releaseLeases(owner: instanceID, ids: [delivery.id], on: db)
                        subscribersLoadedAt = ContinuousClock.now - .seconds(3600)
                        continue
                    }
                    leased.withLock { $0[delivery.id] = lease }
                    if subscriber.limits.ratePerSecond == nil {
                        state.started(delivery)
                        batch.append((delivery, subscriber))
                    } else {
                        paced.append((delivery, subscriber))
                    }
                }
                let envelope = EventEnvelope(source: configuration.eventSource ?? "urn:consent-sync:\(installationID)")
                let webhookIDPrefix = "msg_\(installationID.prefix(8))_"
                for delivery in paced {
                    state.started(delivery.0)
                    startAll([delivery], envelope: envelope, webhookIDPrefix: webhookIDPrefix)
                }
                if !batch.isEmpty {
                    sending.async { [self, batch] in
                        startAll(batch, envelope: envelope, webhookIDPrefix: webhookIDPrefix)
                    }
                }
                failures = 0
                let inFlight = state.inFlightTotal
                let known = subscribers.count
                health.update {
                    $0.lastLoopTurn = .now
                    $0.lastError = nil
                    $0.inFlight = inFlight
                    $0.subscribers = known
                }
                let idle = round.claimed.isEmpty && fannedOutTotal == 0 && finished.withLock({ $0.isEmpty })
                if idle && round.heldBack {
                    // This round claimed nothing for a subscriber whose failures it wrote, though
                    // it may have work due (another subject's): claim it now, not at the next wake.
                    continue
                }
                if configuration.listen && armed && !idle {
                    // Busy again: writers need not NOTIFY while this instance keeps looking.
                    try await DeliveryStore.setIdle(false, instance: instanceID, on: db)
                    armed = false
                }
                if idle && configuration.listen && !armed {
                    // Arm, then look once more before sleeping: a change committed before the
                    // flag was visible did not NOTIFY, but this round finds it. (One whose
                    // trigger ran before the flag and that commits after this round is left
                    // to the poll interval.)
                    try await DeliveryStore.setIdle(true, instance: instanceID, on: db)
                    armed = true
                    continue
                }
                if idle {
                    await doorbell.wait(timeout: state.nextWake(pollInterval: configuration.pollInterval))
                }
            } catch {
                if stopping.load(ordering: .relaxed) || Task.isCancelled { break }
                failures += 1
                let delay = Backoff(initial: .milliseconds(200), maximum: .seconds(15)).delay(forRetry: failures)
                var error = error
                // A refused hand-over is the database's answer on a working connection.
                var lostConnection = (error as? PostgresError)?.isConnectionError ?? !(error is HandOverRefused)
                if !lostConnection, let connection, let mismatch = await Self.schemaMismatch(on: connection) {
                    // `consent-sync migrate` of a newer version ran while this daemon kept
                    // going: say so rather than the statement's own error, and connect anew,
                    // where the same check holds every further try until the binary matches.
                    logger.error("the database schema changed under this daemon; restart it with the matching consent-sync", metadata: ["statement_error": "\(error)"])
                    error = mismatch
                    lostConnection = true
                }
                logger.error("pipeline step failed; retrying", metadata: ["error": "\(error)", "retry_in_ms": "\(delay.milliseconds)"])
                metrics.databaseError()
                health.update {
                    $0.lastError = "\(error)"
                    $0.lastLoopTurn = .now
                    if lostConnection { $0.databaseReady = false }
                }
                if lostConnection {
                    await connection?.close()
                    connection = nil
                }
                try? await Task.sleep(for: delay)
            }
        }

        // Draining: no new claims. Every claimed request has started (or been recorded) once
        // the sending queue is through what the loop gave it; let them finish for a while.
        await withCheckedContinuation { (started: CheckedContinuation<Void, Never>) in
            sending.async { started.resume() }
        }
        let deadline = ContinuousClock.now + configuration.drainTimeout
        while state.inFlightTotal > finished.withLock({ $0.count }) && ContinuousClock.now < deadline && !Task.isCancelled {
            await doorbell.wait(timeout: min(.milliseconds(200), deadline - .now))
        }
        // Out of time (or stopping at once): cut the rest short; each is then recorded as
        // interrupted, by its completion, here or on the HTTP client's thread.
        for request in outstanding.withLock({ Array($0.values) }) {
            request.cancel()
        }
        // A completion already running on that thread appends its record a moment later. (In a
        // task of its own: this one may be cancelled, which would cut every wait short.)
        let unanswered = state.inFlightTotal
        await Task {
            let cancelled = ContinuousClock.now + .seconds(1)
            while unanswered > finished.withLock({ $0.count }) && ContinuousClock.now < cancelled {
                await doorbell.wait(timeout: .milliseconds(20))
            }
        }.value

        // Every request has ended (finished, or cut short and recorded as interrupted).
        // Write the last results even when this task was cancelled: a task of its own is not.
        let leftover = connection
        let finalState = state
        await Task {
            var state = finalState
            do {
                let db: PostgresConnection
                if let leftover, leftover.isConnected { db = leftover } else { db = try await PostgresConnection.connect(database, logger: logger) }
                try await recordFinished(&state, on: db)
                try? await DeliveryStore.removeListener(instance: instanceID, on: db)
                await db.close()
            } catch {
                logger.error("could not record the last results; their leases will expire and they will be sent again", metadata: ["error": "\(error)"])
            }
            await leftover?.close()
        }.value
        logger.info("relay stopped")
    }

    /// After a round slow enough that another instance may have taken back what it claimed (its
    /// lease began when the round did): renews those leases and returns the deliveries still
    /// this instance's, so that none is sent by two instances at once, or twice by this one.
    /// Those lost are someone else's now, or pending again.
    private func keepLeases(of claimed: [ClaimedDelivery], lease: Duration, roundTook: Duration, on db: PostgresConnection) async throws -> [ClaimedDelivery] {
        let kept = try await DeliveryStore.keepLeases(owner: instanceID, of: claimed, lease: lease, on: db)
        if kept.count < claimed.count {
            logger.warning("a slow round lost leases before sending; left to whoever holds them now", metadata: [
                "round_ms": "\(roundTook.milliseconds)", "lost": "\(claimed.count - kept.count)",
            ])
        }
        return kept
    }

    /// Takes back this instance's own leases that ran out on deliveries it no longer works on
    /// (a claim or hand-over whose answer it lost or could not read, a result it could not
    /// write), so that they are sent again. Only here, between rounds: during one, a claimed
    /// delivery is leased before it is known here, and the round may stall past its lease.
    private func takeBackOwnLeases(on db: PostgresConnection) async throws {
        let workingOn = leased.withLock { Array($0.keys) }
        let expired = try await DeliveryStore.expireLeases(.ofOwn(instanceID, workingOn: workingOn), on: db)
        if expired > 0 {
            logger.warning("took back expired leases of its own", metadata: ["count": "\(expired)"])
            metrics.expired(expired)
        }
    }

    /// One round's statements in one pipeline: record the finished attempts (and track failures),
    /// fan out one batch, claim. Each is its own transaction, in that order, so the claim sees
    /// the slots and un-parked deliveries of the results just written.
    private func runRound(
        _ state: inout DispatchState,
        subscribers: [Int64: Subscriber],
        lease: Duration,
        configuration: Configuration,
        on db: PostgresConnection
    ) async throws -> (fannedOut: Int, claimed: [ClaimedDelivery], heldBack: Bool) {
        let records = finished.withLock { records in
            defer { records.removeAll(keepingCapacity: true) }
            return records
        }
        // The slots of finished requests are free whatever the database answers; `state` takes
        // this plan only once the results are written (on failure they are tried again).
        var planned = state
        for record in records { planned.finished(record) }
        let outcomes = Self.outcomes(of: records)
        // A subscriber that only failed in these results may be disabled by them (410 Gone, or
        // failing for too long), which is known only once they are written: claim nothing for
        // it in this round's pipeline; the next round sees whether it is still enabled.
        var holdBack = Set(outcomes.filter { !$0.value }.map(\.key))
        for record in records where record.disableSubscriber != nil { holdBack.insert(record.subscriberID) }
        // A delivery that ended, with a later one of its subject waiting when it was claimed,
        // hands that one straight to this instance in the write-back's transaction (one write
        // of that row instead of an un-park and a claim), into the slot it frees and holds for
        // it: not for a subscriber held back or rate-limited (its tokens are the claim's).
        let handOver = handOverFailures.load(ordering: .relaxed) >= 3 ? [] : records.filter { record in
            record.followed && record.verdict != .retry && !holdBack.contains(record.subscriberID)
                && subscribers[record.subscriberID].map { $0.enabled && $0.limits.ratePerSecond == nil } == true
        }
        for record in handOver { planned.reserve(record.subscriberID) }
        let budgets = planned.budgets(for: subscribers.values.filter { !holdBack.contains($0.id) }, perRound: configuration.claimBatchSize)

        var groups: [[PostgresStatement]] = []
        if !records.isEmpty {
            groups.append(DeliveryStore.recordStatements(records, owner: instanceID, handOver: handOver.map(\.deliveryID), lease: lease))
        }
        if !outcomes.isEmpty {
            groups.append([DeliveryStore.trackFailuresStatement(outcomes, disableAfter: configuration.disableAfterFailing)])
        }
        groups.append(DeliveryStore.fanOutStatements(limit: configuration.fanOutBatchSize))
        if !budgets.isEmpty {
            groups.append([DeliveryStore.claimStatement(owner: instanceID, budgets: budgets, lease: lease)])
        }
        let results: [Result<PostgresRows, PostgresError>]
        do {
            results = try await db.pipeline(groups)
        } catch {
            keepForAnotherTry(records)
            throw error
        }
        var next = results.makeIterator()

        var handedOver: [ClaimedDelivery] = []
        var handOverError: (any Error)?
        if !records.isEmpty {
            _ = next.next()  // the lock
            let written = next.next()!
            // The hand-over is the third statement of the write-back's transaction.
            let handed = handOver.isEmpty ? nil : next.next()!
            if case .failure(let error) = written, error.isConnectionError {
                keepForAnotherTry(records)
                throw error
            }
            var applied: Set<Int64>
            switch written {
            case .success(let rows):
                if case .failure(let error) = handed {
                    // Rolled back with it: the results are written again next round.
                    keepForAnotherTry(records)
                    if error.isConnectionError { throw error }
                    let failures = handOverFailures.add(1, ordering: .relaxed).newValue
                    throw HandOverRefused(underlying: error, claimingInstead: failures >= 3)
                }
                applied = try DeliveryStore.recordResult(rows)
                if case .success(let rows) = handed {
                    handOverFailures.store(0, ordering: .relaxed)
                    do {
                        handedOver = try DeliveryStore.claimResult(rows)
                    } catch {
                        // Leased to this instance but unreadable: as with a claim, their leases
                        // run out and they are sent again.
                        handOverError = error
                    }
                }
            case .failure(let error):
                // One bad row must not hold up every result behind it: write them one by one
                // (each un-parks what follows it; the hand-over was skipped with the rest).
                logger.error("writing results failed; writing them one by one", metadata: ["error": "\(error)", "count": "\(records.count)"])
                applied = []
                do {
                    for record in records {
                        applied.formUnion(try await recordAlone(record, on: db))
                    }
                } catch {
                    // Lost the connection half-way: all of them again next time (applied ones are fenced).
                    keepForAnotherTry(records)
                    throw error
                }
            }
            leased.withLock { leases in
                for record in records { leases[record.deliveryID] = nil }
            }
            for record in records where !applied.contains(record.deliveryID) {
                logger.warning("result not applied: the lease was lost meanwhile", metadata: ["delivery": "\(record.deliveryID)"])
            }
            // Newest-wins: a delivery waiting again gives way to a newer one that came meanwhile.
            let waitingAgain = records.filter { $0.newestWins && $0.verdict == .retry && applied.contains($0.deliveryID) }
            if !waitingAgain.isEmpty {
                try await DeliveryStore.supersede(subjects: waitingAgain.map { ($0.subscriberID, $0.subject) }, on: db)
            }
        }
        for record in handOver { planned.unreserve(record.subscriberID) }
        state = planned

        var failing: [Int64] = []
        if !outcomes.isEmpty {
            switch next.next()! {
            case .success(let rows):
                failing = try DeliveryStore.trackFailuresResult(rows, disableAfter: configuration.disableAfterFailing)
            case .failure(let error):
                logger.warning("could not track failing subscribers this round", metadata: ["error": "\(error)"])
            }
        }

        var stepError = handOverError
        _ = next.next()  // the fan-out's lock
        var fannedOut = 0
        do {
            let fanOut = try DeliveryStore.fanOutResult(try next.next()!.get())
            fannedOut = fanOut.changes
            if let range = fanOut.newChanges {
                try await DeliveryStore.supersede(changes: range, on: db)
            }
        } catch {
            stepError = error
        }
        var claimed = handedOver
        if !budgets.isEmpty {
            do {
                claimed += try DeliveryStore.claimResult(try next.next()!.get())
            } catch {
                stepError = stepError ?? error
            }
        }
        do {
            try await disableSubscribers(failing: failing, records: records, on: db)
        } catch {
            stepError = stepError ?? error
        }
        if let stepError {
            // Claimed deliveries are leased to this instance: send them even when another step
            // failed; the failed step runs again next round.
            guard !claimed.isEmpty else { throw stepError }
            logger.error("pipeline step failed; sending what was claimed", metadata: ["error": "\(stepError)"])
            metrics.databaseError()
        }
        return (fannedOut, claimed, !holdBack.isEmpty)
    }

    private func recordFinished(_ state: inout DispatchState, on db: PostgresConnection) async throws {
        let records = finished.withLock { records in
            defer { records.removeAll(keepingCapacity: true) }
            return records
        }
        guard !records.isEmpty else { return }
        var applied: Set<Int64>
        do {
            applied = try await DeliveryStore.record(records, owner: instanceID, on: db)
        } catch let error as PostgresError where !error.isConnectionError {
            // One bad row must not hold up every result behind it: write them one by one.
            logger.error("writing results failed; writing them one by one", metadata: ["error": "\(error)", "count": "\(records.count)"])
            applied = []
            for record in records {
                applied.formUnion(try await recordAlone(record, on: db))
            }
        } catch {
            keepForAnotherTry(records)
            throw error
        }
        leased.withLock { leases in
            for record in records { leases[record.deliveryID] = nil }
        }
        try await disableFailingSubscribers(records, on: db)
        let waitingAgain = records.filter { $0.newestWins && $0.verdict == .retry && applied.contains($0.deliveryID) }
        try await DeliveryStore.supersede(subjects: waitingAgain.map { ($0.subscriberID, $0.subject) }, on: db)
        for record in records {
            state.finished(record)
            if !applied.contains(record.deliveryID) {
                logger.warning("result not applied: the lease was lost meanwhile", metadata: ["delivery": "\(record.deliveryID)"])
            }
        }
    }

    /// Puts results whose write-back failed back in front of the queue for the next round:
    /// nothing is lost while the process lives. The write may have committed before the
    /// answer was lost, so the next one logs their attempts only where they are not yet.
    private func keepForAnotherTry(_ records: [AttemptRecord]) {
        let marked = records.map { record in
            var record = record
            record.mayBeLogged = true
            return record
        }
        finished.withLock { $0.insert(contentsOf: marked, at: 0) }
    }

    /// Writes one result; if the database refuses it (a receiver's answer it cannot store),
    /// writes it again without the answer's text, and as a last resort leaves the delivery to
    /// its lease, which expires and sends it again: logged, never lost.
    private func recordAlone(_ record: AttemptRecord, on db: PostgresConnection) async throws -> Set<Int64> {
        do {
            return try await DeliveryStore.record([record], owner: instanceID, on: db)
        } catch let error as PostgresError where !error.isConnectionError {
            var plain = record
            plain.responseExcerpt = record.responseExcerpt.map { _ in "(answer not storable: \(error.sqlState ?? "?"))" }
            plain.error = record.error.map { String($0.unicodeScalars.filter(\.isASCII).map(Character.init)) }
            do {
                return try await DeliveryStore.record([plain], owner: instanceID, on: db)
            } catch let second as PostgresError where !second.isConnectionError {
                logger.error("cannot write a result; the delivery will be sent again when its lease expires", metadata: [
                    "delivery": "\(record.deliveryID)", "error": "\(second)",
                ])
                return []
            }
        }
    }

    /// 410 Gone disables a subscriber at once (Standard Webhooks); so does failing without
    /// a single success for `disableAfterFailing`. Its deliveries stay, and new ones keep
    /// coming: enabling it sends them all, in order.
    private func disableFailingSubscribers(_ records: [AttemptRecord], on db: PostgresConnection) async throws {
        let failing = try await DeliveryStore.trackFailures(Self.outcomes(of: records), disableAfter: configuration.disableAfterFailing, on: db)
        try await disableSubscribers(failing: failing, records: records, on: db)
    }

    /// Per subscriber: whether any of these attempts succeeded (interrupted ones say nothing).
    private static func outcomes(of records: [AttemptRecord]) -> [Int64: Bool] {
        var outcomes: [Int64: Bool] = [:]
        for record in records where !record.interrupted {
            outcomes[record.subscriberID] = (outcomes[record.subscriberID] ?? false) || record.verdict == .delivered
        }
        return outcomes
    }

    /// After a statement failed on a connection that still works: whether the schema is no
    /// longer the one this binary was built for (nil when it is, or when that cannot be read).
    static func schemaMismatch(on db: PostgresConnection) async -> SchemaError? {
        do {
            try await Migrator.requireCurrent(db)
            return nil
        } catch let error as SchemaError {
            return error
        } catch {
            return nil
        }
    }

    /// Disables the subscribers failing for too long (`failing`, from failure tracking) and
    /// those whose receiver answered 410 Gone.
    private func disableSubscribers(failing: [Int64], records: [AttemptRecord], on db: PostgresConnection) async throws {
        var toDisable: [Int64: String] = [:]
        let configuration = self.configuration
        for id in failing {
            toDisable[id] = "every attempt failed for more than \(Int((configuration.disableAfterFailing ?? .zero).seconds)) s (relay.disable_after_failing_seconds)"
        }
        for record in records {
            if let reason = record.disableSubscriber { toDisable[record.subscriberID] = reason }
        }
        for (id, reason) in toDisable {
            if let change = try await SubscriberStore.disable(id: id, reason: reason, actor: "consent-sync", on: db), change.changed {
                logger.warning("subscriber disabled; its deliveries are kept until it is enabled again", metadata: [
                    "subscriber": "\(change.subscriber)", "reason": "\(reason)",
                ])
            }
            subscribersStale.store(true, ordering: .relaxed)
        }
    }

    // MARK: - Sending

    /// Starts one round's claimed deliveries, on the sending queue: their bodies (one per change
    /// where subscribers take the same one), signatures and requests. Their slots, tokens and
    /// leases were taken by the loop, which meanwhile runs its next round.
    private func startAll(_ batch: [(ClaimedDelivery, Subscriber)], envelope: EventEnvelope, webhookIDPrefix: String) {
        var bodies: [Int64: [UInt8]] = [:]
        for (delivery, subscriber) in batch {
            let body: [UInt8]
            if subscriber.needsOwnBody {
                // Fewer attributes or a pseudonymous subject id: its own bytes.
                body = envelope.body(for: delivery.change.minimised(fields: subscriber.fields, pseudonymKey: subscriber.pseudonymKey))
            } else {
                body = bodies[delivery.change.id] ?? envelope.body(for: delivery.change)
                bodies[delivery.change.id] = body
            }
            let webhookID = webhookIDPrefix + String(delivery.id)
            let replayOf = delivery.replayOf.map { webhookIDPrefix + String($0) }
            // The attempt starts now: its started_at and the signature's timestamp.
            start(delivery, to: subscriber, webhookID: webhookID, replayOf: replayOf, body: body, startedAt: Date())
        }
    }

    /// Starts one attempt: its request goes to the HTTP client's thread, where its completion
    /// turns the answer into a record for the next round. No task per request: that was a task
    /// and two thread hand-overs for each delivery.
    private func start(
        _ delivery: ClaimedDelivery, to subscriber: Subscriber, webhookID: String, replayOf: String?, body: [UInt8], startedAt: Date
    ) {
        if let problem = delivery.change.problem {
            // Captured from a row that cannot make an event (no subject id, an unmapped status):
            // recorded as dead with the reason, for an operator to see; nothing is sent.
            logger.warning("change cannot be sent; recorded as dead", metadata: [
                "subscriber": "\(subscriber.name)", "delivery": "\(delivery.id)", "change": "\(delivery.change.id)", "reason": "\(problem)",
            ])
            metrics.delivery(subscriber: subscriber.name, outcome: "dead")
            finished.withLock {
                $0.append(.init(delivery, verdict: .dead, status: nil, error: "not sent: \(problem)", excerpt: nil, startedAt: startedAt, duration: .zero))
            }
            // On the sending queue the loop may already be waiting: wake it for this record.
            doorbell.ring()
            return
        }
        let clock = ContinuousClock.now
        let handle: HTTPRequestHandle
        do {
            handle = try http.prepare(request(for: delivery, to: subscriber, webhookID: webhookID, replayOf: replayOf, body: body, startedAt: startedAt))
        } catch {
            let attempt = record(of: delivery, to: subscriber, result: .failure(error), startedAt: startedAt, since: clock)
            finished.withLock { $0.append(attempt) }
            doorbell.ring()
            return
        }
        outstanding.withLock { $0[delivery.id] = handle }
        handle.start { [self] result in
            let attempt = record(of: delivery, to: subscriber, result: result, startedAt: startedAt, since: clock)
            outstanding.withLock { $0[delivery.id] = nil }
            finished.withLock { $0.append(attempt) }
            doorbell.ring()
        }
    }

    /// The signed request of one attempt.
    private func request(
        for delivery: ClaimedDelivery, to subscriber: Subscriber, webhookID: String, replayOf: String?, body: [UInt8], startedAt: Date
    ) -> HTTPRequest {
        let message = WebhookMessage(
            id: webhookID,
            timestamp: Int64(startedAt.timeIntervalSince1970),
            body: body,
            secrets: subscriber.signingSecrets(at: startedAt),
            userAgent: configuration.userAgent
        )
        var request = HTTPRequest(
            url: subscriber.url,
            method: "POST",
            headers: message.headers,
            body: message.body,
            timeout: subscriber.limits.timeout,
            connectTimeout: min(subscriber.limits.timeout, .seconds(10)),
            maxResponseBytes: configuration.responseExcerptBytes
        )
        if let replayOf {
            // A replay: a new webhook-id for an event the receiver may have seen before.
            request.headers.append(HTTPHeader(name: "consent-sync-replay-of", value: replayOf))
        }
        if !subscriber.tls.isEmpty {
            request.tls = TLSOptions(
                caBundlePath: subscriber.tls.caBundlePath,
                clientCertificatePath: subscriber.tls.clientCertificatePath,
                clientKeyPath: subscriber.tls.clientKeyPath
            )
        }
        return request
    }

    /// What one attempt's answer, or error, means for its delivery (the retry policy's verdict),
    /// logged and counted.
    private func record(
        of delivery: ClaimedDelivery, to subscriber: Subscriber, result: Result<HTTPResponse, HTTPClientError>,
        startedAt: Date, since clock: ContinuousClock.Instant
    ) -> AttemptRecord {
        // Built only when a line is logged: most deliveries log at debug level, which is off.
        func metadata(_ extra: Logger.Metadata) -> Logger.Metadata {
            var metadata: Logger.Metadata = [
                "subscriber": "\(subscriber.name)", "delivery": "\(delivery.id)",
                "change": "\(delivery.change.id)", "attempt": "\(delivery.attempt)",
            ]
            metadata.merge(extra) { _, new in new }
            return metadata
        }

        let outcome: AttemptOutcome
        var status: Int?
        var excerpt: String?
        var errorText: String?
        var response: HTTPResponse?
        switch result {
        case .success(let answer):
            response = answer
            status = answer.status
            excerpt = String(decoding: answer.body, as: UTF8.self)
            outcome = .response(status: answer.status, retryAfter: answer.header("retry-after"))
        case .failure(let error):
            if error.code == .cancelled || error.code == .shutdown {
                return interrupted(delivery, startedAt: startedAt, since: clock)
            }
            errorText = error.description
            outcome = .transportError(message: error.description, retryable: error.isRetryable)
        }
        let duration = ContinuousClock.now - clock
        // Looked up once for the common path: each lookup hashes the subscriber's name under a lock.
        let counters = metrics.handles(for: subscriber.name)
        counters.attempted(in: duration)

        let policy = subscriber.limits.retryPolicy(from: configuration.retry)
        var decision = policy.decide(outcome, attempt: delivery.retryAttempt, age: delivery.age + duration)
        var disable: String?
        if status == 410 {
            // Gone: the subscriber is disabled and this delivery waits with the others.
            disable = "receiver answered 410 Gone"
            decision = .retry(after: .zero)
        }
        var outcomeMetadata: Logger.Metadata {
            var extra: Logger.Metadata = ["duration_ms": "\(duration.milliseconds)"]
            if let status { extra["status"] = "\(status)" }
            return extra
        }
        var record: AttemptRecord
        switch decision {
        case .delivered:
            logger.debug("delivered", metadata: metadata(outcomeMetadata))
            counters.delivered(sinceCommit: .milliseconds(Int64(Date().timeIntervalSince(delivery.change.changedAt) * 1000)))
            record = .init(delivery, verdict: .delivered, status: status, error: nil, excerpt: excerpt, startedAt: startedAt, duration: duration)
        case .retry(let after):
            var extra = outcomeMetadata
            extra["retry_in_ms"] = "\(after.milliseconds)"
            if let errorText { extra["error"] = "\(errorText)" }
            logger.info("delivery failed; will retry", metadata: metadata(extra))
            metrics.delivery(subscriber: subscriber.name, outcome: "retry")
            record = .init(delivery, verdict: .retry, retryIn: after, status: status, error: errorText, excerpt: excerpt, startedAt: startedAt, duration: duration, disable: disable)
        case .dead(let reason):
            var extra = outcomeMetadata
            extra["reason"] = "\(reason)"
            logger.warning("delivery dead", metadata: metadata(extra))
            metrics.delivery(subscriber: subscriber.name, outcome: "dead")
            record = .init(delivery, verdict: .dead, status: status, error: errorText ?? reason, excerpt: excerpt, startedAt: startedAt, duration: duration)
        }
        if let response {
            record.answer = ReceiverAnswer.parse(response.body)
        }
        record.subject = delivery.change.subject
        record.newestWins = subscriber.newestWins
        return record
    }

    /// A request cut short by shutdown: back to pending at once, the attempt logged.
    private func interrupted(_ delivery: ClaimedDelivery, startedAt: Date, since clock: ContinuousClock.Instant) -> AttemptRecord {
        var record = AttemptRecord(delivery, verdict: .retry, status: nil, error: "interrupted by shutdown", excerpt: nil, startedAt: startedAt, duration: ContinuousClock.now - clock)
        record.interrupted = true
        return record
    }
}

extension AttemptRecord {
    init(_ delivery: ClaimedDelivery, verdict: Verdict, retryIn: Duration = .zero, status: Int?, error: String?, excerpt: String?, startedAt: Date, duration: Duration, disable: String? = nil) {
        self.init(
            deliveryID: delivery.id,
            subscriberID: delivery.subscriberID,
            attempt: delivery.attempt,
            verdict: verdict,
            disableSubscriber: disable,
            retryIn: retryIn,
            status: status,
            error: error,
            responseExcerpt: excerpt,
            startedAt: startedAt,
            duration: duration
        )
        self.followed = delivery.followed
    }
}

/// The database refused a hand-over (not a lost connection): the results written with it were
/// rolled back and are written again next round; after three refusals in a row, without
/// hand-overs. Logged once, by the relay loop, as the round's failure.
struct HandOverRefused: Error, CustomStringConvertible {
    var underlying: PostgresError
    /// This was the third refusal in a row: from now on the next deliveries are claimed.
    var claimingInstead: Bool

    var description: String {
        "handing over the next deliveries failed\(claimingInstead ? "; they are claimed instead from now on" : ""): \(underlying)"
    }
}
