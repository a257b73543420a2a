import ConsentSyncEngine
import ConsentSyncOps
import ConsentSyncTestKit
import ServiceLifecycle
import Testing

/// `SystemdService` with a running relay, talking to a socket that stands in for systemd.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct SystemdServiceTests {
    @Test func readyWatchdogAndStoppingOnGracefulShutdown() async throws {
        let socket = try await NotifySocket.bind()
        defer { Task { await socket.close() } }
        try await RelayFixture.withMigratedDatabase { database in
            try await RelayFixture.withRelay(on: database) { running in
                let service = SystemdService(
                    notifier: SystemdNotifier(socketPath: socket.path, watchdogInterval: .seconds(1)),
                    health: running.relay.health,
                    configuration: .init(statusInterval: .milliseconds(200)),
                    logger: testLogger
                )
                let group = ServiceGroup(configuration: .init(services: [service], logger: testLogger))
                let task = Task { try await group.run() }

                try await waitUntil("READY=1") { socket.lines.contains("READY=1") }
                try await waitUntil("a STATUS= line") { socket.lines.contains { $0.hasPrefix("STATUS=delivering: 0 subscribers") } }
                try await waitUntil("three watchdog pings") { socket.lines.filter { $0 == "WATCHDOG=1" }.count >= 3 }
                #expect(socket.lines.filter { $0 == "READY=1" }.count == 1)
                #expect(!socket.lines.contains("STOPPING=1"))

                service.reloading()
                service.reloaded()
                try await waitUntil("READY=1 after the reload") { socket.lines.filter { $0 == "READY=1" }.count == 2 }
                let lines = socket.lines
                let reloading = try #require(lines.firstIndex(of: "RELOADING=1"))
                #expect(lines[reloading + 1].hasPrefix("MONOTONIC_USEC="))
                #expect(try #require(lines.lastIndex(of: "READY=1")) > reloading)

                await group.triggerGracefulShutdown()
                try await task.value
                try await waitUntil("STOPPING=1") { socket.lines.contains("STOPPING=1") }
                #expect(socket.lines.last == "STOPPING=1")
                #expect(socket.lines.filter { $0 == "STOPPING=1" }.count == 1)
            }
        }
    }

    @Test func aStalledRelayGetsNoWatchdogPings() async throws {
        let socket = try await NotifySocket.bind()
        defer { Task { await socket.close() } }
        // A relay that was ready once and whose loop stopped turning.
        var stalled = RelayHealth.Snapshot()
        stalled.databaseReady = true
        stalled.listening = true
        stalled.lastLoopTurn = .now - .seconds(5)
        let snapshot = stalled
        let service = SystemdService(
            notifier: SystemdNotifier(socketPath: socket.path, watchdogInterval: .milliseconds(400)),
            snapshot: { snapshot },
            logger: testLogger
        )
        let group = ServiceGroup(configuration: .init(services: [service], logger: testLogger))
        let task = Task { try await group.run() }
        try await waitUntil("READY=1") { socket.lines.contains("READY=1") }
        try await Task.sleep(for: .seconds(1))
        await group.triggerGracefulShutdown()
        try await task.value
        try await waitUntil("STOPPING=1") { socket.lines.contains("STOPPING=1") }
        #expect(!socket.lines.contains("WATCHDOG=1"), "\(socket.lines)")
        #expect(socket.lines.contains { $0.hasPrefix("STATUS=stalled: no loop turn for") }, "\(socket.lines)")
        #expect(socket.lines.last == "STOPPING=1")
    }
}
