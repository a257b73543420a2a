import ConsentSyncPostgres
import Foundation
import Synchronization

/// Writes consent changes the way applications do: several writers at once, each its own
/// transactions of one to a few rows, some deleted, some held open a while before commit, and
/// some rolled back; bounded in time and count, at a chosen rate.
///
/// Each writer owns its subjects, so the changes of one subject are made one transaction
/// after the other and their outbox ids follow commit order: that is what lets the checker
/// compare arrival order with outbox id order per subject.
public enum ScenarioWriter {
    public struct Plan: Sendable {
        /// Concurrent writers (connections).
        public var writers = 4
        public var subjectsPerWriter = 6
        public var purposes = ["marketing_email", "ads", "analytics", "calls"]
        /// Target rows written per second, over all writers.
        public var rowsPerSecond = 100.0
        /// Stop after this long ...
        public var duration: Duration = .seconds(10)
        /// ... or after this many rows.
        public var maxRows = 5000
        /// Share of transactions rolled back (each also writes a unique `rb-…` subject).
        public var rollbackRatio = 0.1
        /// Share of rows deleted rather than upserted.
        public var deleteRatio = 0.05
        /// Rows per transaction: 1 ... this.
        public var maxRowsPerTransaction = 3
        /// Share of transactions held open 50-250 ms before they commit (others commit meanwhile).
        public var lateCommitRatio = 0.05
        /// Subjects are `<prefix><writer>-<n>`. (Each upsert sets a source of its own, so that
        /// none is a no-op update: without deletes, changes captured = rows committed.)
        public var subjectPrefix = "s"

        public init() {}
    }

    /// What was written.
    public struct Summary: Sendable {
        public var committedTransactions = 0
        public var rolledBackTransactions = 0
        /// Transactions whose COMMIT failed or whose outcome is unknown (the database went away).
        public var failedTransactions = 0
        /// Rows written in committed transactions.
        public var committedRows = 0
        /// The unique subjects written only inside rolled-back transactions: none may ever be sent.
        public var rolledBackSubjects: Set<String> = []
        public var errors: [String] = []

        mutating func merge(_ other: Summary) {
            committedTransactions += other.committedTransactions
            rolledBackTransactions += other.rolledBackTransactions
            failedTransactions += other.failedTransactions
            committedRows += other.committedRows
            rolledBackSubjects.formUnion(other.rolledBackSubjects)
            errors += other.errors.prefix(max(0, 5 - errors.count))
        }
    }

    /// Runs the plan to its end (time or rows); database errors are counted, not thrown, and the
    /// writers reconnect, so that it keeps writing across database restarts.
    public static func run(_ plan: Plan, on database: ScenarioDatabase, seed: UInt64) async -> Summary {
        let rows = RowCounter()
        let deadline = ContinuousClock.now + plan.duration
        return await withTaskGroup(of: Summary.self) { group in
            for writer in 0..<plan.writers {
                group.addTask {
                    await Self.writer(writer, plan: plan, database: database, seed: seed &+ UInt64(writer) &* 7919, rows: rows, deadline: deadline)
                }
            }
            var total = Summary()
            for await summary in group { total.merge(summary) }
            return total
        }
    }

    private static func writer(_ writer: Int, plan: Plan, database: ScenarioDatabase, seed: UInt64, rows: RowCounter, deadline: ContinuousClock.Instant) async -> Summary {
        var random = SeededGenerator(seed: seed)
        var summary = Summary()
        var connection: PostgresConnection?
        let subjects = (0..<plan.subjectsPerWriter).map { "\(plan.subjectPrefix)\(writer)-\($0)" }
        let statuses = ["granted", "denied", "withdrawn"]
        let perWriterRate = max(plan.rowsPerSecond / Double(plan.writers), 0.1)
        var transaction = 0
        while ContinuousClock.now < deadline, rows.value.load(ordering: .relaxed) < plan.maxRows, !Task.isCancelled {
            transaction += 1
            let started = ContinuousClock.now
            let count = Int.random(in: 1...max(1, plan.maxRowsPerTransaction), using: &random)
            let rollback = Double.random(in: 0..<1, using: &random) < plan.rollbackRatio
            let late = Double.random(in: 0..<1, using: &random) < plan.lateCommitRatio
            var rolledBackSubject: String?
            do {
                let db: PostgresConnection
                if let connection, connection.isConnected { db = connection } else {
                    await connection?.close()
                    connection = nil
                    db = try await database.connect(applicationName: "consent-sync scenario writer")
                    connection = db
                }
                try await db.query("BEGIN")
                for row in 0..<count {
                    let subject = subjects.randomElement(using: &random)!
                    let purpose = plan.purposes.randomElement(using: &random)!
                    if Double.random(in: 0..<1, using: &random) < plan.deleteRatio {
                        try await db.query("DELETE FROM consent_sync.consents WHERE subject_id = $1 AND purpose = $2", [subject, purpose])
                    } else {
                        try await Self.upsert(subject, purpose, statuses.randomElement(using: &random)!, source: "w\(writer)t\(transaction)r\(row)", on: db)
                    }
                }
                if rollback {
                    let subject = "rb-\(plan.subjectPrefix)\(writer)-\(transaction)"
                    rolledBackSubject = subject
                    summary.rolledBackSubjects.insert(subject)
                    try await Self.upsert(subject, plan.purposes[0], "granted", source: "rolled back", on: db)
                }
                if late {
                    try await Task.sleep(for: .milliseconds(Int.random(in: 50...250, using: &random)))
                }
                if rollback {
                    try await db.query("ROLLBACK")
                    summary.rolledBackTransactions += 1
                } else {
                    try await db.query("COMMIT")
                    summary.committedTransactions += 1
                    summary.committedRows += count
                    rows.value.add(count, ordering: .relaxed)
                }
            } catch {
                if rolledBackSubject == nil { summary.failedTransactions += 1 } else { summary.rolledBackTransactions += 1 }
                if summary.errors.count < 5 { summary.errors.append("\(error)") }
                await connection?.close()
                connection = nil
                try? await Task.sleep(for: .milliseconds(100))
            }
            let budget = Duration.milliseconds(Int64(Double(count) / perWriterRate * 1000))
            let spent = ContinuousClock.now - started
            if spent < budget { try? await Task.sleep(for: budget - spent) }
        }
        await connection?.close()
        return summary
    }

    static func upsert(_ subject: String, _ purpose: String, _ status: String, source: String, on connection: PostgresConnection) async throws {
        try await connection.query(
            """
            INSERT INTO consent_sync.consents (subject_id, purpose, status, source) VALUES ($1, $2, $3, $4)
            ON CONFLICT (subject_id, purpose) DO UPDATE SET status = excluded.status, source = excluded.source, updated_at = now()
            """,
            [subject, purpose, status, source]
        )
    }

    /// Writes `rounds` × `subjects` × purposes changes as fast as the database takes them: one
    /// statement per round, each changing every row (`b<n>` subjects). Returns the changes written.
    @discardableResult
    public static func burst(subjects: Int, rounds: Int, purposes: [String], on database: ScenarioDatabase) async throws -> Int {
        try await database.withConnection { connection in
            var written = 0
            for round in 0..<rounds {
                let rows = try await connection.query(
                    """
                    INSERT INTO consent_sync.consents (subject_id, purpose, status, source)
                    SELECT 'b' || s, p, (ARRAY['granted', 'denied', 'withdrawn'])[1 + (s + $1::integer) % 3], 'burst-' || $1
                    FROM generate_series(1, $2::integer) AS s, unnest($3::text[]) AS p
                    ON CONFLICT (subject_id, purpose) DO UPDATE SET status = excluded.status, source = excluded.source
                    """,
                    [String(round), String(subjects), "{" + purposes.joined(separator: ",") + "}"]
                )
                written += rows.affectedRows
            }
            return written
        }
    }
}

/// Rows committed so far by all writers of one run.
private final class RowCounter: Sendable {
    let value = Atomic<Int>(0)
}
