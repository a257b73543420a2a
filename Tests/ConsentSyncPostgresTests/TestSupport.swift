import ConsentSyncPostgres
import ConsentSyncTestKit
import Logging
import Synchronization
import Testing

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(
    timeout: Duration = .seconds(10),
    every interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() {
            return true
        }
        try await Task.sleep(for: interval)
    }
    return try await condition()
}

/// Records a listener's events from a background task.
final class ListenerRecording: Sendable {
    private let storage = Mutex<(events: [PostgresListener.Event], finished: Bool)>(([], false))
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(_ listener: PostgresListener) {
        // The task holds `self` until the sequence ends, which `stop()` brings about.
        let task = Task {
            for await event in listener.events() {
                self.storage.withLock { $0.events.append(event) }
            }
            self.storage.withLock { $0.finished = true }
        }
        self.task.withLock { $0 = task }
    }

    var events: [PostgresListener.Event] {
        self.storage.withLock { $0.events }
    }

    var isFinished: Bool {
        self.storage.withLock { $0.finished }
    }

    var notifications: [PostgresListener.Event] {
        self.events.filter {
            if case .notification = $0 { return true }
            return false
        }
    }

    /// Waits until `condition` holds for the events so far.
    func waitFor(
        timeout: Duration = .seconds(10),
        _ condition: @escaping ([PostgresListener.Event]) -> Bool
    ) async throws -> Bool {
        try await eventually(timeout: timeout) { condition(self.events) }
    }

    /// Cancels the consuming task and waits for the sequence to end.
    func stop() async {
        let task = self.task.withLock { $0 }
        task?.cancel()
        await task?.value
    }
}

let testLogger = TestDatabase.logger

func randomSuffix() -> String {
    String(UInt32.random(in: .min ... .max), radix: 16)
}

extension TestDatabase {
    /// Runs `body` with a new connection to this database and closes it afterwards.
    @discardableResult
    func withOpenConnection<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await self.connect()
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}
