import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A real HTTP server on 127.0.0.1 that records webhook deliveries and answers
/// them as a test script says.
///
/// ```swift
/// let receiver = try await WebhookReceiver.start { request in
///     request.index == 0 ? .status(503, headers: [("Retry-After", "1")]) : .status(200)
/// }
/// defer { Task { await receiver.stop() } }   // or `await receiver.stop()` at the end
/// ```
public final class WebhookReceiver: Sendable {
    /// One request as it arrived.
    public struct Request: Sendable {
        public var method: String
        public var path: String
        /// Lowercased names; repeated headers joined with ", ".
        public var headers: [String: String]
        public var body: [UInt8]
        public var receivedAt: Date
        /// 0-based arrival order.
        public var index: Int
        /// The body decoded as UTF-8 (invalid bytes replaced).
        public var bodyString: String { String(decoding: self.body, as: UTF8.self) }
    }

    /// What to answer a request with.
    public enum Reply: Sendable {
        case status(Int, headers: [(String, String)] = [], body: String = "")
        /// Waits, then answers with the inner reply (or drops the request when the receiver stops first).
        indirect case delayed(Duration, Reply)
        /// Never answers; the request ends when the client gives up or the receiver stops.
        case hang
    }

    public typealias Responder = @Sendable (Request) async -> Reply

    /// The bound port on 127.0.0.1.
    public let port: Int
    /// The path the responder answers; other paths get 404 (and are recorded too).
    public let path: String
    private let recorder: Recorder
    private let serviceGroup: ServiceGroup
    private let server: Task<Void, any Error>

    private init(port: Int, path: String, recorder: Recorder, serviceGroup: ServiceGroup, server: Task<Void, any Error>) {
        self.port = port
        self.path = path
        self.recorder = recorder
        self.serviceGroup = serviceGroup
        self.server = server
    }

    deinit {
        // A receiver dropped without `stop()` must not keep serving.
        self.recorder.stop()
        self.server.cancel()
    }

    /// Starts a receiver on a free port of 127.0.0.1 and returns once it accepts connections.
    public static func start(
        path: String = "/hook",
        responder: @escaping Responder = { _ in .status(200) }
    ) async throws -> WebhookReceiver {
        let recorder = Recorder()
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        var logger = Logger(label: "consent-sync.test.webhook-receiver")
        logger.logLevel = .warning
        let application = Application(
            responder: CallbackResponder<BasicRequestContext> { request, _ in
                try await Self.respond(to: request, path: path, recorder: recorder, responder: responder)
            },
            configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: logger
        )
        let serviceGroup = ServiceGroup(configuration: .init(services: [application], logger: logger))
        let server = Task {
            // Ends `ports` too when the server fails to start, so `start` cannot hang.
            defer { portContinuation.finish() }
            try await serviceGroup.run()
        }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            server.cancel()
            _ = try await server.value
            throw WebhookReceiverError(message: "the webhook receiver did not start on 127.0.0.1")
        }
        return WebhookReceiver(port: port, path: path, recorder: recorder, serviceGroup: serviceGroup, server: server)
    }

    /// "http://127.0.0.1:<port><path>"
    public var url: String { "http://127.0.0.1:\(self.port)\(self.path)" }

    /// Everything received so far, in arrival order, whatever was answered.
    public var requests: [Request] { self.recorder.requests }

    /// Waits until at least `count` requests have arrived; throws when `timeout` passes first
    /// (a guard against a hang, wide enough for a loaded machine, not a speed check).
    @discardableResult
    public func waitForRequests(count: Int, timeout: Duration = .seconds(30)) async throws -> [Request] {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            let requests = self.recorder.requests
            if requests.count >= count { return requests }
            if clock.now >= deadline {
                throw WebhookReceiverError(
                    message: "expected \(count) request(s) at \(self.url) within \(timeout), \(requests.count) arrived"
                )
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Stops the server: pending `.hang` and `.delayed` replies end with 503
    /// and open connections close. Idempotent.
    public func stop() async {
        // A graceful shutdown waits for in-flight requests, so those still
        // waiting are released first.
        self.recorder.stop()
        await self.serviceGroup.triggerGracefulShutdown()
        let server = self.server
        let watchdog = Task {
            try await Task.sleep(for: .seconds(5))
            server.cancel()  // a responder that never returns
        }
        _ = try? await server.value
        watchdog.cancel()
    }

    // MARK: Responding

    private static func respond(
        to request: Hummingbird.Request,
        path: String,
        recorder: Recorder,
        responder: Responder
    ) async throws -> Response {
        var request = request
        let body = try await request.collectBody(upTo: 64 * 1024 * 1024)
        var headers: [String: String] = [:]
        for field in request.headers {
            let name = field.name.canonicalName
            headers[name] = headers[name].map { "\($0), \(field.value)" } ?? field.value
        }
        let recorded = recorder.record { index in
            Request(
                method: request.method.rawValue,
                path: request.uri.path,
                headers: headers,
                body: Array(body.readableBytesView),
                receivedAt: Date(),
                index: index
            )
        }
        guard recorded.path == path else {
            return Response(status: .notFound)
        }
        var reply = await responder(recorded)
        while true {
            switch reply {
            case .status(let code, let replyHeaders, let replyBody):
                var fields = HTTPFields()
                for (name, value) in replyHeaders {
                    guard let fieldName = HTTPField.Name(name) else {
                        throw WebhookReceiverError(message: "invalid reply header name '\(name)'")
                    }
                    fields.append(HTTPField(name: fieldName, value: value))
                }
                return Response(
                    status: HTTPResponse.Status(code: code),
                    headers: fields,
                    body: ResponseBody(byteBuffer: ByteBuffer(string: replyBody))
                )
            case .delayed(let delay, let next):
                guard await recorder.sleep(for: delay) else { return Response(status: .serviceUnavailable) }
                reply = next
            case .hang:
                _ = await recorder.sleep(for: nil)
                return Response(status: .serviceUnavailable)
            }
        }
    }
}

/// A receiver expectation that was not met, or a receiver that did not start.
public struct WebhookReceiverError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { self.message }
}

/// The requests seen so far, and whether the receiver is stopping; shared by
/// the server's connection tasks.
private final class Recorder: Sendable {
    private let state = Mutex<[WebhookReceiver.Request]>([])
    private let stopping = Atomic<Bool>(false)

    func stop() {
        self.stopping.store(true, ordering: .releasing)
    }

    /// Sleeps for `duration` (nil: forever) unless the receiver stops or the
    /// task is cancelled first. Returns true when the full duration passed.
    func sleep(for duration: Duration?) async -> Bool {
        // Polling keeps this trivially correct; a test fixture can afford 10 ms ticks.
        let clock = ContinuousClock()
        let deadline = duration.map { clock.now.advanced(by: $0) }
        while !self.stopping.load(ordering: .acquiring), !Task.isCancelled {
            var tick = Duration.milliseconds(10)
            if let deadline {
                let remaining = deadline - clock.now
                if remaining <= .zero { return true }
                tick = min(tick, remaining)
            }
            try? await Task.sleep(for: tick)
        }
        return false
    }

    var requests: [WebhookReceiver.Request] { self.state.withLock { $0 } }

    /// Appends the request built for the next index and returns it.
    func record(_ make: (Int) -> WebhookReceiver.Request) -> WebhookReceiver.Request {
        self.state.withLock { requests in
            let request = make(requests.count)
            requests.append(request)
            return request
        }
    }
}
