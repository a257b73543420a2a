import ConsentSyncHTTP
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The invariant checker must fail when an invariant is broken: otherwise the scenarios prove nothing.
@Suite(.tags(.scenarios), .enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct InvariantCheckerTests {
    @Test func theCheckerReportsEachBrokenInvariant() async throws {
        try await RelayFixture.withMigratedDatabase { testDatabase in
            let database = ScenarioDatabase(testDatabase)
            try await ScenarioHarness.run("checker self-test", database: database) { scenario in
                let receiver = try await scenario.addReceiver("crm")
                try await scenario.startDaemons(1)
                var plan = ScenarioWriter.Plan.steady(seconds: 2, rowsPerSecond: 40)
                // Sized by rows, not time: a loaded CI machine once got so few rows through in 2 s that
                // no transaction was rolled back, or every one of 24 subjects had a single delivery.
                // 40 committed single-row transactions over 2 subjects, about 40 % rolled back.
                plan.writers = 1
                plan.subjectsPerWriter = 2
                plan.maxRowsPerTransaction = 1
                plan.rollbackRatio = 0.4
                plan.maxRows = 40
                plan.duration = .seconds(60)
                let written = await ScenarioWriter.run(plan, on: database, seed: scenario.seed)
                let outcome = try await scenario.finish(writer: written)
                #expect(outcome.report.isClean, "\(outcome.report)")
                try #require(!written.rolledBackSubjects.isEmpty)
                try #require(outcome.report.deliveries >= 3)

                let expectations = InvariantChecker.Expectations(rolledBackSubjects: written.rolledBackSubjects)
                let receipts = receiver.receipts
                let snapshot = try await ScenarioSnapshot.load(from: database)
                func check(_ receipts: [WebhookReceipt], _ snapshot: ScenarioSnapshot, _ expectations: InvariantChecker.Expectations = expectations) -> InvariantChecker.Report {
                    InvariantChecker.evaluate(snapshot, receipts: ["crm": receipts], expectations: expectations)
                }
                #expect(check(receipts, snapshot).isClean)

                // A receiver record lost: the change never reached it, yet it is marked delivered.
                var lost = receipts
                let lostIndex = try #require(lost.firstIndex { $0.isAccepted })
                let removed = lost.remove(at: lostIndex)
                let lostReport = check(lost, snapshot)
                #expect(!lostReport.violations(of: .everyChangeReachedEveryMatchingSubscriber).isEmpty, "\(lostReport)")
                #expect(!lostReport.violations(of: .deliveredMeansAcknowledged).isEmpty)
                #expect(lostReport.timelines.contains("timeline of subject '\(removed.subject ?? "?")'"), "\(lostReport.timelines)")

                // A receiver record corrupted: an event id the outbox never had.
                var corrupted = receipts
                corrupted[lostIndex].eventID = UUID().uuidString
                #expect(!check(corrupted, snapshot).violations(of: .noRolledBackOrUnknownChangeSent).isEmpty)

                // Two first arrivals of one subject swapped.
                let bySubject = Dictionary(grouping: receipts.filter(\.isAccepted), by: { $0.subject ?? "" })
                let pair = try #require(bySubject.values.first { Set($0.compactMap(\.webhookID)).count >= 2 })
                var reordered = receipts
                let first = try #require(reordered.firstIndex { $0.index == pair[0].index })
                let second = try #require(reordered.firstIndex { $0.index == pair[1].index })
                (reordered[first].index, reordered[second].index) = (reordered[second].index, reordered[first].index)
                let reorderedReport = check(reordered, snapshot)
                #expect(!reorderedReport.violations(of: .orderPerSubscriberAndSubject).isEmpty, "\(reorderedReport)")

                // The same delivery acknowledged twice: a duplicate, refused unless the scenario allows it.
                var doubled = receipts
                var again = receipts[lostIndex]
                again.index = receipts.count
                doubled.append(again)
                let doubledReport = check(doubled, snapshot)
                #expect(doubledReport.duplicates == 1)
                #expect(!doubledReport.violations(of: .noDuplicates).isEmpty)
                var allowing = expectations
                allowing.duplicatesAllowed = true
                #expect(check(doubled, snapshot, allowing).isClean)
                // Bounded to the deliveries in flight at a kill: another delivery's duplicate is reported.
                let doubledDelivery = try #require(again.deliveryID)
                var bounded = allowing
                bounded.duplicatesOnlyFor = [doubledDelivery]
                #expect(check(doubled, snapshot, bounded).isClean)
                bounded.duplicatesOnlyFor = [doubledDelivery + 1_000_000]
                let outsideReport = check(doubled, snapshot, bounded)
                #expect(!outsideReport.violations(of: .noDuplicates).isEmpty, "\(outsideReport)")
                bounded.duplicatesOnlyFor = [doubledDelivery]
                var tripled = doubled
                var third = again
                third.index = receipts.count + 1
                tripled.append(third)
                #expect(!check(tripled, snapshot, bounded).violations(of: .noDuplicates).isEmpty)

                // The relay timed out on an attempt before the one it recorded as 2xx: the receiver
                // may have taken that request late, and the resend is allowed (at-least-once), though
                // still counted. Worded as the relay words it in attempts.error.
                let timeoutError = HTTPClientError(code: .timeout, message: "Operation timed out after 1000 milliseconds with 0 bytes received").description
                let timedOutAttempt = ScenarioSnapshot.Attempt(deliveryID: doubledDelivery, attempt: 0, startedAt: "00:00:00.000", status: nil, error: timeoutError)
                let recordedAs2xx = snapshot.attempts.contains { $0.deliveryID == doubledDelivery && $0.isAcknowledged }
                try #require(recordedAs2xx)
                var timedOut = snapshot
                timedOut.attempts.insert(timedOutAttempt, at: 0)
                let afterTimeoutReport = check(doubled, timedOut)
                #expect(afterTimeoutReport.isClean, "\(afterTimeoutReport)")
                #expect(afterTimeoutReport.duplicates == 1)
                #expect(afterTimeoutReport.duplicatesAfterTimeout == 1)
                #expect(afterTimeoutReport.unexplainedDuplicates == 0)
                // One timeout explains one resend, not two.
                let tripledAfterTimeout = check(tripled, timedOut)
                #expect(!tripledAfterTimeout.violations(of: .noDuplicates).isEmpty, "\(tripledAfterTimeout)")
                #expect(tripledAfterTimeout.unexplainedDuplicates == 1)
                // A send after the relay recorded the 2xx is a duplicate, timeout or not: a timeout
                // recorded after the 2xx explains nothing ...
                var timedOutLate = snapshot
                timedOutLate.attempts.append(timedOutAttempt)
                #expect(!check(doubled, timedOutLate).violations(of: .noDuplicates).isEmpty)
                // ... and neither does an earlier one when the relay recorded a 2xx twice.
                var deliveredTwice = timedOut
                deliveredTwice.attempts.append(ScenarioSnapshot.Attempt(deliveryID: doubledDelivery, attempt: 99, startedAt: "00:00:00.000", status: "200", error: nil))
                #expect(!check(doubled, deliveredTwice).violations(of: .noDuplicates).isEmpty)
                // An attempt logged twice by its instance (a result written again after a lost
                // connection, when the first write had committed).
                let logged = try #require(snapshot.attempts.first { $0.instanceID != nil })
                var loggedTwice = snapshot
                loggedTwice.attempts.append(logged)
                #expect(!check(receipts, loggedTwice).violations(of: .eachAttemptLoggedOnce).isEmpty)
                // Other errors are not timeouts.
                var refused = snapshot
                refused.attempts.insert(ScenarioSnapshot.Attempt(deliveryID: doubledDelivery, attempt: 0, startedAt: "00:00:00.000", status: nil, error: "receive failed: Empty reply from server"), at: 0)
                #expect(!check(doubled, refused).violations(of: .noDuplicates).isEmpty)

                // A change of a rolled-back transaction "arrived".
                var leaked = receipts
                var ghost = receipts[lostIndex]
                ghost.index = receipts.count
                let rolledBack: String = try #require(written.rolledBackSubjects.first)
                ghost.subject = rolledBack
                leaked.append(ghost)
                #expect(!check(leaked, snapshot).violations(of: .noRolledBackOrUnknownChangeSent).isEmpty)

                // The database side: a delivery row deleted, one left in flight with a lease, one dead.
                let ids = snapshot.deliveries.map(\.id)
                try await database.withConnection { connection in
                    try await connection.query("DELETE FROM consent_sync.deliveries WHERE id = $1::bigint", [String(ids[0])])
                    try await connection.query(
                        "UPDATE consent_sync.deliveries SET state = 'in_flight', lease_owner = gen_random_uuid(), lease_expires_at = now() + interval '1 minute' WHERE id = $1::bigint",
                        [String(ids[1])]
                    )
                    try await connection.query("UPDATE consent_sync.deliveries SET state = 'dead', last_error = 'forced by the test' WHERE id = $1::bigint", [String(ids[2])])
                }
                let broken = try await InvariantChecker.check(database: database, receipts: ["crm": receipts], expectations: expectations)
                #expect(!broken.violations(of: .everyChangeFannedOut).isEmpty, "\(broken)")
                #expect(!broken.violations(of: .nothingInFlightOrLeased).isEmpty)
                #expect(!broken.violations(of: .noUnexpectedDead).isEmpty)
                #expect(!broken.timelines.isEmpty)
                var deadAllowed = expectations
                deadAllowed.deadAllowedFor = ["crm"]
                let withDeadAllowed = try await InvariantChecker.check(database: database, receipts: ["crm": receipts], expectations: deadAllowed)
                #expect(withDeadAllowed.violations(of: .noUnexpectedDead).isEmpty)
            }
        }
    }
}
