/// An error from the PostgreSQL layer.
///
/// ``description`` carries the code, the server's (or libpq's) primary message and the SQLSTATE.
/// It never carries passwords or parameter values; ``detail`` may carry row data (for example
/// the key of a unique violation), so it is kept out of ``description``.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case connectionFailed
            case connectionClosed
            case queryFailed
            case cancelled
            case invalidResult
            case invalidArgument
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// The connection could not be established.
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection was closed (by ``PostgresConnection/close()`` or lost earlier).
        public static let connectionClosed = Code(.connectionClosed)
        /// The server (or libpq) rejected the statement.
        public static let queryFailed = Code(.queryFailed)
        /// The statement was cancelled because its task was cancelled.
        public static let cancelled = Code(.cancelled)
        /// The result could not be read as asked (missing column, NULL, unparsable value, COPY).
        public static let invalidResult = Code(.invalidResult)
        /// An argument could not be sent to libpq (e.g. a string with an embedded NUL byte).
        public static let invalidArgument = Code(.invalidArgument)

        public var description: String {
            switch self.base {
            case .connectionFailed: "connection failed"
            case .connectionClosed: "connection closed"
            case .queryFailed: "query failed"
            case .cancelled: "query cancelled"
            case .invalidResult: "invalid result"
            case .invalidArgument: "invalid argument"
            }
        }
    }

    public var code: Code
    /// The SQLSTATE the server reported, e.g. `42P01`.
    public var sqlState: String?
    /// The server's primary message, or libpq's error message, trimmed.
    public var message: String
    /// The server's detail line. May contain row data: log with care.
    public var detail: String?
    /// The server's hint.
    public var hint: String?
    /// The SQL text of the failed statement (never parameter values).
    public var query: String?
    /// True when the connection is unusable afterwards and the caller should reconnect.
    public var isConnectionError: Bool

    public init(
        code: Code,
        message: String,
        sqlState: String? = nil,
        detail: String? = nil,
        hint: String? = nil,
        query: String? = nil,
        isConnectionError: Bool = false
    ) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.hint = hint
        self.query = query
        self.isConnectionError = isConnectionError
    }

    public var description: String {
        var text = "\(self.code): \(self.message)"
        if let sqlState = self.sqlState {
            text += " (SQLSTATE \(sqlState))"
        }
        if let hint = self.hint {
            text += "; hint: \(hint)"
        }
        return text
    }
}
