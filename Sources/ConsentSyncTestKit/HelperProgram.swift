import Foundation
import Synchronization

/// Runs programs other than `consent-sync` (openssl, python3, systemd-analyze, a test runner)
/// to completion from async tests without blocking a thread of Swift's cooperative pool.
///
/// The pool has one thread per core (two in CI), and hundreds of tests share it: a test that
/// waits for a child with `readDataToEndOfFile()` or `waitUntilExit()` on a pool thread stalls
/// every other test's tasks meanwhile. Here the waiting happens on threads of its own. (For the
/// daemon itself, use ``DaemonProcess``.)
public enum HelperProgram {
    public struct Result: Sendable, CustomStringConvertible {
        public var status: Int32
        /// Standard output, and standard error too when they were merged.
        public var stdout: Data
        /// Standard error; empty when it was merged into ``stdout``.
        public var stderr: Data

        public var output: String { String(decoding: stdout, as: UTF8.self) }
        public var errors: String { String(decoding: stderr, as: UTF8.self) }
        public var description: String { "exit \(status)\n--- stdout\n\(output)--- stderr\n\(errors)" }
    }

    /// Runs `executable` with `arguments` until it exits and returns its status and output.
    ///
    /// - Parameters:
    ///   - environment: the child's whole environment; this process's when nil.
    ///   - input: what the child reads on standard input (from a temporary file, so a child
    ///     that exits without reading it cannot raise SIGPIPE here); nothing when nil.
    ///   - mergingStandardError: standard error goes to the same pipe as standard output.
    ///   - timeout: the child is killed after this, and the call throws.
    public static func run(
        _ executable: String,
        _ arguments: [String] = [],
        environment: [String: String]? = nil,
        input: Data? = nil,
        mergingStandardError: Bool = false,
        timeout: Duration = .seconds(120)
    ) async throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }

        var inputFile: (url: URL, handle: FileHandle)?
        defer {
            if let inputFile {
                try? inputFile.handle.close()
                try? FileManager.default.removeItem(at: inputFile.url)
            }
        }
        if let input {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("helper-input-\(UUID().uuidString)")
            try input.write(to: url)
            let handle = try FileHandle(forReadingFrom: url)
            inputFile = (url, handle)
            process.standardInput = handle
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        let stdout = Pipe()
        let stderr = mergingStandardError ? stdout : Pipe()
        process.standardOutput = stdout
        process.standardError = stderr

        let command = ([executable] + arguments).joined(separator: " ").prefix(200)
        return try await onOwnThread {
            try process.run()
            let ended = LockedBox((exited: false, killed: false))
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(timeout / .milliseconds(1)))) {
                ended.withLock { state in
                    guard !state.exited else { return }
                    state.killed = true
                    kill(process.processIdentifier, SIGKILL)
                }
            }
            let output = PipeReader(stdout.fileHandleForReading)
            let errors = mergingStandardError ? nil : PipeReader(stderr.fileHandleForReading)
            process.waitUntilExit()
            let killed = ended.withLock { state in
                state.exited = true
                return state.killed
            }
            // Everything the child wrote is in the pipes once it has exited; their ends come a
            // moment later (or never, should another child have inherited a write end).
            let result = Result(status: process.terminationStatus, stdout: output.wait(upTo: .seconds(10)), stderr: errors?.wait(upTo: .seconds(10)) ?? Data())
            if killed {
                throw HelperProgramError(description: "\(command) did not finish within \(timeout) and was killed; \(result)")
            }
            return result
        }
    }

    /// Runs `body` on a thread of its own and waits for it without occupying a thread of the
    /// cooperative pool: for calls that block (pipes, `waitUntilExit()`, `availableData`).
    public static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Swift.Result { try body() })
            }
        }
    }
}

/// A value behind a lock that closures can share (a `Mutex` itself cannot be captured).
final class LockedBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        self.mutex = Mutex(value)
    }

    func withLock<T>(_ body: (inout Value) -> T) -> T {
        self.mutex.withLock { body(&$0) }
    }
}

public struct HelperProgramError: Error, CustomStringConvertible {
    public var description: String
}
