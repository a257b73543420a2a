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

        @Test func threeDaemonsShareTheWorkWithoutDuplicates() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("three daemons, no faults", database: ScenarioDatabase(testDatabase)) { scenario in
                    try await scenario.addReceiver("crm", script: { _ in .delayed(.milliseconds(5), .accept) })
                    try await scenario.addReceiver("ads", purposes: ["ads", "analytics"])
                    try await scenario.startDaemons(3)
                    let written = await ScenarioWriter.run(.steady(seconds: 6, rowsPerSecond: 150), on: scenario.database, seed: scenario.seed)
                    scenario.fault("writer done (no faults)")
                    let outcome = try await scenario.finish(writer: written)
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.report.duplicates == 0)
                }
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
