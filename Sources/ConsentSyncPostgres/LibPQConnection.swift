import CLibPQ
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Owns one `PGconn` and runs blocking libpq calls on it.
///
/// `@unchecked Sendable` because its owner hands it between threads, but never uses it from two
/// threads at once: a `PostgresConnection` touches it only on its serial `queue` (or in `deinit`,
/// when nothing else can), the listener only on its own thread.
final class LibPQConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    /// Retained while `conn` may call the notice receiver; released after `PQfinish`.
    private let noticeSink: Unmanaged<NoticeSink>

    private init(conn: OpaquePointer, logger: Logger) {
        self.conn = conn
        self.noticeSink = Unmanaged.passRetained(NoticeSink(logger: logger))
        // Route NOTICE/WARNING to the logger instead of libpq's default (stderr).
        PQsetNoticeReceiver(conn, noticeReceiver, self.noticeSink.toOpaque())
    }

    deinit {
        self.finish()
        self.noticeSink.release()
    }

    /// Connects with `PQconnectdbParams` (blocking). The error message never carries a password.
    static func connect(_ configuration: PostgresConfiguration, logger: Logger) -> Result<LibPQConnection, PostgresError> {
        if let problem = ConnectionParameters.validate(configuration) {
            return .failure(problem)
        }
        let parameters = ConnectionParameters(configuration)
        guard let conn = parameters.withCArrays({ PQconnectdbParams($0, $1, 1) }) else {
            return .failure(PostgresError(code: .connectionFailed, message: "libpq could not allocate a connection"))
        }
        guard PQstatus(conn) == CONNECTION_OK else {
            var secrets = parameters.passwords
            if let effective = effectivePassword(conn) {
                secrets.append(effective)
            }
            let message = ConnectionParameters.redact(trimmedMessage(PQerrorMessage(conn)), secrets: secrets)
            PQfinish(conn)
            return .failure(PostgresError(code: .connectionFailed, message: message, isConnectionError: true))
        }
        return .success(LibPQConnection(conn: conn, logger: logger))
    }

    /// The password libpq actually used (from the string, an override or `PGPASSWORD`).
    private static func effectivePassword(_ conn: OpaquePointer) -> String? {
        guard let options = PQconninfo(conn) else { return nil }
        defer { PQconninfoFree(options) }
        var option = options
        while let keyword = option.pointee.keyword {
            if String(cString: keyword) == "password", let value = option.pointee.val {
                return String(cString: value)
            }
            option += 1
        }
        return nil
    }

    // MARK: State

    var isFinished: Bool { self.conn == nil }

    var isConnected: Bool {
        guard let conn = self.conn else { return false }
        return PQstatus(conn) == CONNECTION_OK
    }

    var backendPID: Int32 {
        guard let conn = self.conn else { return 0 }
        return PQbackendPID(conn)
    }

    var serverVersion: Int {
        guard let conn = self.conn else { return 0 }
        return Int(PQserverVersion(conn))
    }

    var socket: Int32 {
        guard let conn = self.conn else { return -1 }
        return PQsocket(conn)
    }

    var errorMessage: String {
        guard let conn = self.conn else { return "connection closed" }
        return trimmedMessage(PQerrorMessage(conn))
    }

    /// A cancel object for this connection (`PQgetCancel`); usable from any thread, free with `PQfreeCancel`.
    func makeCancel() -> OpaquePointer? {
        guard let conn = self.conn else { return nil }
        return PQgetCancel(conn)
    }

    /// `PQfinish`; idempotent.
    func finish() {
        if let conn = self.conn {
            self.conn = nil
            PQfinish(conn)
        }
    }

    // MARK: Statements

    /// Runs one statement with `PQexecParams` (parameters in text format), or a script with
    /// `PQexec` when `parameters` is `nil`.
    func execute(_ sql: String, parameters: [String?]?) -> Result<PostgresRows, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", query: sql, isConnectionError: true))
        }
        if sql.utf8.containsNUL {
            return .failure(PostgresError(code: .invalidArgument, message: "the SQL text contains a NUL byte", query: sql))
        }
        let result: OpaquePointer?
        if let parameters {
            if let position = parameters.firstIndex(where: { $0?.utf8.containsNUL == true }) {
                return .failure(PostgresError(
                    code: .invalidArgument,
                    message: "parameter $\(position + 1) contains a NUL byte, which text values cannot hold",
                    query: sql
                ))
            }
            // strdup'd copies stay alive until after PQexecParams returns.
            let values = parameters.map { $0.map { strdup($0) } ?? nil }
            defer { values.forEach { free($0) } }
            let constValues = values.map { UnsafePointer($0) }
            result = PQexecParams(conn, sql, Int32(parameters.count), nil, constValues, nil, nil, 0)
        } else {
            result = PQexec(conn, sql)
        }
        return self.consume(result, sql: sql)
    }

    /// Runs groups of statements in one round trip (libpq pipeline mode). With `prepare`, each
    /// statement is prepared on its first use on this connection and executed by name after.
    /// Each group is one implicit transaction (ended by a sync point): a failed statement rolls its group back and
    /// skips the rest of that group (`PGRES_PIPELINE_ABORTED`); later groups still run. Each
    /// statement takes its own snapshot (READ COMMITTED), so a lock taken by one statement is held
    /// before the next one's snapshot, as with `BEGIN … COMMIT`.
    /// - Returns: one result per statement, in order, groups flattened.
    func executePipeline(_ groups: [[PostgresStatement]], prepare: Bool) -> [Result<PostgresRows, PostgresError>] {
        let results = self.runPipeline(groups, prepare: prepare)
        guard let conn = self.conn, PQpipelineStatus(conn) != PQ_PIPELINE_OFF else { return results }
        // Still in pipeline mode: results were left unread. Seen once in the database-fault
        // scenario (PostgreSQL restarted in the middle of a round): libpq still called the
        // connection good, the relay kept it, and every later statement failed with
        // "synchronous command execution functions are not allowed in pipeline mode". Close it
        // (reading on could block on a half-sent round) and say the connection was lost, so that
        // the caller connects anew. Statements that succeeded did run; the next use of the
        // closed connection fails as a lost connection.
        self.finish()
        return results.map { result in
            guard case .failure(var error) = result else { return result }
            error.isConnectionError = true
            return .failure(error)
        }
    }

    private func runPipeline(_ groups: [[PostgresStatement]], prepare: Bool) -> [Result<PostgresRows, PostgresError>] {
        let statements = groups.flatMap { $0 }
        func failAll(_ error: PostgresError) -> [Result<PostgresRows, PostgresError>] {
            statements.map { _ in .failure(error) }
        }
        guard let conn = self.conn else {
            return failAll(PostgresError(code: .connectionClosed, message: "the connection is closed", isConnectionError: true))
        }
        // Names of the statements already prepared on this connection (their SQL was checked
        // when they were prepared: a round's texts are several kilobytes, sent every round).
        let known = statements.map { prepare || $0.prepared ? self.preparedNames[SQLText($0.sql)] : nil }
        for (statement, name) in zip(statements, known) {
            if (name == nil && statement.sql.utf8.containsNUL) || statement.parameters.contains(where: { $0?.utf8.containsNUL == true }) {
                return failAll(PostgresError(code: .invalidArgument, message: "a statement or parameter contains a NUL byte", query: statement.sql))
            }
        }
        guard PQenterPipelineMode(conn) == 1 else {
            return failAll(PostgresError(code: .queryFailed, message: trimmedMessage(PQerrorMessage(conn)), isConnectionError: PQstatus(conn) == CONNECTION_BAD))
        }
        defer { _ = PQexitPipelineMode(conn) }  // checked by executePipeline

        // Send everything; libpq copies the parameters into its output buffer at once. Each
        // statement is prepared on first use (parsed and planned once per connection, not per
        // round): a Parse goes ahead of its first execution.
        var sent = 0
        var syncs = 0
        var preparing: [Int: String] = [:]  // statement index -> name being prepared
        var preparingBySQL: [SQLText: String] = [:]
        sending: for group in groups where !group.isEmpty {
            for statement in group {
                let values = statement.parameters.map { $0.map { strdup($0) } ?? nil }
                defer { values.forEach { free($0) } }
                let count = Int32(values.count)
                let prepare = prepare || statement.prepared
                var name = prepare ? known[sent] ?? preparingBySQL[SQLText(statement.sql)] : nil
                if name == nil, prepare, self.preparedCount < Self.maxPreparedStatements {
                    // A fresh name each time: one that failed or went unconfirmed is never reused.
                    self.preparedCount += 1
                    let newName = "consent_sync_\(self.preparedCount)"
                    guard PQsendPrepare(conn, newName, statement.sql, count, nil) == 1 else { break sending }
                    preparing[sent] = newName
                    preparingBySQL[SQLText(statement.sql)] = newName
                    name = newName
                }
                let ok: Int32
                if let name {
                    ok = PQsendQueryPrepared(conn, name, count, values.map { UnsafePointer($0) }, nil, nil, 0)
                } else {
                    ok = PQsendQueryParams(conn, statement.sql, count, nil, values.map { UnsafePointer($0) }, nil, nil, 0)
                }
                guard ok == 1 else { break sending }
                sent += 1
            }
            guard PQpipelineSync(conn) == 1 else { break sending }
            syncs += 1
        }
        if sent < statements.count || syncs < groups.filter({ !$0.isEmpty }).count {
            // Could not send (a broken connection): read what was sent, fail the rest.
            let error = PostgresError(code: .queryFailed, message: trimmedMessage(PQerrorMessage(conn)), isConnectionError: PQstatus(conn) == CONNECTION_BAD)
            self.drainPipeline(conn)
            return failAll(error)
        }

        var results: [Result<PostgresRows, PostgresError>] = []
        results.reserveCapacity(statements.count)
        for group in groups where !group.isEmpty {
            for statement in group {
                var prepareError: PostgresError?
                if let name = preparing[results.count] {
                    if let prepared = PQgetResult(conn) {
                        if PQresultStatus(prepared) == PGRES_COMMAND_OK {
                            self.preparedNames[SQLText(statement.sql)] = name
                            PQclear(prepared)
                        } else if PQresultStatus(prepared) == PGRES_PIPELINE_ABORTED {
                            PQclear(prepared)
                        } else {
                            prepareError = Self.error(from: prepared, conn: conn, sql: statement.sql)
                            PQclear(prepared)
                        }
                    }
                    while let extra = PQgetResult(conn) { PQclear(extra) }
                }
                guard let result = PQgetResult(conn) else {
                    results.append(.failure(PostgresError(
                        code: .queryFailed, message: trimmedMessage(PQerrorMessage(conn)), query: statement.sql,
                        isConnectionError: PQstatus(conn) == CONNECTION_BAD
                    )))
                    continue
                }
                if let prepareError {
                    PQclear(result)
                    results.append(.failure(prepareError))
                } else if PQresultStatus(result) == PGRES_PIPELINE_ABORTED {
                    PQclear(result)
                    results.append(.failure(PostgresError(code: .queryFailed, message: "not run: an earlier statement of its transaction failed", query: statement.sql)))
                } else {
                    results.append(self.consume(result, sql: statement.sql))
                }
                // The end of this statement's results.
                while let extra = PQgetResult(conn) { PQclear(extra) }
            }
            // The sync point that ends the group.
            if let sync = PQgetResult(conn) {
                let status = PQresultStatus(sync)
                PQclear(sync)
                if status != PGRES_PIPELINE_SYNC {
                    self.drainPipeline(conn)
                    let error = PostgresError(code: .invalidResult, message: "pipeline out of step (expected a sync point)", isConnectionError: PQstatus(conn) == CONNECTION_BAD)
                    return results + statements.dropFirst(results.count).map { _ in .failure(error) }
                }
            }
            if PQstatus(conn) == CONNECTION_BAD {
                let error = PostgresError(code: .queryFailed, message: trimmedMessage(PQerrorMessage(conn)), isConnectionError: true)
                return results + statements.dropFirst(results.count).map { _ in .failure(error) }
            }
        }
        return results
    }

    /// Statements prepared on this connection by ``executePipeline(_:)``, by SQL text.
    private var preparedNames: [SQLText: String] = [:]
    /// Names handed out so far (prepared or attempted).
    private var preparedCount = 0
    /// Beyond this many, statements run unprepared (a bound for callers that vary their SQL).
    private static let maxPreparedStatements = 64

    /// Reads and drops whatever results are still due, so the connection leaves pipeline mode idle.
    private func drainPipeline(_ conn: OpaquePointer) {
        var nulls = 0
        while PQstatus(conn) == CONNECTION_OK, nulls < 2 {
            if let result = PQgetResult(conn) {
                nulls = 0
                PQclear(result)
            } else {
                nulls += 1
            }
        }
    }

    private func consume(_ result: OpaquePointer?, sql: String) -> Result<PostgresRows, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", query: sql, isConnectionError: true))
        }
        guard let result else {
            return .failure(PostgresError(
                code: .queryFailed,
                message: trimmedMessage(PQerrorMessage(conn)),
                query: sql,
                isConnectionError: PQstatus(conn) == CONNECTION_BAD
            ))
        }
        defer { PQclear(result) }

        let status = PQresultStatus(result)
        switch status {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_SINGLE_TUPLE:
            return .success(Self.rows(of: result))
        case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
            self.abandonCopy(status)
            return .failure(PostgresError(
                code: .invalidResult,
                message: "COPY FROM STDIN / TO STDOUT is not supported on this connection",
                query: sql,
                isConnectionError: PQstatus(conn) == CONNECTION_BAD
            ))
        default:
            return .failure(Self.error(from: result, conn: conn, sql: sql))
        }
    }

    /// Ends an unwanted COPY so the connection is usable again.
    private func abandonCopy(_ status: ExecStatusType) {
        guard let conn = self.conn else { return }
        if status == PGRES_COPY_IN || status == PGRES_COPY_BOTH {
            _ = PQputCopyEnd(conn, "COPY is not supported by this client")
        }
        if status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH {
            var buffer: UnsafeMutablePointer<CChar>?
            while PQgetCopyData(conn, &buffer, 0) > 0 {
                PQfreemem(buffer)
                buffer = nil
            }
        }
        while let next = PQgetResult(conn) {
            PQclear(next)
        }
    }

    static func error(from result: OpaquePointer, conn: OpaquePointer, sql: String?) -> PostgresError {
        let primary = field(result, "M") ?? trimmedMessage(PQresultErrorMessage(result))
        // FATAL and PANIC end the session (a terminated backend, a server shutting down), and
        // class 08 is a connection exception, before libpq may have seen the socket close.
        let severity = field(result, "V")
        let sessionEnded = severity == "FATAL" || severity == "PANIC" || field(result, "C")?.hasPrefix("08") == true
        return PostgresError(
            code: .queryFailed,
            message: primary.isEmpty ? trimmedMessage(PQerrorMessage(conn)) : primary,
            sqlState: field(result, "C"),
            detail: field(result, "D"),
            hint: field(result, "H"),
            query: sql,
            isConnectionError: sessionEnded || PQstatus(conn) == CONNECTION_BAD
        )
    }

    private static func rows(of result: OpaquePointer) -> PostgresRows {
        let columnCount = Int(PQnfields(result))
        let rowCount = Int(PQntuples(result))
        let columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
        var rows: [[String?]] = []
        rows.reserveCapacity(rowCount)
        for row in 0..<Int32(rowCount) {
            var values: [String?] = []
            values.reserveCapacity(columnCount)
            for column in 0..<Int32(columnCount) {
                if PQgetisnull(result, row, column) == 1 {
                    values.append(nil)
                } else {
                    let bytes = UnsafeRawBufferPointer(
                        start: PQgetvalue(result, row, column),
                        count: Int(PQgetlength(result, row, column))
                    )
                    values.append(String(decoding: bytes, as: UTF8.self))
                }
            }
            rows.append(values)
        }
        let affected = PQcmdTuples(result).map { Int(String(cString: $0)) ?? 0 } ?? 0
        let tag = PQcmdStatus(result).map { String(cString: $0) } ?? ""
        return PostgresRows(columns: columns, rows: rows, affectedRows: affected, commandTag: tag)
    }

    // MARK: Escaping

    /// `PQescapeIdentifier`; only for the thread that owns the connection.
    func escapeIdentifier(_ identifier: String) -> Result<String, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", isConnectionError: true))
        }
        if identifier.utf8.contains(0) {
            return .failure(PostgresError(code: .invalidArgument, message: "an identifier cannot contain a NUL byte"))
        }
        let utf8 = Array(identifier.utf8)
        let escaped = utf8.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQescapeIdentifier(conn, $0.baseAddress, $0.count) }
        }
        guard let escaped else {
            return .failure(PostgresError(code: .invalidArgument, message: trimmedMessage(PQerrorMessage(conn))))
        }
        defer { PQfreemem(escaped) }
        return .success(String(cString: escaped))
    }

    // MARK: Asynchronous use (listener)

    /// `PQconsumeInput`; false when the connection failed.
    func consumeInput() -> Bool {
        guard let conn = self.conn else { return false }
        return PQconsumeInput(conn) == 1 && PQstatus(conn) == CONNECTION_OK
    }

    /// Drains `PQnotifies`.
    func takeNotifications() -> [(channel: String, payload: String)] {
        guard let conn = self.conn else { return [] }
        var notifications: [(channel: String, payload: String)] = []
        while let notify = PQnotifies(conn) {
            let channel = notify.pointee.relname.map { String(cString: $0) } ?? ""
            let payload = notify.pointee.extra.map { String(cString: $0) } ?? ""
            PQfreemem(notify)
            notifications.append((channel, payload))
        }
        return notifications
    }

    /// `PQsendQuery` without waiting for the result.
    func send(_ sql: String) -> Bool {
        guard let conn = self.conn else { return false }
        return PQsendQuery(conn, sql) == 1
    }

    /// Reads results of a query sent with ``send(_:)`` that are complete without blocking.
    /// Returns true once all results were read, false while more are to come.
    func collectSentResults() -> Result<Bool, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", isConnectionError: true))
        }
        var failure: PostgresError?
        while PQisBusy(conn) == 0 {
            guard let result = PQgetResult(conn) else {
                return failure.map { .failure($0) } ?? .success(true)
            }
            let status = PQresultStatus(result)
            if status != PGRES_COMMAND_OK, status != PGRES_TUPLES_OK, status != PGRES_EMPTY_QUERY {
                failure = Self.error(from: result, conn: conn, sql: nil)
            }
            PQclear(result)
        }
        return .success(false)
    }

    // MARK: Replication (COPY BOTH)

    /// Sends a replication command that starts a COPY BOTH stream (`START_REPLICATION ...`).
    func startCopyBoth(_ command: String) -> Result<Void, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", query: command, isConnectionError: true))
        }
        guard let result = PQexec(conn, command) else {
            return .failure(PostgresError(code: .queryFailed, message: trimmedMessage(PQerrorMessage(conn)), query: command, isConnectionError: true))
        }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_BOTH else {
            return .failure(Self.error(from: result, conn: conn, sql: command))
        }
        return .success(())
    }

    /// Every CopyData message that arrived, read without blocking (after `PQconsumeInput`).
    /// Fails when the connection broke or the server ended the stream.
    func readCopyData() -> Result<[[UInt8]], PostgresError> {
        guard let conn = self.conn, PQconsumeInput(conn) == 1 else {
            return .failure(PostgresError(code: .connectionClosed, message: self.errorMessage, isConnectionError: true))
        }
        var messages: [[UInt8]] = []
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(conn, &buffer, 1)
            if length > 0, let buffer {
                messages.append(Array(UnsafeRawBufferPointer(start: buffer, count: Int(length))))
                PQfreemem(buffer)
                continue
            }
            if length == 0 { return .success(messages) }
            // -1: the stream ended (its result says why), -2: an error.
            var message = self.errorMessage
            while let result = PQgetResult(conn) {
                if PQresultStatus(result) == PGRES_FATAL_ERROR { message = Self.error(from: result, conn: conn, sql: nil).message }
                PQclear(result)
            }
            return .failure(PostgresError(code: .connectionClosed, message: "the replication stream ended: \(message)", isConnectionError: true))
        }
    }

    /// Sends one CopyData message and flushes it.
    func writeCopyData(_ bytes: [UInt8]) -> Result<Void, PostgresError> {
        guard let conn = self.conn else {
            return .failure(PostgresError(code: .connectionClosed, message: "the connection is closed", isConnectionError: true))
        }
        let sent = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { PQputCopyData(conn, $0.baseAddress, Int32($0.count)) }
        }
        guard sent == 1, PQflush(conn) == 0 else {
            return .failure(PostgresError(code: .connectionClosed, message: self.errorMessage, isConnectionError: true))
        }
        return .success(())
    }
}

/// Forwards server notices to a logger (at debug level) instead of stderr.
final class NoticeSink: Sendable {
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func receive(_ result: OpaquePointer) {
        let message = field(result, "M") ?? trimmedMessage(PQresultErrorMessage(result))
        var metadata: Logger.Metadata = [:]
        if let severity = field(result, "V") ?? field(result, "S") {
            metadata["postgres.severity"] = "\(severity)"
        }
        if let sqlState = field(result, "C") {
            metadata["postgres.sqlstate"] = "\(sqlState)"
        }
        self.logger.debug("postgres notice: \(message)", metadata: metadata)
    }
}

private func noticeReceiver(_ argument: UnsafeMutableRawPointer?, _ result: OpaquePointer?) {
    guard let argument, let result else { return }
    Unmanaged<NoticeSink>.fromOpaque(argument).takeUnretainedValue().receive(result)
}

/// A statement's text as the key of the prepared statements: hashed by its length and its
/// first and last bytes, compared whole. A round's texts (several kilobytes) are looked up
/// every round; hashing each of them whole was about 1 % of the daemon's CPU in a drain.
/// Texts that differ only in the middle share a bucket, which costs a comparison, not a
/// wrong answer.
struct SQLText: Hashable {
    let text: String

    init(_ text: String) {
        self.text = text
    }

    static func == (lhs: SQLText, rhs: SQLText) -> Bool {
        lhs.text == rhs.text
    }

    func hash(into hasher: inout Hasher) {
        var text = self.text
        text.withUTF8 { bytes in
            hasher.combine(bytes.count)
            let edge = min(bytes.count, 256)
            hasher.combine(bytes: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[..<edge])))
            hasher.combine(bytes: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[(bytes.count - edge)...])))
        }
    }
}

extension String.UTF8View {
    /// Whether the text holds a NUL byte (which libpq's C strings cannot carry): `memchr` over
    /// the contiguous bytes of a native string, rather than a step through the view's indices
    /// (a round's parameters are kilobytes).
    var containsNUL: Bool {
        self.withContiguousStorageIfAvailable { bytes in
            guard let base = bytes.baseAddress else { return false }
            return memchr(base, 0, bytes.count) != nil
        } ?? self.contains(0)
    }
}

/// `PQresultErrorField` with a one-letter field code (the `PG_DIAG_*` macros do not import into Swift).
private func field(_ result: OpaquePointer, _ code: Unicode.Scalar) -> String? {
    guard let value = PQresultErrorField(result, Int32(code.value)) else { return nil }
    let text = String(cString: value)
    return text.isEmpty ? nil : text
}

func trimmedMessage(_ message: UnsafePointer<CChar>?) -> String {
    guard let message else { return "" }
    return trimmed(String(cString: message))
}

/// Trims `text` and joins libpq's continuation lines ("...failed: refused\n\tIs the server running...")
/// into one line, so messages read well in logs and single-line error descriptions.
func trimmed(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline)
        .map { line in
            var line = Substring(line)
            while let first = line.first, first.isWhitespace { line.removeFirst() }
            while let last = line.last, last.isWhitespace { line.removeLast() }
            return line
        }
        .filter { !$0.isEmpty }
        .joined(separator: " ")
}
