import ConsentSyncOps
import Testing

/// The sd_notify protocol: environment, message text and the datagram on a real socket.
@Suite struct SystemdNotifierTests {
    @Test(arguments: [
        ("/run/systemd/notify", SystemdNotifier.Address.path("/run/systemd/notify") as SystemdNotifier.Address?),
        ("@/org/freedesktop/systemd1/notify/42", .abstract("/org/freedesktop/systemd1/notify/42")),
        ("", nil),
        ("@", nil),
        ("relative/path", nil),
        ("vsock:2:1234", nil),
    ])
    func notifySocketAddress(value: String, expected: SystemdNotifier.Address?) {
        #expect(SystemdNotifier.address(notifySocket: value) == expected)
    }

    @Test func withoutNotifySocketNothingIsSent() throws {
        let notifier = SystemdNotifier(environment: [:], processID: 1)
        #expect(!notifier.isEnabled)
        #expect(notifier.watchdogInterval == nil)
        try notifier.send([.ready, .status("anything")])
    }

    @Test func watchdogFromTheEnvironment() {
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000"], processID: 7) == .seconds(30))
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"], processID: 7) == .seconds(30))
        // Meant for another process (the service's main process is someone else).
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"], processID: 7) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "0"], processID: 7) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "soon"], processID: 7) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: [:], processID: 7) == nil)

        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "@abc", "WATCHDOG_USEC": "500000"], processID: 1)
        #expect(notifier.address == .abstract("abc"))
        #expect(notifier.watchdogInterval == .milliseconds(500))
    }

    @Test func messageText() {
        #expect(SystemdNotifier.datagram([.ready, .status("delivering:\n3 subscribers")]) == "READY=1\nSTATUS=delivering: 3 subscribers")
        #expect(SystemdNotifier.datagram([.reloading(monotonicMicroseconds: 42)]) == "RELOADING=1\nMONOTONIC_USEC=42")
        #expect(SystemdNotifier.datagram([.watchdog, .stopping]) == "WATCHDOG=1\nSTOPPING=1")
    }

    @Test func monotonicTimeMovesForward() async throws {
        let first = SystemdNotifier.monotonicMicroseconds()
        try await Task.sleep(for: .milliseconds(20))
        let second = SystemdNotifier.monotonicMicroseconds()
        #expect(first > 0)
        #expect(second - first >= 15_000)
    }

    @Test func aDatagramArrivesAtTheSocket() async throws {
        let socket = try await NotifySocket.bind()
        let notifier = SystemdNotifier(socketPath: socket.path)
        try notifier.send([.ready, .status("up")])
        try notifier.send(.watchdog)
        try await waitUntil("two datagrams arrived") { socket.datagrams.count == 2 }
        #expect(socket.datagrams == ["READY=1\nSTATUS=up", "WATCHDOG=1"])
        await socket.close()
    }

    @Test func aDatagramArrivesAtAnAbstractSocket() async throws {
        let socket = try await NotifySocket.bind(abstract: true)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "@" + socket.path], processID: 1)
        try notifier.send(.stopping)
        try await waitUntil("the datagram arrived") { !socket.datagrams.isEmpty }
        #expect(socket.datagrams == ["STOPPING=1"])
        await socket.close()
    }

    @Test func sendingToAMissingSocketFails() throws {
        let notifier = SystemdNotifier(socketPath: "/nonexistent/consent-sync-\(UInt32.random(in: 0 ... .max)).sock")
        let error = #expect(throws: SystemdNotifierError.self) { try notifier.send(.ready) }
        #expect(error?.code == .sendFailed)
        #expect(error?.description.contains("No such file or directory") == true)
    }

    @Test func aTooLongSocketPathIsRefused() {
        let notifier = SystemdNotifier(socketPath: "/" + String(repeating: "x", count: 200))
        #expect(throws: SystemdNotifierError.self) { try notifier.send(.ready) }
    }
}
