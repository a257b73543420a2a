#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Synchronization

/// A webhook receiver on 127.0.0.1 written straight on POSIX sockets, so that a scenario can
/// make it misbehave the way real receivers do: go down and come back on the same port, hang,
/// answer slowly, close the connection in the middle of an answer, answer bytes that are not
/// HTTP, or answer a huge body.
///
/// Each connection is served by its own thread (plain blocking I/O with short `poll` ticks),
/// which keeps the code small and the behaviour exact; a scenario has a few dozen
/// connections at most. What it records (``WebhookReceipt``) is what the invariant checker
/// reads. Its threads keep it alive until ``stop()`` (``ScenarioHarness`` always calls it).
public final class ScriptedReceiver: Sendable {
    /// How to answer one request.
    public enum Behavior: Sendable, CustomStringConvertible {
        /// 200 with an empty body.
        case accept
        /// `code` with an optional `Retry-After` header and a short body.
        case status(Int, retryAfter: String? = nil)
        /// Waits (answering nothing), then behaves as the inner behaviour; gives up when the
        /// client closes the connection meanwhile (the request is then ``WebhookReceipt/Outcome/abandoned``).
        indirect case delayed(Duration, Behavior)
        /// Never answers; the connection ends when the client gives up or the receiver goes down.
        case hang
        /// Sends the first bytes of a status line (`HTTP/1.1 200 O`) and closes the connection.
        case closeMidResponse
        /// Sends bytes that are not HTTP, then closes the connection.
        case garbage
        /// 200 whose body is `bytes` random bytes (not JSON, not UTF-8).
        case acceptWithGarbageBody(bytes: Int)
        /// 200 with a body of `bytes` bytes.
        case acceptWithHugeBody(bytes: Int)
        /// 200 with exactly this body.
        case acceptWithBody([UInt8])
        /// `code` with a body of `bytes` bytes.
        case statusWithHugeBody(Int, bytes: Int)

        public var description: String {
            switch self {
            case .accept: "accept"
            case .status(let code, let retryAfter): retryAfter.map { "status \(code) retry-after \($0)" } ?? "status \(code)"
            case .delayed(let delay, let next): "delayed \(delay) then \(next)"
            case .hang: "hang"
            case .closeMidResponse: "close mid-response"
            case .garbage: "garbage"
            case .acceptWithGarbageBody(let bytes): "200 with \(bytes) garbage bytes"
            case .acceptWithHugeBody(let bytes): "200 with a \(bytes)-byte body"
            case .acceptWithBody(let body): "200 with a \(body.count)-byte body"
            case .statusWithHugeBody(let code, let bytes): "\(code) with a \(bytes)-byte body"
            }
        }
    }

    /// Decides the behaviour for each request as it arrives (its outcome is still `.pending`).
    public typealias Script = @Sendable (WebhookReceipt) -> Behavior

    /// The name of the subscriber it stands for; receipts carry it.
    public let name: String
    /// The port on 127.0.0.1, the same after going down and coming back.
    public let port: Int
    public let path: String
    private let state: Mutex<State>

    private struct State {
        var script: Script
        /// Changes whenever the receiver goes down or stops; threads of an older generation end.
        var generation = 0
        var listener: Int32 = -1
        var isUp = false
        var isStopped = false
        var connections: Set<Int32> = []
        var receipts: [WebhookReceipt] = []
        /// Count of live threads (accept loop and connections), to wait for them on stop.
        var threads = 0
    }

    private init(name: String, port: Int, path: String, script: @escaping Script) {
        self.name = name
        self.port = port
        self.path = path
        self.state = Mutex(State(script: script))
    }

    /// Starts a receiver on a free port of 127.0.0.1 (outside the ephemeral range, so that the
    /// port is still free when it comes back up) and returns once it accepts connections.
    public static func start(name: String, path: String = "/hook", script: @escaping Script = { _ in .accept }) async throws -> ScriptedReceiver {
        for _ in 0..<200 {
            let port = Int.random(in: 20_000..<32_000)
            guard let listener = try? Self.listen(port: port) else { continue }
            let receiver = ScriptedReceiver(name: name, port: port, path: path, script: script)
            receiver.adopt(listener)
            return receiver
        }
        throw ScenarioError("no free port for receiver \(name) on 127.0.0.1")
    }

    /// "http://127.0.0.1:<port><path>"
    public var url: String { "http://127.0.0.1:\(self.port)\(self.path)" }

    /// Every request so far, in arrival order.
    public var receipts: [WebhookReceipt] { self.state.withLock { $0.receipts } }

    /// Requests answered with a 2xx head so far.
    public var acceptedCount: Int { self.state.withLock { $0.receipts.lazy.filter(\.isAccepted).count } }

    public var isUp: Bool { self.state.withLock { $0.isUp } }

    /// Replaces the script for requests from now on.
    public func setScript(_ script: @escaping Script) {
        self.state.withLock { $0.script = script }
    }

    /// Answers every request from now on with `behavior`.
    public func setBehavior(_ behavior: Behavior) {
        self.setScript { _ in behavior }
    }

    /// Stops listening (new connections are refused) and closes every open connection.
    public func goDown() {
        let listener = self.state.withLock { state -> Int32 in
            guard state.isUp else { return -1 }
            state.isUp = false
            state.generation += 1
            for connection in state.connections { shutdown(connection, Int32(SHUT_RDWR)) }
            return state.listener
        }
        // Stops the kernel accepting on it at once; the accept thread closes it.
        if listener >= 0 { shutdown(listener, Int32(SHUT_RDWR)) }
    }

    /// Listens again on the same port. Retries for a while if the old socket is not closed yet.
    public func comeUp() async throws {
        guard self.state.withLock({ !$0.isUp && !$0.isStopped }) else { return }
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            do {
                let listener = try Self.listen(port: self.port)
                self.adopt(listener)
                return
            } catch {
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// Goes down for good and waits (up to 5 s) for its threads to end. Idempotent.
    public func stop() async {
        self.goDown()
        self.state.withLock { $0.isStopped = true }
        let deadline = ContinuousClock.now + .seconds(5)
        while self.state.withLock({ $0.threads }) > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    // MARK: - Sockets

    private static func listen(port: Int) throws -> Int32 {
        #if canImport(Darwin)
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #else
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #endif
        guard fd >= 0 else { throw ScenarioError("socket() failed: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr = in_addr(s_addr: inet_addr("127.0.0.1"))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Self.startListening(fd) == 0 else {
            let code = errno
            close(fd)
            throw ScenarioError("cannot listen on 127.0.0.1:\(port): errno \(code)")
        }
        return fd
    }

    private static func startListening(_ fd: Int32) -> Int32 {
        #if canImport(Darwin)
        Darwin.listen(fd, 128)
        #else
        Glibc.listen(fd, 128)
        #endif
    }

    private func adopt(_ listener: Int32) {
        let generation = self.state.withLock { state -> Int in
            state.listener = listener
            state.isUp = true
            state.threads += 1
            return state.generation
        }
        Thread.detachNewThread { [self] in
            self.acceptLoop(listener: listener, generation: generation)
        }
    }

    private func isCurrent(_ generation: Int) -> Bool {
        self.state.withLock { $0.generation == generation }
    }

    private func acceptLoop(listener: Int32, generation: Int) {
        defer {
            close(listener)
            self.state.withLock { $0.threads -= 1 }
        }
        while self.isCurrent(generation) {
            var descriptor = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 50) > 0 else { continue }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            let registered = self.state.withLock { state -> Bool in
                guard state.generation == generation else { return false }
                state.connections.insert(connection)
                state.threads += 1
                return true
            }
            guard registered else {
                close(connection)
                return
            }
            Thread.detachNewThread { [self] in
                self.serve(connection, generation: generation)
            }
        }
    }

    private func serve(_ connection: Int32, generation: Int) {
        defer {
            self.state.withLock { state in
                state.connections.remove(connection)
                state.threads -= 1
            }
            close(connection)
        }
        var buffer: [UInt8] = []
        while let request = Self.readRequest(connection, buffer: &buffer, stillCurrent: { self.isCurrent(generation) }) {
            let (receipt, script) = self.state.withLock { state -> (WebhookReceipt, Script) in
                var receipt = WebhookReceipt(subscriber: self.name, index: state.receipts.count, request: request)
                if request.path != self.path { receipt.note = "unknown path \(request.path)" }
                state.receipts.append(receipt)
                return (receipt, state.script)
            }
            let behavior: Behavior = request.path == self.path ? script(receipt) : .status(404)
            guard self.perform(behavior, on: connection, receipt: receipt.index, generation: generation) else { return }
        }
    }

    /// Answers one request; returns whether the connection may serve another.
    private func perform(_ behavior: Behavior, on connection: Int32, receipt index: Int, generation: Int) -> Bool {
        switch behavior {
        case .accept:
            return self.respond(on: connection, receipt: index, status: 200, body: [])
        case .status(let code, let retryAfter):
            let headers = retryAfter.map { [("retry-after", $0)] } ?? []
            return self.respond(on: connection, receipt: index, status: code, headers: headers, body: Array("scripted \(code)".utf8))
        case .delayed(let delay, let next):
            guard Self.waitWhileConnected(connection, for: delay, stillCurrent: { self.isCurrent(generation) }) else {
                self.setOutcome(.abandoned, receipt: index)
                return false
            }
            return self.perform(next, on: connection, receipt: index, generation: generation)
        case .hang:
            _ = Self.waitWhileConnected(connection, for: nil, stillCurrent: { self.isCurrent(generation) })
            self.setOutcome(.abandoned, receipt: index)
            return false
        case .closeMidResponse:
            _ = Self.send(connection, Array("HTTP/1.1 200 O".utf8))
            self.setOutcome(.cut, receipt: index)
            return false
        case .garbage:
            var bytes = (0..<64).map { _ in UInt8.random(in: 0...255) }
            bytes += Array("\r\n\r\n".utf8)
            _ = Self.send(connection, bytes)
            self.setOutcome(.garbage, receipt: index)
            return false
        case .acceptWithGarbageBody(let count):
            let body = (0..<count).map { _ in UInt8.random(in: 0...255) }
            return self.respond(on: connection, receipt: index, status: 200, contentType: "application/octet-stream", body: body)
        case .acceptWithHugeBody(let count):
            return self.respond(on: connection, receipt: index, status: 200, body: Array(repeating: UInt8(ascii: "x"), count: count))
        case .acceptWithBody(let body):
            return self.respond(on: connection, receipt: index, status: 200, contentType: "application/json", body: body)
        case .statusWithHugeBody(let code, let count):
            return self.respond(on: connection, receipt: index, status: code, body: Array(repeating: UInt8(ascii: "x"), count: count))
        }
    }

    private func respond(
        on connection: Int32,
        receipt index: Int,
        status: Int,
        headers: [(String, String)] = [],
        contentType: String = "text/plain",
        body: [UInt8]
    ) -> Bool {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\ncontent-type: \(contentType)\r\ncontent-length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        // A client that already closed (it timed out) never reads the answer: writing into the
        // socket would still succeed, and record an acceptance nobody saw. (A close that races
        // with the write is still counted as accepted; the checker allows for that from the
        // relay's recorded timeout.)
        guard !Self.peerHasClosed(connection, waitingUpTo: 0), Self.send(connection, Array(head.utf8)) else {
            self.setOutcome(.abandoned, receipt: index)
            return false
        }
        // The head is the receiver's answer: a 2xx head means "stored", whatever happens to the body.
        self.setOutcome((200..<300).contains(status) ? .accepted(status) : .rejected(status), receipt: index)
        return Self.send(connection, body)
    }

    private func setOutcome(_ outcome: WebhookReceipt.Outcome, receipt index: Int) {
        self.state.withLock { state in
            state.receipts[index].outcome = outcome
            state.receipts[index].answeredAt = Date()
        }
    }

    private static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 204: "No Content"
        case 400: "Bad Request"
        case 404: "Not Found"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        default: "Scripted"
        }
    }

    /// Writes all of `bytes`; false when the peer is gone.
    private static func send(_ connection: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                #if canImport(Darwin)
                Darwin.send(connection, raw.baseAddress! + offset, raw.count - offset, 0)
                #else
                Glibc.send(connection, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                #endif
            }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }

    /// Waits `duration` (nil: until the peer or the receiver ends the connection).
    /// Returns true when the full duration passed with the peer still connected.
    ///
    /// Looks for the client's close before it looks at the clock, also once the duration is
    /// over: on a loaded machine this thread may wake long after the client gave up (timed
    /// out), and answering then would record an acceptance the client never read.
    private static func waitWhileConnected(_ connection: Int32, for duration: Duration?, stillCurrent: () -> Bool) -> Bool {
        let deadline = duration.map { ContinuousClock.now + $0 }
        while stillCurrent() {
            if Self.peerHasClosed(connection, waitingUpTo: 10) { return false }
            if let deadline, ContinuousClock.now >= deadline { return true }
        }
        return false
    }

    /// Whether the client has closed (or reset) the connection, waiting up to `milliseconds` for
    /// something to happen on it. Pipelined bytes are left unread (and wait a short tick).
    private static func peerHasClosed(_ connection: Int32, waitingUpTo milliseconds: Int32) -> Bool {
        var descriptor = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, milliseconds) > 0 else { return false }
        if descriptor.revents & Int16(POLLERR | POLLHUP) != 0 { return true }
        var probe: UInt8 = 0
        let peeked = recv(connection, &probe, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        if peeked == 0 { return true }  // orderly close by the client
        if peeked < 0 && errno != EAGAIN && errno != EINTR { return true }
        if peeked > 0 && milliseconds > 0 { usleep(UInt32(milliseconds) * 1000) }  // a pipelined request: not ours to read yet
        return false
    }

    /// A parsed request.
    struct RawRequest {
        var method: String
        var path: String
        var headers: [String: String]
        var body: [UInt8]
    }

    /// Reads one HTTP/1.1 request (Content-Length bodies only, which is what libcurl sends);
    /// nil when the connection ends first or is not HTTP.
    private static func readRequest(_ connection: Int32, buffer: inout [UInt8], stillCurrent: () -> Bool) -> RawRequest? {
        let separator = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        while headEnd == nil {
            if let range = buffer.firstRange(of: separator) {
                headEnd = range.upperBound
                break
            }
            guard buffer.count < 64 * 1024, Self.readMore(connection, into: &buffer, stillCurrent: stillCurrent) else { return nil }
        }
        guard let headEnd else { return nil }
        let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ")
        guard requestLine.count >= 2 else { return nil }
        var headers: [String: String] = [:]
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { "\($0), \(value)" } ?? value
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        guard length >= 0, length <= 16 << 20 else { return nil }
        while buffer.count < headEnd + length {
            guard Self.readMore(connection, into: &buffer, stillCurrent: stillCurrent) else { return nil }
        }
        let body = Array(buffer[headEnd..<(headEnd + length)])
        buffer.removeFirst(headEnd + length)
        return RawRequest(method: String(requestLine[0]), path: String(requestLine[1]), headers: headers, body: body)
    }

    private static func readMore(_ connection: Int32, into buffer: inout [UInt8], stillCurrent: () -> Bool) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while stillCurrent() {
            var descriptor = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, 50)
            if ready == 0 || (ready < 0 && errno == EINTR) { continue }
            guard ready > 0 else { return false }
            let count = chunk.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
            if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard count > 0 else { return false }
            buffer.append(contentsOf: chunk[..<count])
            return true
        }
        return false
    }
}

/// One request as a ``ScriptedReceiver`` saw it, and how it was answered.
public struct WebhookReceipt: Sendable, CustomStringConvertible {
    public enum Outcome: Sendable, Equatable, CustomStringConvertible {
        /// Arrived; no answer yet.
        case pending
        /// A 2xx status line and headers were written: the receiver took the change.
        case accepted(Int)
        /// A non-2xx status line and headers were written.
        case rejected(Int)
        /// The client went away (timeout) or the receiver went down before an answer.
        case abandoned
        /// The answer was cut off inside the status line.
        case cut
        /// The answer was not HTTP.
        case garbage

        public var description: String {
            switch self {
            case .pending: "pending"
            case .accepted(let code): "accepted \(code)"
            case .rejected(let code): "rejected \(code)"
            case .abandoned: "abandoned"
            case .cut: "cut mid-response"
            case .garbage: "answered garbage"
            }
        }
    }

    /// The subscriber (receiver) name.
    public var subscriber: String
    /// 0-based arrival order at this receiver.
    public var index: Int
    public var arrivedAt: Date
    public var answeredAt: Date?
    public var outcome: Outcome = .pending
    /// The `webhook-id` header: one per delivery, the same on every retry.
    public var webhookID: String?
    /// The CloudEvents `id`: `changes.event_id`.
    public var eventID: String?
    public var subject: String?
    public var purpose: String?
    /// The CloudEvents `sequence` (the outbox id, zero-padded).
    public var sequence: String?
    public var bodyBytes: Int = 0
    public var note: String?

    public init(
        subscriber: String, index: Int, arrivedAt: Date = Date(), outcome: Outcome = .pending,
        webhookID: String?, eventID: String?, subject: String?, purpose: String? = nil, sequence: String? = nil
    ) {
        self.subscriber = subscriber
        self.index = index
        self.arrivedAt = arrivedAt
        self.outcome = outcome
        self.webhookID = webhookID
        self.eventID = eventID
        self.subject = subject
        self.purpose = purpose
        self.sequence = sequence
    }

    init(subscriber: String, index: Int, request: ScriptedReceiver.RawRequest) {
        self.subscriber = subscriber
        self.index = index
        self.arrivedAt = Date()
        self.webhookID = request.headers["webhook-id"]
        self.bodyBytes = request.body.count
        if let event = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any] {
            self.eventID = event["id"] as? String
            self.subject = event["subject"] as? String
            self.sequence = event["sequence"] as? String
            self.purpose = (event["data"] as? [String: Any])?["purpose"] as? String
        } else {
            self.note = "body is not a JSON object"
        }
    }

    /// True when the receiver answered with a 2xx head.
    public var isAccepted: Bool {
        if case .accepted = self.outcome { return true }
        return false
    }

    /// The delivery id at the end of a `webhook-id` (`msg_<installation>_<delivery id>`).
    public var deliveryID: Int64? {
        self.webhookID?.split(separator: "_").last.flatMap { Int64($0) }
    }

    public var description: String {
        let time = ScenarioClock.format(self.arrivedAt)
        return "#\(self.index) at \(time) webhook-id \(self.webhookID ?? "-") seq \(self.sequence.map { String(Int64($0) ?? -1) } ?? "-") -> \(self.outcome)"
    }
}
