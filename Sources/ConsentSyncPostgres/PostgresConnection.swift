import CLibPQ
import Dispatch
import Logging
import Synchronization

/// One PostgreSQL connection over libpq.
///
/// Every blocking libpq call runs on the connection's own serial `DispatchQueue`, never on Swift's
/// cooperative thread pool. Calls from several tasks are queued and run one at a time.
/// Cancelling the task that awaits ``query(_:_:)`` sends a cancel request to the server; the call
/// then throws ``PostgresError/Code/cancelled`` and the connection stays usable.
public final class PostgresConnection: Sendable {
    /// Serial: the only context that touches `handle`.
    private let queue: DispatchQueue
    private let handle: LibPQConnection
    private let requests: Mutex<RequestTable>
    /// The `PGcancel` object. Locked for the whole (blocking) `PQcancel` call, so that the next
    /// statement cannot start until an in-flight cancel request was delivered.
    private let canceller: Canceller
    private let connected: Atomic<Bool>
    private let logger: Logger

    /// The server process serving this connection (`PQbackendPID`).
    public let backendPID: Int32
    /// The server version as an integer, e.g. `150018` (`PQserverVersion`).
    public let serverVersion: Int

    private init(handle: LibPQConnection, queue: DispatchQueue, logger: Logger) {
        self.handle = handle
        self.queue = queue
        self.backendPID = handle.backendPID
        self.serverVersion = handle.serverVersion
        self.canceller = Canceller(handle.makeCancel())
        self.requests = Mutex(RequestTable())
        self.connected = Atomic(handle.isConnected)
        var logger = logger
        logger[metadataKey: "postgres.backend_pid"] = "\(handle.backendPID)"
        self.logger = logger
    }

    // `deinit` needs no code: `handle` calls `PQfinish` in its own deinit when `close()` was not called,
    // and no queued work can outlive `self` because every work item retains it.

    /// Opens a connection; throws ``PostgresError/Code/connectionFailed`` with libpq's message
    /// (passwords removed).
    ///
    /// Cancelling the calling task abandons the attempt at once (it finishes in the background).
    public static func connect(_ configuration: PostgresConfiguration, logger: Logger) async throws -> PostgresConnection {
        let queue = DispatchQueue(label: "consent-sync.postgres.connection")
        let attempt = ConnectAttempt()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                guard attempt.install(continuation) else { return }
                queue.async {
                    let result = LibPQConnection.connect(configuration, logger: logger).map {
                        PostgresConnection(handle: $0, queue: queue, logger: logger)
                    }
                    if case .success(let connection) = result {
                        connection.logger.debug("connected to postgres", metadata: [
                            "postgres.server_version": "\(connection.serverVersion)",
                        ])
                    }
                    // When the attempt was abandoned, the connection is released here (PQfinish).
                    attempt.complete(with: result.mapError { $0 as any Error })
                }
            }
        } onCancel: {
            attempt.cancel()
        }
    }

    /// True while the connection is open and healthy (`PQstatus == CONNECTION_OK` after the last call).
    public var isConnected: Bool {
        self.connected.load(ordering: .acquiring)
    }

    /// Runs one statement with `$1`, `$2`, ... parameters in text format (`nil` is NULL).
    /// Cast in SQL for types: `$1::bigint`.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) async throws -> PostgresRows {
        try await self.run(sql, parameters: parameters, cancellable: true)
    }

    /// Runs groups of statements in one round trip (libpq pipeline mode). Each group is one
    /// transaction: a failed statement rolls back its group and skips the rest of it; the next
    /// groups still run. Each statement takes its own snapshot, so a lock taken by a statement
    /// holds for the next ones of its group, as between `BEGIN` and `COMMIT`.
    ///
    /// With `prepared`, each statement is parsed and planned once per connection (a named
    /// prepared statement, created on first use): not for a transaction-pooling proxy that
    /// does not track prepared statements (PgBouncer before 1.21).
    ///
    /// - Returns: one result per statement, groups flattened, in order.
    /// - Throws: ``PostgresError/Code/cancelled`` when cancelled before it started.
    public func pipeline(_ groups: [[PostgresStatement]], prepared: Bool = false) async throws -> [Result<PostgresRows, PostgresError>] {
        let id = self.requests.withLock { $0.register() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                self.queue.async {
                    self.canceller.barrier()
                    if self.requests.withLock({ $0.start(id) }) {
                        continuation.resume(throwing: PostgresError(code: .cancelled, message: "the statements were cancelled before they started"))
                        return
                    }
                    let results = self.handle.executePipeline(groups, prepare: prepared)
                    let cancelSent = self.requests.withLock { $0.finish(id) }
                    self.connected.store(self.handle.isConnected, ordering: .releasing)
                    continuation.resume(returning: results.map { result in
                        result.mapError { error in
                            var error = error
                            if cancelSent, error.sqlState == "57014" { error.code = .cancelled }
                            return error
                        }
                    })
                }
            }
        } onCancel: {
            self.cancel(id)
        }
    }

    /// Runs a script of several statements without parameters (`PQexec`), e.g. a migration.
    public func execute(_ script: String) async throws {
        try await self.run(script, parameters: nil, cancellable: true)
    }

    /// Runs `body` between `BEGIN` and `COMMIT`; on any error issues `ROLLBACK` and rethrows.
    ///
    /// The `ROLLBACK` runs even when the task was cancelled. Statements from other tasks on the same
    /// connection would run inside the transaction: don't share a connection while one is open.
    public func withTransaction<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await self.query("BEGIN")
        do {
            let value = try await body(self)
            try await self.query("COMMIT")
            return value
        } catch {
            if self.isConnected {
                do {
                    try await self.run("ROLLBACK", parameters: [], cancellable: false)
                } catch let rollbackError {
                    self.logger.warning("rollback failed: \(rollbackError)")
                }
            }
            throw error
        }
    }

    /// Quotes an identifier for SQL text (`"a""b"` for `a"b`), as `PQescapeIdentifier` does.
    ///
    /// Implemented in Swift because `PQescapeIdentifier` writes the connection's error state, so calling
    /// it here could race with a statement running on the connection's queue. The connection always
    /// uses `client_encoding` UTF8 and a Swift string is valid UTF-8, which leaves doubling quotes as
    /// the only transformation `PQescapeIdentifier` would make.
    public func escapeIdentifier(_ identifier: String) throws -> String {
        try Self.quoteIdentifier(identifier)
    }

    static func quoteIdentifier(_ identifier: String) throws -> String {
        if identifier.utf8.contains(0) {
            throw PostgresError(code: .invalidArgument, message: "an identifier cannot contain a NUL byte")
        }
        return "\"" + identifier.replacing("\"", with: "\"\"") + "\""
    }

    /// Closes the connection (`PQfinish`); idempotent.
    ///
    /// Statements still waiting in the queue fail with ``PostgresError/Code/cancelled``, and a running
    /// one is cancelled on the server, so closing is prompt.
    public func close() async {
        if let running = self.requests.withLock({ $0.cancelAll() }) {
            self.cancel(running)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            self.queue.async {
                self.canceller.free()
                if !self.handle.isFinished {
                    self.handle.finish()
                    self.logger.debug("closed postgres connection")
                }
                self.connected.store(false, ordering: .releasing)
                continuation.resume()
            }
        }
    }

    // MARK: Running statements

    @discardableResult
    private func run(_ sql: String, parameters: [String?]?, cancellable: Bool) async throws -> PostgresRows {
        // Registered before the cancellation handler exists, so `onCancel` always finds the request.
        let id = self.requests.withLock { $0.register() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                self.queue.async {
                    continuation.resume(with: self.runOnQueue(id, sql, parameters))
                }
            }
        } onCancel: {
            if cancellable {
                self.cancel(id)
            }
        }
    }

    private func runOnQueue(_ id: Int, _ sql: String, _ parameters: [String?]?) -> Result<PostgresRows, PostgresError> {
        // Wait out a cancel request still being delivered for the previous statement.
        self.canceller.barrier()
        let cancelledEarly = self.requests.withLock { $0.start(id) }
        if cancelledEarly {
            return .failure(PostgresError(code: .cancelled, message: "the statement was cancelled before it started", query: sql))
        }
        var result = self.handle.execute(sql, parameters: parameters)
        let cancelSent = self.requests.withLock { $0.finish(id) }
        self.connected.store(self.handle.isConnected, ordering: .releasing)

        if case .failure(var error) = result {
            if cancelSent, error.sqlState == "57014" {
                error.code = .cancelled
                result = .failure(error)
            } else if error.isConnectionError {
                self.logger.debug("postgres connection lost: \(error.message)")
            }
        }
        return result
    }

    private func cancel(_ id: Int) {
        guard self.requests.withLock({ $0.cancel(id) }) else { return }
        // PQcancel opens a connection to the server and waits: keep it off the cooperative pool.
        DispatchQueue.global().async {
            self.canceller.send(logger: self.logger) {
                self.requests.withLock { $0.markCancelSent(id) }
            }
        }
    }
}

// MARK: - Bookkeeping

/// What happened to each statement between `query` and its result.
private struct RequestTable {
    enum State {
        case queued
        case cancelledWhileQueued
        case running
        case cancelSent
    }

    private var nextID = 0
    private var states: [Int: State] = [:]

    mutating func register() -> Int {
        self.nextID += 1
        self.states[self.nextID] = .queued
        return self.nextID
    }

    /// Marks `id` running; returns true when it was cancelled before it started (and forgets it).
    mutating func start(_ id: Int) -> Bool {
        if self.states[id] == .cancelledWhileQueued {
            self.states[id] = nil
            return true
        }
        self.states[id] = .running
        return false
    }

    /// Forgets `id`; returns true when a cancel request was sent for it.
    mutating func finish(_ id: Int) -> Bool {
        self.states.removeValue(forKey: id) == .cancelSent
    }

    /// Returns true when a cancel request must be sent (the statement is running).
    mutating func cancel(_ id: Int) -> Bool {
        switch self.states[id] {
        case .queued:
            self.states[id] = .cancelledWhileQueued
            return false
        case .running:
            return true
        case .cancelledWhileQueued, .cancelSent, nil:
            return false
        }
    }

    /// Marks every queued statement cancelled; returns the running one, if any.
    mutating func cancelAll() -> Int? {
        var running: Int?
        for (id, state) in self.states {
            switch state {
            case .queued: self.states[id] = .cancelledWhileQueued
            case .running: running = id
            case .cancelledWhileQueued, .cancelSent: break
            }
        }
        return running
    }

    /// Marks a running `id` as cancelled; false when it is no longer running.
    mutating func markCancelSent(_ id: Int) -> Bool {
        guard self.states[id] == .running else { return false }
        self.states[id] = .cancelSent
        return true
    }
}

/// Owns the `PGcancel` object, which libpq allows to be used from any thread.
private final class Canceller: Sendable {
    /// Wraps the pointer so it can live in a `Mutex`; only used while the mutex is held.
    private struct Handle: @unchecked Sendable {
        var cancel: OpaquePointer?
    }

    private let handle: Mutex<Handle>

    init(_ cancel: OpaquePointer?) {
        self.handle = Mutex(Handle(cancel: cancel))
    }

    deinit {
        self.free()
    }

    func free() {
        self.handle.withLock { handle in
            if let cancel = handle.cancel {
                PQfreeCancel(cancel)
                handle.cancel = nil
            }
        }
    }

    /// Returns once no cancel request is in flight.
    func barrier() {
        self.handle.withLock { _ in }
    }

    /// Sends a cancel request (blocking) if `stillRunning()` agrees; holds the lock throughout.
    func send(logger: Logger, if stillRunning: () -> Bool) {
        self.handle.withLock { handle in
            guard let cancel = handle.cancel, stillRunning() else { return }
            var buffer = [CChar](repeating: 0, count: 256)
            if PQcancel(cancel, &buffer, Int32(buffer.count)) == 0 {
                let message = buffer.withUnsafeBufferPointer { trimmedMessage($0.baseAddress) }
                logger.warning("could not send cancel request: \(message)")
            } else {
                logger.debug("sent cancel request")
            }
        }
    }
}

/// The hand-over between a connect attempt on the queue and the awaiting task, which may give up first.
private final class ConnectAttempt: Sendable {
    private enum State {
        case initial
        case waiting(CheckedContinuation<PostgresConnection, any Error>)
        case cancelledEarly
        case done
    }

    private let state = Mutex(State.initial)

    private static var cancellationError: PostgresError {
        PostgresError(code: .cancelled, message: "connecting was cancelled")
    }

    /// Returns false when the task was already cancelled (the continuation is resumed then).
    func install(_ continuation: CheckedContinuation<PostgresConnection, any Error>) -> Bool {
        let installed = self.state.withLock { state -> Bool in
            guard case .initial = state else {
                state = .done
                return false
            }
            state = .waiting(continuation)
            return true
        }
        if !installed {
            continuation.resume(throwing: Self.cancellationError)
        }
        return installed
    }

    func cancel() {
        let continuation = self.state.withLock { state -> CheckedContinuation<PostgresConnection, any Error>? in
            switch state {
            case .initial:
                state = .cancelledEarly
                return nil
            case .waiting(let continuation):
                state = .done
                return continuation
            case .cancelledEarly, .done:
                return nil
            }
        }
        continuation?.resume(throwing: Self.cancellationError)
    }

    func complete(with result: Result<PostgresConnection, any Error>) {
        let continuation = self.state.withLock { state -> CheckedContinuation<PostgresConnection, any Error>? in
            guard case .waiting(let continuation) = state else { return nil }
            state = .done
            return continuation
        }
        continuation?.resume(with: result)
    }
}
