import ConsentSyncTestKit
import Foundation
import Testing

extension Scenarios {
    /// PostgreSQL restarted and stopped under the daemon; its connections cut from the server side.
    @Suite struct DatabaseFaults {
        /// On a cluster of the scenario's own: restarting the shared server would break every
        /// other test running meanwhile. Stopped for the 20 s: longer than the relay's
        /// reconnect backoff cap (15 s), so the daemon is seen waiting at its longest delay.
        @Test(.enabled(if: PrivateCluster.binaryDirectory != nil, "needs PostgreSQL's server binaries"))
        func postgresRestartedFastAndImmediateAndStoppedLosesNothing() async throws {
            try await PrivateCluster.with { cluster in
                let database = try await cluster.createDatabase("scenario")
                try await ScenarioHarness.run("PostgreSQL restarted (fast, immediate) and stopped 20 s", database: database) { scenario in
                    try await scenario.addReceiver("crm")
                    try await scenario.addReceiver("ads", purposes: ["ads"])
                    let fleet = try await scenario.startDaemons(1)
                    let plan = ScenarioWriter.Plan.steady(seconds: 30, rowsPerSecond: 60)
                    async let written = ScenarioWriter.run(plan, on: database, seed: scenario.seed)
                    try await scenario.runSchedule([
                        FaultStep(at: .seconds(2), "restart (fast)") { try await cluster.restart(.fast) },
                        FaultStep(at: .seconds(5), "restart (immediate)") { try await cluster.restart(.immediate) },
                        FaultStep(at: .seconds(8), "stopped (fast) for 20 s, then started") {
                            try await cluster.stop(.fast)
                            try await Task.sleep(for: .seconds(20))
                            try await cluster.start()
                        },
                    ])
                    // The daemon waits for its database; it never exits for it.
                    #expect(fleet.running == [0], "\(fleet.logs)")
                    let outcome = try await scenario.finish(
                        writer: await written,
                        expectations: .init(duplicatesAllowed: true),
                        quiescenceTimeout: .seconds(60)
                    )
                    #expect(outcome.report.isClean, "\(outcome.report)\n\(cluster.logTail)")
                    #expect(outcome.drain != nil, "never drained")
                }
            }
        }

        /// The listener's backend (and twice the pipeline's) terminated with `pg_terminate_backend`,
        /// with a poll interval long enough that only NOTIFY and the reconnect catch-up deliver quickly.
        @Test func listenerConnectionTerminatedFromTheServerSide() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("listener terminated from the server side", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await scenario.addReceiver("crm")
                    try await scenario.addReceiver("email", purposes: ["marketing_email"])
                    let fleet = try await scenario.startDaemons(1, environment: ["CONSENT_SYNC_RELAY_POLL_INTERVAL_MS": "5000"])
                    var plan = ScenarioWriter.Plan.steady(seconds: 10, rowsPerSecond: 30)
                    plan.writers = 2
                    async let written = ScenarioWriter.run(plan, on: scenario.database, seed: scenario.seed)
                    var steps: [FaultStep] = []
                    for second in stride(from: 1, to: 10, by: 1) {
                        let application = second == 4 || second == 7 ? "consent-sync relay" : "consent-sync listener"
                        steps.append(FaultStep(at: .milliseconds(second * 1000 + 300), "pg_terminate_backend(\(application))") {
                            try await testDatabase.terminateBackends(applicationName: application)
                        })
                    }
                    try await scenario.runSchedule(steps)
                    let outcome = try await scenario.finish(writer: await written)
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.report.unexplainedDuplicates == 0)
                    #expect(outcome.drain != nil, "never drained")
                    let reconnects = fleet.logLines(containing: "listener reconnected").count
                    #expect(reconnects >= 3, "listener reconnects logged: \(reconnects)")
                }
            }
        }
    }
}
