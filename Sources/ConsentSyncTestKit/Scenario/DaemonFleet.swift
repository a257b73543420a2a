#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// Several real `consent-sync run` processes against one database, which a scenario kills
/// and restarts.
public final class DaemonFleet: Sendable {
    /// The environment every daemon gets.
    public let environment: [String: String]
    private let state: Mutex<State>

    private struct State {
        var daemons: [DaemonProcess?]
        var starts = 0
        var kills = 0
        /// The stderr tails of daemons that ended, newest last, for failure messages.
        var endedLogs: [String] = []
    }

    /// Settings that make a scenario quick: short poll, janitor and lease margin (so a killed
    /// daemon's claims come back within about 1 s plus the subscriber's timeout), short
    /// backoff, and no `dead` for as long as a scenario lasts.
    public static func scenarioEnvironment(_ database: ScenarioDatabase, _ extra: [String: String] = [:]) -> [String: String] {
        var environment = database.daemonEnvironment
        environment["CONSENT_SYNC_RELAY_POLL_INTERVAL_MS"] = "300"
        environment["CONSENT_SYNC_RELAY_JANITOR_INTERVAL_MS"] = "200"
        environment["CONSENT_SYNC_RELAY_LEASE_MARGIN_MS"] = "1000"
        environment["CONSENT_SYNC_RELAY_DRAIN_TIMEOUT_MS"] = "2000"
        environment["CONSENT_SYNC_RETRY_INITIAL_DELAY_MS"] = "50"
        environment["CONSENT_SYNC_RETRY_MAX_DELAY_MS"] = "1000"
        environment["CONSENT_SYNC_RETRY_MAX_ATTEMPTS"] = "10000"
        environment["CONSENT_SYNC_RETRY_MAX_RETRY_AFTER_SECONDS"] = "1"
        environment["CONSENT_SYNC_OPS_ENABLED"] = "false"
        environment["CONSENT_SYNC_LOG_LEVEL"] = "info"
        return environment.merging(extra) { $1 }
    }

    public init(count: Int, environment: [String: String]) {
        self.environment = environment
        self.state = Mutex(State(daemons: Array(repeating: nil, count: count)))
    }

    public var count: Int { self.state.withLock { $0.daemons.count } }
    public var kills: Int { self.state.withLock { $0.kills } }
    public var starts: Int { self.state.withLock { $0.starts } }

    /// Indexes of daemons that are running.
    public var running: [Int] {
        self.state.withLock { state in state.daemons.indices.filter { state.daemons[$0]?.isRunning == true } }
    }

    /// Starts daemon `index` unless it runs.
    public func start(_ index: Int) throws {
        try self.state.withLock { state in
            if state.daemons[index]?.isRunning == true { return }
            if let ended = state.daemons[index] { state.endedLogs.append(Self.tail(ended, label: "daemon \(index)")) }
            state.daemons[index] = try DaemonProcess(["run"], environment: self.environment)
            state.starts += 1
        }
    }

    public func startAll() throws {
        for index in 0..<self.count { try self.start(index) }
    }

    /// Waits until every running daemon has logged "relay connected".
    public func waitUntilConnected(timeout: Duration = .seconds(30)) async throws {
        let daemons = self.state.withLock { $0.daemons.compactMap { $0 } }
        for daemon in daemons where daemon.isRunning {
            try await daemon.waitForLog("relay connected", timeout: timeout)
        }
    }

    /// The instance id (lease owner) daemon `index` logged at start-up ("consent-sync starting
    /// … instance=<uuid>"), or nil before it did.
    public func instanceID(_ index: Int) -> String? {
        guard let daemon = self.state.withLock({ $0.daemons[index] }) else { return nil }
        for line in daemon.stderr.split(separator: "\n") where line.contains("consent-sync starting") {
            guard let range = line.range(of: "instance=") else { continue }
            let id = line[range.upperBound...].prefix { $0.isHexDigit || $0 == "-" }
            if id.count == 36 { return id.lowercased() }
        }
        return nil
    }

    /// SIGKILLs daemon `index` and waits for it to end.
    public func kill(_ index: Int) async {
        guard let daemon = self.state.withLock({ $0.daemons[index] }), daemon.isRunning else { return }
        daemon.signal(SIGKILL)
        _ = try? await daemon.waitForExit(timeout: .seconds(10))
        self.state.withLock { $0.kills += 1 }
    }

    /// SIGTERMs every daemon and waits for them (SIGKILL after `timeout`); returns the exit
    /// statuses of those that were running.
    @discardableResult
    public func stopAll(timeout: Duration = .seconds(15)) async -> [Int32] {
        let daemons = self.state.withLock { $0.daemons.compactMap { $0 }.filter(\.isRunning) }
        for daemon in daemons { daemon.signal(SIGTERM) }
        var statuses: [Int32] = []
        for daemon in daemons {
            statuses.append((try? await daemon.waitForExit(timeout: timeout)) ?? -1)
        }
        return statuses
    }

    /// SIGKILLs every daemon still running: the cleanup of a failed scenario.
    public func killAll() async {
        for index in 0..<self.count { await self.kill(index) }
    }

    /// The last lines each daemon (running or ended) wrote on stderr.
    public var logs: String {
        self.state.withLock { state in
            let current = state.daemons.enumerated().compactMap { index, daemon in daemon.map { Self.tail($0, label: "daemon \(index)") } }
            return (state.endedLogs.suffix(3) + current).joined(separator: "\n")
        }
    }

    /// Every line of every daemon still known that contains `text`.
    public func logLines(containing text: String) -> [String] {
        self.state.withLock { state in
            state.daemons.compactMap { $0 }.flatMap { daemon in
                daemon.stderr.split(separator: "\n").filter { $0.contains(text) }.map(String.init)
            }
        }
    }

    private static func tail(_ daemon: DaemonProcess, label: String) -> String {
        "--- \(label) (pid \(daemon.pid)) stderr, last lines:\n" + daemon.stderr.split(separator: "\n").suffix(15).joined(separator: "\n")
    }
}
