import ConsentSyncCore
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

extension Scenarios {
    /// Daemons killed with SIGKILL at random moments, alone and several at once.
    @Suite struct Crashes {
        @Test func aDaemonKilledRepeatedlyLosesNothing() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("daemon SIGKILLed repeatedly", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await scenario.addReceiver("crm")
                    try await scenario.addReceiver("email", purposes: ["marketing_email"])
                    let fleet = try await scenario.startDaemons(1)
                    let plan = ScenarioWriter.Plan.steady(seconds: 12, rowsPerSecond: 120)
                    async let written = ScenarioWriter.run(plan, on: scenario.database, seed: scenario.seed)

                    var random = SeededGenerator(seed: scenario.seed)
                    var steps: [FaultStep] = []
                    var at = Duration.milliseconds(Int.random(in: 300...900, using: &random))
                    while at < .seconds(12) {
                        let down = Duration.milliseconds(Int.random(in: 20...600, using: &random))
                        steps.append(FaultStep(at: at, "SIGKILL, restart after \(down)") {
                            await fleet.kill(0)
                            try await Task.sleep(for: down)
                            try fleet.start(0)
                        })
                        at += .milliseconds(Int.random(in: 500...1600, using: &random))
                    }
                    try await scenario.runSchedule(steps)
                    let outcome = try await scenario.finish(writer: await written, expectations: .init(duplicatesAllowed: true))
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.drain != nil, "never drained")
                    #expect(outcome.daemonKills >= 5)
                }
            }
        }

        /// Issue #4's sizes: three daemons, 5,000 changes of 50 subjects, three subscribers that
        /// take every change. No crash, so not one duplicate.
        @Test func threeDaemonsShareTheWorkWithoutDuplicates() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("three daemons, 5,000 changes, no faults", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await Self.addThreeSubscribers(scenario)
                    try await scenario.startDaemons(3)
                    let written = await ScenarioWriter.run(.fiftySubjects(changes: 5_000), on: scenario.database, seed: scenario.seed)
                    scenario.fault("writer done (no faults)")
                    let outcome = try await scenario.finish(writer: written, quiescenceTimeout: .seconds(180))
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    // Only a resend after the daemon's own recorded timeout (the receiver took the
                    // request late) may arrive twice.
                    #expect(outcome.report.unexplainedDuplicates == 0, "\(outcome.report)")
                    #expect(outcome.report.changes >= 5_000, "\(outcome.report)")
                    #expect(outcome.report.deliveries == 3 * outcome.report.changes)
                }
            }
        }

        /// Issue #4's sizes, and one of the three daemons SIGKILLed mid-run and left dead: the
        /// other two take over its claims once their leases expire. The only deliveries that may
        /// arrive twice are those in flight under the killed daemon's lease at the kill (read from
        /// the database right after it), each at most twice.
        @Test func oneOfThreeDaemonsKilledMidRunLosesNothing() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("one of three daemons SIGKILLed mid-run, 5,000 changes", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await Self.addThreeSubscribers(scenario)
                    let fleet = try await scenario.startDaemons(3)
                    let victim = try #require(fleet.instanceID(0), "daemon 0 logged no instance id:\n\(fleet.logs)")
                    async let written = ScenarioWriter.run(.fiftySubjects(changes: 5_000), on: scenario.database, seed: scenario.seed)

                    // Mid-run: once a third of the changes is delivered to everyone.
                    let database = scenario.database
                    try await Self.waitUntil(delivered: 5_000, on: database)
                    await fleet.kill(0)
                    let inFlightAtKill = try await scenario.deliveriesLeased(by: victim)
                    scenario.fault("SIGKILL daemon 0 with \(inFlightAtKill.count) deliveries in flight")
                    print("scenario one of three killed: \(inFlightAtKill.count) deliveries in flight under the killed daemon's lease at the kill")

                    var expectations = InvariantChecker.Expectations(duplicatesAllowed: true, duplicatesOnlyFor: inFlightAtKill)
                    expectations.maxExtraAcknowledgements = 1
                    let outcome = try await scenario.finish(writer: await written, expectations: expectations, quiescenceTimeout: .seconds(180))
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.report.unexplainedDuplicates <= inFlightAtKill.count, "\(outcome.report)")
                    #expect(outcome.report.changes >= 5_000, "\(outcome.report)")
                    #expect(outcome.report.deliveries == 3 * outcome.report.changes)
                    #expect(outcome.daemonKills == 1)
                }
            }
        }

        /// Three subscribers taking every change, one a little slow (so that requests are in
        /// flight when a daemon dies).
        static func addThreeSubscribers(_ scenario: ScenarioHarness) async throws {
            let limits = Subscriber.Limits(maxInFlight: 16, timeout: .seconds(2))
            try await scenario.addReceiver("crm", limits: limits, script: { _ in .delayed(.milliseconds(5), .accept) })
            try await scenario.addReceiver("email", limits: limits)
            try await scenario.addReceiver("ads", limits: limits)
        }

        /// Waits until `count` deliveries are delivered.
        static func waitUntil(delivered count: Int, on database: ScenarioDatabase) async throws {
            let deadline = ContinuousClock.now + .seconds(120)
            while true {
                let delivered = try await database.withConnection { connection in
                    try await connection.query("SELECT count(*) AS n FROM consent_sync.deliveries WHERE state = 'delivered'").first?.int("n") ?? 0
                }
                if delivered >= count { return }
                guard ContinuousClock.now < deadline else { throw ScenarioError("only \(delivered) of \(count) deliveries delivered") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }

        @Test func threeDaemonsWithKillsLoseNothing() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("three daemons with kills", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await scenario.addReceiver("crm")
                    try await scenario.addReceiver("email", purposes: ["marketing_email"], script: { _ in .delayed(.milliseconds(20), .accept) })
                    try await scenario.addReceiver("calls", eventTypes: ["consent.withdrawn", "consent.deleted"])
                    let fleet = try await scenario.startDaemons(3)
                    let plan = ScenarioWriter.Plan.steady(seconds: 12, rowsPerSecond: 120)
                    async let written = ScenarioWriter.run(plan, on: scenario.database, seed: scenario.seed)

                    var random = SeededGenerator(seed: scenario.seed)
                    var steps: [FaultStep] = []
                    var at = Duration.milliseconds(700)
                    while at < .seconds(12) {
                        // Mostly one daemon, sometimes two at once; never all three for long.
                        let victims = Array((0..<3).shuffled(using: &random).prefix(Int.random(in: 0..<4, using: &random) == 0 ? 2 : 1))
                        let down = Duration.milliseconds(Int.random(in: 50...1200, using: &random))
                        steps.append(FaultStep(at: at, "SIGKILL daemon(s) \(victims), restart after \(down)") {
                            for victim in victims { await fleet.kill(victim) }
                            try await Task.sleep(for: down)
                            for victim in victims { try fleet.start(victim) }
                        })
                        at += .milliseconds(Int.random(in: 600...1500, using: &random))
                    }
                    try await scenario.runSchedule(steps)
                    let outcome = try await scenario.finish(writer: await written, expectations: .init(duplicatesAllowed: true))
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.drain != nil, "never drained")
                    #expect(outcome.daemonKills >= 6)
                }
            }
        }
    }
}
