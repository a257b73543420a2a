@testable import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Dispatch
import Testing

/// The relay's round loop runs on a serial queue that its database connection shares.
@Suite struct SerialQueueExecutorTests {
    static let marker = DispatchSpecificKey<String>()

    static func onQueue() -> Bool {
        DispatchQueue.getSpecific(key: marker) == "rounds"
    }

    @Test func aTaskThatPrefersItRunsOnItsQueueAndItsChildrenCanRunElsewhere() async {
        let executor = SerialQueueExecutor(label: "test.rounds")
        executor.queue.setSpecific(key: Self.marker, value: "rounds")
        #expect(!Self.onQueue())
        let (inside, afterSuspension, child, pooled) = await withTaskExecutorPreference(executor) {
            let inside = Self.onQueue()
            try? await Task.sleep(for: .milliseconds(1))
            let afterSuspension = Self.onQueue()
            let (child, pooled) = await withTaskGroup(of: (String, Bool).self) { group in
                group.addTask { ("child", Self.onQueue()) }
                group.addTask(executorPreference: globalConcurrentExecutor) { ("pooled", Self.onQueue()) }
                var seen: [String: Bool] = [:]
                for await (name, onQueue) in group { seen[name] = onQueue }
                return (seen["child"], seen["pooled"])
            }
            return (inside, afterSuspension, child, pooled)
        }
        #expect(inside)
        #expect(afterSuspension)
        #expect(child == true)
        #expect(pooled == false)
    }

    @Test(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
    func aConnectionOnTheSameQueueAnswersATaskRunningThere() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let executor = SerialQueueExecutor(label: "test.rounds")
            executor.queue.setSpecific(key: Self.marker, value: "rounds")
            let answers = try await withTaskExecutorPreference(executor) {
                let connection = try await PostgresConnection.connect(database.configuration, logger: RelayFixture.logger, queue: executor.queue)
                var answers: [String] = []
                for value in 1...3 {
                    let rows = try await connection.query("SELECT $1::int * 2 AS doubled", [String(value)])
                    answers.append((rows.first?["doubled"] ?? "?") + (Self.onQueue() ? " on the queue" : " elsewhere"))
                }
                let pipelined = try await connection.pipeline([[PostgresStatement("SELECT 7 AS seven")], [PostgresStatement("SELECT 8 AS eight")]])
                answers.append(try pipelined.map { try $0.get().first?[0] ?? "?" }.joined(separator: ","))
                await connection.close()
                return answers
            }
            #expect(answers == ["2 on the queue", "4 on the queue", "6 on the queue", "7,8"])
        }
    }
}
