import ConsentSyncCore
import ConsentSyncTestKit
import Foundation
import Testing

extension Scenarios {
    @Suite struct Burst {
        /// The 20,000 changes written in a few seconds (1,000 subjects × 4 purposes × 5
        /// rounds), with one slow subscriber (`ads` only, 25 ms per request) that must not hold
        /// up the other.
        @Test func aBurstWithOneSlowSubscriber() async throws {
            try await RelayFixture.withMigratedDatabase { testDatabase in
                try await ScenarioHarness.run("burst of 20,000 changes, one slow subscriber", database: ScenarioDatabase(testDatabase)) { scenario in
                    let fast = try await scenario.addReceiver("fast", limits: .init(maxInFlight: 32, timeout: .seconds(5)))
                    let slow = try await scenario.addReceiver(
                        "slow", purposes: ["ads"], limits: .init(maxInFlight: 8, timeout: .seconds(5)),
                        script: { _ in .delayed(.milliseconds(25), .accept) }
                    )
                    try await scenario.startDaemons(1, environment: ["CONSENT_SYNC_RELAY_CLAIM_BATCH_SIZE": "500"])
                    let purposes = ["marketing_email", "ads", "analytics", "calls"]
                    let started = ContinuousClock.now
                    let written = try await ScenarioWriter.burst(subjects: 1_000, rounds: 5, purposes: purposes, on: scenario.database)
                    let writeTime = ContinuousClock.now - started
                    scenario.fault("burst written")
                    #expect(written == 20_000)

                    // When did each subscriber have everything?
                    async let fastDone = Self.timeUntil(fast, accepted: written, since: started)
                    async let slowDone = Self.timeUntil(slow, accepted: written / purposes.count, since: started)
                    let (fastTime, slowTime) = try await (fastDone, slowDone)
                    print(String(format: "burst: written in %.2fs; fast subscriber had all in %.2fs, slow (ads only, 25 ms each) in %.2fs",
                                 writeTime.secondsValue, fastTime.secondsValue, slowTime.secondsValue))
                    let outcome = try await scenario.finish(quiescenceTimeout: .seconds(300))
                    #expect(outcome.report.isClean, "\(outcome.report)")
                    #expect(outcome.report.unexplainedDuplicates == 0)
                    #expect(outcome.report.changes == 20_000)
                }
            }
        }

        static func timeUntil(_ receiver: ScriptedReceiver, accepted count: Int, since start: ContinuousClock.Instant) async throws -> Duration {
            let deadline = ContinuousClock.now + .seconds(300)
            while receiver.acceptedCount < count {
                guard ContinuousClock.now < deadline else { throw ScenarioError("\(receiver.name) has \(receiver.acceptedCount) of \(count)") }
                try await Task.sleep(for: .milliseconds(50))
            }
            return ContinuousClock.now - start
        }
    }
}

extension Duration {
    var secondsValue: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
