import ConsentSyncPostgres
import Foundation
import Synchronization

/// The real `consent-sync` binary run as a child process, for tests of what only a process
/// shows: signals, exit codes, stderr.
public final class DaemonProcess: Sendable {
    /// The binary beside the test bundle (both are built by `swift build --build-tests`),
    /// or `CONSENT_SYNC_BINARY`.
    public static var binaryPath: String {
        if let path = ProcessInfo.processInfo.environment["CONSENT_SYNC_BINARY"] { return path }
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = runner.deletingLastPathComponent()
        // On Linux the runner is `<bin>/ConsentSyncPackageTests.xctest`; elsewhere it may sit deeper.
        for _ in 0..<4 {
            let candidate = directory.appendingPathComponent("consent-sync").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return runner.deletingLastPathComponent().appendingPathComponent("consent-sync").path
    }

    private let process: Process
    private let stdoutReader: PipeReader
    private let stderrReader: PipeReader

    /// Starts `consent-sync <arguments>` with exactly `environment` (plus PATH and HOME).
    public init(_ arguments: [String], environment: [String: String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binaryPath)
        process.arguments = arguments
        var env = environment
        let parent = ProcessInfo.processInfo.environment
        env["PATH"] = env["PATH"] ?? parent["PATH"] ?? "/usr/bin:/bin"
        env["HOME"] = env["HOME"] ?? parent["HOME"] ?? "/tmp"
        process.environment = env
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        stdoutReader = PipeReader(stdout.fileHandleForReading)
        stderrReader = PipeReader(stderr.fileHandleForReading)
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var stdout: String { String(decoding: stdoutReader.data, as: UTF8.self) }
    public var stderr: String { String(decoding: stderrReader.data, as: UTF8.self) }
    public var isRunning: Bool { process.isRunning }

    public func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// Waits for the process to end; kills it and throws after `timeout`.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                kill(process.processIdentifier, SIGKILL)
                throw DaemonProcessError(description: "consent-sync did not exit within \(timeout); stderr:\n\(stderr.suffix(3000))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Read both pipes to their end (a loaded machine may schedule the readers late).
        _ = await stdoutReader.ended(within: .seconds(10))
        _ = await stderrReader.ended(within: .seconds(10))
        return process.terminationStatus
    }

    /// Waits until stderr contains `text`.
    public func waitForLog(_ text: String, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !stderr.contains(text) {
            guard ContinuousClock.now < deadline else {
                throw DaemonProcessError(description: "no log line containing '\(text)' within \(timeout); stderr:\n\(stderr.suffix(3000))")
            }
            guard process.isRunning || stderr.contains(text) else {
                throw DaemonProcessError(description: "consent-sync exited (\(process.terminationStatus)) before logging '\(text)'; stderr:\n\(stderr.suffix(3000))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The port of the ops endpoints, from the daemon's "ops endpoints listening" line (start
    /// it with `ops.listen` on port 0: a port picked beforehand may be taken by then).
    public func waitForOpsPort(timeout: Duration = .seconds(20)) async throws -> Int {
        try await waitForLog("ops endpoints listening", timeout: timeout)
        let line = stderr.split(separator: "\n").first { $0.contains("ops endpoints listening") } ?? ""
        guard let address = line.split(separator: " ").first(where: { $0.hasPrefix("address=") }),
              let port = address.split(separator: ":").last.flatMap({ Int($0.filter(\.isNumber)) })
        else {
            throw DaemonProcessError(description: "no port in the line '\(line)'")
        }
        return port
    }

    /// Runs a command to completion and returns its status and output.
    public static func run(_ arguments: [String], environment: [String: String], timeout: Duration = .seconds(60)) async throws -> (status: Int32, stdout: String, stderr: String) {
        let process = try DaemonProcess(arguments, environment: environment)
        let status = try await process.waitForExit(timeout: timeout)
        return (status, process.stdout, process.stderr)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

public struct DaemonProcessError: Error, CustomStringConvertible {
    public var description: String
}

extension TestDatabase {
    /// Environment that points a child `consent-sync` at this database (and nothing else of
    /// the parent's `CONSENT_SYNC_*`), with webhooks to http on loopback allowed.
    public var daemonEnvironment: [String: String] {
        var environment: [String: String] = [:]
        let parent = ProcessInfo.processInfo.environment
        for key in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGPASSFILE"] {
            if let value = parent[key] { environment[key] = value }
        }
        environment["PGDATABASE"] = name
        // Test receivers listen on plain http on loopback, which production refuses.
        environment["CONSENT_SYNC_HTTP_ALLOWED_SCHEMES"] = "https, http"
        environment["CONSENT_SYNC_HTTP_ALLOW_NETWORKS"] = "127.0.0.0/8, ::1/128"
        let base = Self.baseConfiguration.connectionString
        if base.hasPrefix("postgres://") || base.hasPrefix("postgresql://"), var components = URLComponents(string: base) {
            components.path = "/" + name
            environment["CONSENT_SYNC_DATABASE_URL"] = components.string
        } else if !base.isEmpty {
            environment["CONSENT_SYNC_DATABASE_URL"] = base + " dbname=" + name
        }
        return environment
    }
}
