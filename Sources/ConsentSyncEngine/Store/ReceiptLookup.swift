import ConsentSyncPostgres
import Logging

/// Answers the receipts API from its own database connection, opened on first use and
/// again after it fails; one lookup at a time.
public actor ReceiptLookup {
    private let database: PostgresConfiguration
    private let logger: Logger
    private var connection: PostgresConnection?

    public init(database: PostgresConfiguration, logger: Logger) {
        self.database = database.with("application_name", "consent-sync receipts")
        self.logger = logger
    }

    /// The subject's timeline as JSON (``SubjectTrace/json()``).
    public func receipts(subject: String) async throws -> [UInt8] {
        let live: PostgresConnection
        if let connection, connection.isConnected {
            live = connection
        } else {
            await connection?.close()
            live = try await PostgresConnection.connect(database, logger: logger)
            connection = live
        }
        do {
            return try await SubjectTrace.load(subject: subject, on: live).json()
        } catch let error as PostgresError where error.isConnectionError {
            await live.close()
            connection = nil
            throw error
        }
    }

    public func close() async {
        await connection?.close()
        connection = nil
    }
}
