import ConsentSyncTestKit
import Testing

extension Tag {
    /// Fault-injection scenarios: real daemons, real receivers, faults on a schedule, invariants
    /// checked afterwards. `swift test --filter Scenario` runs them alone.
    @Tag static var scenarios: Self
}

/// The fault-injection scenarios, one after the other (each loads the machine on its own).
/// Every scenario prints one summary line: changes written, deliveries, duplicates, and the
/// time to drain after the last fault. `CONSENT_SYNC_SCENARIO_SEED` repeats a run's choices.
@Suite(.serialized, .tags(.scenarios), .enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct Scenarios {}

extension ScenarioWriter.Plan {
    /// A writer for `seconds` at `rowsPerSecond`: four writers, six subjects each, four purposes,
    /// 10 % of transactions rolled back, 5 % deletes, 5 % held open before commit.
    static func steady(seconds: Int, rowsPerSecond: Double) -> ScenarioWriter.Plan {
        var plan = ScenarioWriter.Plan()
        plan.duration = .seconds(seconds)
        plan.rowsPerSecond = rowsPerSecond
        plan.maxRows = Int(Double(seconds) * rowsPerSecond * 2)
        return plan
    }
}

extension ScenarioWriter.Plan {
    /// Issue #4's multi-daemon load: at least `changes` changes (no deletes, so every row written
    /// is a change) of 50 subjects (five writers of ten), at 500 rows/s, 10 % rolled back.
    /// Bounded by the row count: the time limit only guards against a hang (a loaded machine
    /// can take much longer than the 10 s that 500 rows/s implies, and the tests count on
    /// `changes` rows).
    static func fiftySubjects(changes: Int) -> ScenarioWriter.Plan {
        var plan = ScenarioWriter.Plan()
        plan.writers = 5
        plan.subjectsPerWriter = 10
        plan.deleteRatio = 0
        plan.rowsPerSecond = 500
        plan.maxRows = changes
        plan.duration = .seconds(600)
        return plan
    }
}
