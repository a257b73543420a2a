import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import Foundation
import Synchronization

/// One step of a fault schedule: `action` runs `at` after the schedule starts.
public struct FaultStep: Sendable {
    public var at: Duration
    public var name: String
    public var action: @Sendable () async throws -> Void

    public init(at: Duration, _ name: String, _ action: @escaping @Sendable () async throws -> Void) {
        self.at = at
        self.name = name
        self.action = action
    }
}

/// The figures of one scenario, printed as one line.
public struct ScenarioOutcome: Sendable, CustomStringConvertible {
    public var name: String
    public var seed: UInt64
    public var report: InvariantChecker.Report
    /// From the end of the last fault to quiescence; nil when it never went quiet.
    public var drain: Duration?
    public var faults: Int
    public var daemonStarts: Int
    public var daemonKills: Int
    public var writer: ScenarioWriter.Summary?

    public var description: String {
        let drainText = drain.map { String(format: "%.2fs", $0.secondsValue) } ?? "never"
        var line = "scenario \(name): changes_written=\(report.changes) deliveries=\(report.deliveries) requests=\(report.requests) duplicates=\(report.duplicates) duplicates_after_timeout=\(report.duplicatesAfterTimeout) dead=\(report.dead) drain_after_last_fault=\(drainText) faults=\(faults) daemon_starts=\(daemonStarts) kills=\(daemonKills)"
        if let writer {
            line += " rolled_back_tx=\(writer.rolledBackTransactions) failed_tx=\(writer.failedTransactions)"
        }
        line += " violations=\(report.violations.count) seed=\(seed)"
        return line
    }
}

/// Runs one scenario: real daemons, scripted receivers, a writer, faults on a schedule, then
/// quiescence and the invariant checks. Everything it started is stopped at the end, also
/// when the scenario fails.
///
/// ```swift
/// try await ScenarioHarness.run("kills", database: ScenarioDatabase(testDatabase)) { scenario in
///     let crm = try await scenario.addReceiver("crm")
///     let fleet = try await scenario.startDaemons(1)
///     async let written = ScenarioWriter.run(plan, on: scenario.database, seed: scenario.seed)
///     try await scenario.runSchedule([FaultStep(at: .seconds(2), "kill") { await fleet.kill(0); try fleet.start(0) }])
///     let outcome = try await scenario.finish(writer: await written, expectations: .init(duplicatesAllowed: true))
///     #expect(outcome.report.isClean, "\(outcome.report)")
/// }
/// ```
public final class ScenarioHarness: Sendable {
    public let name: String
    public let database: ScenarioDatabase
    /// Seeds every random choice of the scenario; printed in the summary.
    public let seed: UInt64
    private let state: Mutex<State>

    private struct State {
        var receivers: [ScriptedReceiver] = []
        var fleet: DaemonFleet?
        var lastFault: ContinuousClock.Instant?
        var faults: [String] = []
        let started = ContinuousClock.now
    }

    private init(name: String, database: ScenarioDatabase, seed: UInt64) {
        self.name = name
        self.database = database
        self.seed = seed
        self.state = Mutex(State())
    }

    /// Runs `body` with a new harness and stops every process and receiver it started afterwards.
    @discardableResult
    public static func run<T: Sendable>(
        _ name: String,
        database: ScenarioDatabase,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (ScenarioHarness) async throws -> T
    ) async throws -> T {
        let harness = ScenarioHarness(name: name, database: database, seed: SeededGenerator.scenarioSeed)
        do {
            let result = try await body(harness)
            await harness.shutdown()
            return result
        } catch {
            print("scenario \(name) failed (seed \(harness.seed)): \(error)\n\(harness.fleet?.logs ?? "")\nfaults: \(harness.faultLog.joined(separator: "; "))")
            await harness.shutdown()
            throw error
        }
    }

    public var fleet: DaemonFleet? { state.withLock { $0.fleet } }
    public var receivers: [ScriptedReceiver] { state.withLock { $0.receivers } }
    public var faultLog: [String] { state.withLock { $0.faults } }

    /// Time since the harness started.
    public var elapsed: Duration { ContinuousClock.now - state.withLock { $0.started } }

    /// Starts a receiver and registers it as subscriber `name`.
    @discardableResult
    public func addReceiver(
        _ name: String,
        purposes: [String]? = nil,
        eventTypes: [String]? = nil,
        limits: Subscriber.Limits = .init(maxInFlight: 8, timeout: .seconds(2)),
        script: @escaping ScriptedReceiver.Script = { _ in .accept }
    ) async throws -> ScriptedReceiver {
        let receiver = try await ScriptedReceiver.start(name: name, script: script)
        state.withLock { $0.receivers.append(receiver) }
        _ = try await database.withConnection { connection in
            try await SubscriberStore.add(
                .init(name: name, url: receiver.url, secret: .generate(), purposes: purposes, eventTypes: eventTypes, limits: limits),
                on: connection
            )
        }
        return receiver
    }

    /// Starts `count` daemons with ``DaemonFleet/scenarioEnvironment(_:_:)`` plus `extra`, and
    /// waits until each is connected.
    @discardableResult
    public func startDaemons(_ count: Int, environment extra: [String: String] = [:]) async throws -> DaemonFleet {
        let fleet = DaemonFleet(count: count, environment: DaemonFleet.scenarioEnvironment(database, extra))
        state.withLock { $0.fleet = fleet }
        try fleet.startAll()
        try await fleet.waitUntilConnected()
        return fleet
    }

    /// Records that a fault happened (or ended) now: the drain time is measured from the last one.
    public func fault(_ description: String) {
        state.withLock { state in
            state.lastFault = .now
            let at = String(format: "%.1fs", (ContinuousClock.now - state.started).secondsValue)
            state.faults.append("\(at) \(description)")
        }
    }

    /// Runs the steps in order, each at its offset from now; each counts as a fault.
    public func runSchedule(_ steps: [FaultStep]) async throws {
        let start = ContinuousClock.now
        for step in steps.sorted(by: { $0.at < $1.at }) {
            let due = start + step.at
            if due > .now { try await Task.sleep(until: due) }
            try await step.action()
            fault(step.name)
        }
    }

    /// The deliveries in flight under `owner`'s lease now: after a SIGKILL, the only ones that
    /// may be sent twice (the dead daemon may have been answered without writing the result).
    public func deliveriesLeased(by owner: String) async throws -> Set<Int64> {
        let rows = try await database.withConnection { connection in
            try await connection.query(
                "SELECT id FROM consent_sync.deliveries WHERE state = 'in_flight' AND lease_owner = $1::uuid",
                [owner]
            )
        }
        return Set(try rows.map { try $0.int64("id") })
    }

    /// Waits until the outbox is fanned out and no delivery is pending or in flight (twice in
    /// a row); returns the time since the last fault, or nil after `timeout`.
    public func waitForQuiescence(timeout: Duration = .seconds(90)) async throws -> Duration? {
        let deadline = ContinuousClock.now + timeout
        var quietRounds = 0
        while ContinuousClock.now < deadline {
            let live = try? await database.withConnection { connection in
                try await connection.query(
                    """
                    SELECT (SELECT count(*) FROM consent_sync.changes WHERE NOT fanned_out)
                         + (SELECT count(*) FROM consent_sync.captured)
                         + (SELECT count(*) FROM consent_sync.deliveries WHERE state IN ('pending', 'in_flight')) AS n
                    """
                ).first?.int("n")
            }
            if live == 0 {
                quietRounds += 1
                if quietRounds == 2 {
                    let since = state.withLock { $0.lastFault } ?? ContinuousClock.now
                    return max(.zero, ContinuousClock.now - since - .milliseconds(250))
                }
            } else {
                quietRounds = 0
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        return nil
    }

    /// Waits for quiescence, stops the daemons, checks the invariants and prints the summary line
    /// (and the report when something is wrong).
    public func finish(
        writer: ScenarioWriter.Summary? = nil,
        expectations: InvariantChecker.Expectations = .init(),
        quiescenceTimeout: Duration = .seconds(90)
    ) async throws -> ScenarioOutcome {
        let drain = try await waitForQuiescence(timeout: quiescenceTimeout)
        // Anything still on its way to a receiver lands before the receipts are read.
        try await Task.sleep(for: .milliseconds(300))
        let fleet = self.fleet
        await fleet?.stopAll()
        var expectations = expectations
        expectations.rolledBackSubjects.formUnion(writer?.rolledBackSubjects ?? [])
        var receipts: [String: [WebhookReceipt]] = [:]
        for receiver in receivers { receipts[receiver.name] = receiver.receipts }
        let report = try await InvariantChecker.check(database: database, receipts: receipts, expectations: expectations)
        let outcome = ScenarioOutcome(
            name: name, seed: seed, report: report, drain: drain, faults: faultLog.count,
            daemonStarts: fleet?.starts ?? 0, daemonKills: fleet?.kills ?? 0, writer: writer
        )
        print(outcome)
        if !report.isClean || drain == nil {
            print("scenario \(name) report: \(report)\nfaults: \(faultLog.joined(separator: "; "))\n\(fleet?.logs ?? "")")
            if let writer, !writer.errors.isEmpty { print("writer errors: \(writer.errors.joined(separator: " | "))") }
        }
        return outcome
    }

    /// Kills the daemons and stops the receivers. Idempotent.
    public func shutdown() async {
        let (fleet, receivers) = state.withLock { ($0.fleet, $0.receivers) }
        await fleet?.killAll()
        for receiver in receivers { await receiver.stop() }
    }
}
