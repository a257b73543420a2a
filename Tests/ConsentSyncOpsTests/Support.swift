import ConsentSyncEngine
import ConsentSyncOps
import ConsentSyncTestKit
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Prometheus
import ServiceLifecycle
import Synchronization
import Testing

/// Quiet unless `CONSENT_SYNC_TEST_LOG` says otherwise.
let testLogger: Logger = {
    var logger = Logger(label: "consent-sync.test.ops") { StreamLogHandler.standardError(label: $0) }
    logger.logLevel = ProcessInfo.processInfo.environment["CONSENT_SYNC_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
    return logger
}()

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Polls `condition` until it holds; fails the test with `what` after `timeout`.
func waitUntil(
    _ what: String,
    timeout: Duration = .seconds(15),
    every tick: Duration = .milliseconds(50),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: tick)
    }
    throw TestFailure("timed out waiting until \(what)")
}

// MARK: - Ops server

/// Runs an ``OpsServer`` on a free port of 127.0.0.1 in a `ServiceGroup` for the duration of `body`,
/// then shuts it down gracefully.
func withOpsServer<T: Sendable>(
    snapshot: @escaping @Sendable () -> RelayHealth.Snapshot,
    registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
    livenessWindow: Duration = .seconds(30),
    _ body: (OpsClient) async throws -> T
) async throws -> T {
    let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
    let server = OpsServer(
        configuration: .init(host: "127.0.0.1", port: 0, livenessWindow: livenessWindow),
        snapshot: snapshot,
        registry: registry,
        logger: testLogger,
        onServerRunning: { port in
            portContinuation.yield(port)
            portContinuation.finish()
        }
    )
    let group = ServiceGroup(configuration: .init(services: [server], logger: testLogger))
    let running = Task {
        defer { portContinuation.finish() }
        try await group.run()
    }
    var iterator = ports.makeAsyncIterator()
    guard let port = await iterator.next(), port > 0 else {
        running.cancel()
        _ = try await running.value
        throw TestFailure("the ops server did not start")
    }
    let client = OpsClient(port: port)
    let result: Result<T, any Error>
    do { result = .success(try await body(client)) } catch { result = .failure(error) }
    await group.triggerGracefulShutdown()
    try await running.value
    client.close()
    return try result.get()
}

/// Plain GETs against the ops server.
struct OpsClient: Sendable {
    struct Answer: Sendable {
        var status: Int
        var contentType: String?
        var body: String
        /// The body as a JSON object.
        func json() throws -> [String: Any] {
            guard let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else {
                throw TestFailure("not a JSON object: \(body)")
            }
            return object
        }
    }

    let port: Int
    private let session = URLSession(configuration: .ephemeral)

    init(port: Int) { self.port = port }

    func get(_ path: String) async throws -> Answer {
        let url = try #require(URL(string: "http://127.0.0.1:\(port)\(path)"))
        let (data, response) = try await session.data(from: url)
        let http = try #require(response as? HTTPURLResponse)
        return Answer(
            status: http.statusCode,
            contentType: http.value(forHTTPHeaderField: "Content-Type"),
            body: String(decoding: data, as: UTF8.self)
        )
    }

    func close() { session.invalidateAndCancel() }
}

// MARK: - Prometheus text, parsed by the reference parser

/// One sample as `prometheus_client` parsed it.
struct ParsedSample: Sendable, Equatable {
    var family: String
    var type: String
    var name: String
    var labels: [String: String]
    var value: Double
}

/// Parses Prometheus text format with Python's `prometheus_client.parser.text_string_to_metric_families`
/// (the reference implementation); throws when it rejects the text.
func parsePrometheusText(_ text: String) async throws -> [ParsedSample] {
    let script = """
    import json, sys
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        sys.stderr.write("python3 package prometheus_client missing: python3 -m pip install prometheus_client\\n")
        sys.exit(3)
    out = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for sample in family.samples:
            out.append({"family": family.name, "type": family.type, "name": sample.name,
                        "labels": sample.labels, "value": sample.value})
    json.dump(out, sys.stdout)
    """
    let parser = try await HelperProgram.run("/usr/bin/env", ["python3", "-c", script], input: Data(text.utf8))
    guard parser.status == 0 else {
        throw TestFailure("prometheus_client rejected /metrics (exit \(parser.status)): \(parser.errors)")
    }
    struct Raw: Decodable {
        var family: String, type: String, name: String, labels: [String: String], value: Double
    }
    return try JSONDecoder().decode([Raw].self, from: parser.stdout).map {
        ParsedSample(family: $0.family, type: $0.type, name: $0.name, labels: $0.labels, value: $0.value)
    }
}

// MARK: - A notification socket, as systemd would hold it

/// A Unix datagram socket bound at a temporary path that records every datagram it receives.
///
/// Held by a small Python child process (the reference `socket` module, no C pointers in the
/// tests): it prints each datagram as one JSON string per line and exits when its stdin closes.
/// (swift-nio's datagram channel cannot take datagrams from an unbound Unix socket, which is
/// what every sd_notify client sends from.)
final class NotifySocket: Sendable {
    /// The socket file, or the abstract name (without the leading NUL) when bound in the abstract namespace.
    let path: String
    private let process: Process
    private let stdin: Pipe
    private let inbox: Inbox

    private final class Inbox: Sendable {
        let state = Mutex<(pending: String, datagrams: [String])>(("", []))

        func append(_ text: String) {
            state.withLock { state in
                state.pending += text
                while let newline = state.pending.firstIndex(of: "\n") {
                    let line = String(state.pending[..<newline])
                    state.pending.removeSubrange(...newline)
                    state.datagrams.append(line)
                }
            }
        }
    }

    private static let script = """
    import json, os, select, socket, sys
    path, abstract = sys.argv[1], sys.argv[2] == "abstract"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\\0" + path if abstract else path)
    sys.stdout.write("\\n")
    sys.stdout.flush()
    try:
        while True:
            ready, _, _ = select.select([server, sys.stdin], [], [])
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1024):
                break
            if server in ready:
                sys.stdout.write(json.dumps(server.recv(65536).decode("utf-8", "replace")) + "\\n")
                sys.stdout.flush()
    finally:
        if not abstract:
            os.unlink(path)
    """

    private init(path: String, process: Process, stdin: Pipe, inbox: Inbox) {
        self.path = path
        self.process = process
        self.stdin = stdin
        self.inbox = inbox
    }

    static func bind(abstract: Bool = false) async throws -> NotifySocket {
        let name = "cs-notify-\(UInt32.random(in: .min ... .max)).sock"
        let path = abstract ? "consent-sync-test/" + name : NSTemporaryDirectory() + name
        let inbox = Inbox()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, path, abstract ? "abstract" : "path"]
        let stdin = Pipe(), stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        // Reads until the script exits (its reading thread keeps the reader).
        _ = PipeReader(stdout.fileHandleForReading) { chunk in
            inbox.append(String(decoding: chunk, as: UTF8.self))
        }
        try process.run()
        let socket = NotifySocket(path: path, process: process, stdin: stdin, inbox: inbox)
        // The script's first line (empty) says the socket is bound. (Python took over 10 s to
        // start in one CI run, with the whole suite starting beside it.)
        try await waitUntil("the notification socket is bound", timeout: .seconds(60)) {
            inbox.state.withLock { !$0.datagrams.isEmpty } || !process.isRunning
        }
        guard process.isRunning else { throw TestFailure("python3 could not bind \(path)") }
        return socket
    }

    /// Every datagram received so far, in order.
    var datagrams: [String] {
        inbox.state.withLock { $0.datagrams }.dropFirst().compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8), options: .fragmentsAllowed)) as? String
        }
    }

    /// Every line of every datagram received so far.
    var lines: [String] { datagrams.flatMap { $0.split(separator: "\n").map(String.init) } }

    func close() async {
        try? stdin.fileHandleForWriting.close()
        while process.isRunning { try? await Task.sleep(for: .milliseconds(10)) }
    }
}
