import Foundation

/// Runs the built `consent-sync` binary with exactly the given environment (plus `PATH` and
/// `HOME`): never the test process's own `CONSENT_SYNC_*`, `PG*` or `DATABASE_URL`.
enum ConsentSyncBinary {
    struct Result: Sendable, CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String

        /// Both streams, for "must not appear anywhere" checks.
        var output: String { stdout + stderr }

        var description: String { "exit \(status)\n--- stdout\n\(stdout)--- stderr\n\(stderr)" }
    }

    /// `CONSENT_SYNC_BINARY`, else `consent-sync` beside the test runner (`swift build
    /// --build-tests` and `swift test` build both into one directory).
    static var path: String {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["CONSENT_SYNC_BINARY"], !path.isEmpty { return path }
        let starts = [
            URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent(),
            Bundle.main.bundleURL.resolvingSymlinksInPath(),
            Bundle.main.bundleURL.resolvingSymlinksInPath().deletingLastPathComponent(),
        ]
        for start in starts {
            var directory = start
            for _ in 0..<4 {
                let candidate = directory.appendingPathComponent("consent-sync").path
                if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
                directory = directory.deletingLastPathComponent()
            }
        }
        return starts[0].appendingPathComponent("consent-sync").path
    }

    /// Runs `consent-sync <arguments>` to completion (killed after `timeout`).
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60)) async throws -> Result {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("cs-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let stdoutURL = scratch.appendingPathComponent("stdout")
        let stderrURL = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let stdout = try FileHandle(forWritingTo: stdoutURL)
        let stderr = try FileHandle(forWritingTo: stderrURL)
        defer {
            try? stdout.close()
            try? stderr.close()
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.path)
        process.arguments = arguments
        let parent = ProcessInfo.processInfo.environment
        var childEnvironment = ["PATH": parent["PATH"] ?? "/usr/bin:/bin", "HOME": parent["HOME"] ?? "/tmp"]
        childEnvironment.merge(environment) { _, new in new }
        process.environment = childEnvironment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()

        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now > deadline {
                process.terminate()
                process.waitUntilExit()
                throw BinaryTimeout(arguments: arguments)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus,
            stdout: String(decoding: try Data(contentsOf: stdoutURL), as: UTF8.self),
            stderr: String(decoding: try Data(contentsOf: stderrURL), as: UTF8.self)
        )
    }
}

struct BinaryTimeout: Error, CustomStringConvertible {
    var arguments: [String]
    var description: String { "consent-sync \(arguments.joined(separator: " ")) did not finish in time" }
}

/// A temporary directory for config and secret files, removed at the end of `body`.
func withScratchDirectory<T>(_ body: (URL) async throws -> T) async throws -> T {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cs-cfg-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    return try await body(directory)
}

extension URL {
    /// Writes `text` to `name` in this directory and returns its path.
    @discardableResult
    func write(_ name: String, _ text: String, permissions: Int = 0o600) throws -> String {
        let file = self.appendingPathComponent(name)
        try Data(text.utf8).write(to: file)
        try FileManager.default.setAttributes([.posixPermissions: permissions], ofItemAtPath: file.path)
        return file.path
    }
}
