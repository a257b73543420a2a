import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// `consent-sync forget`: every recipient is told to erase a subject (`subject.erased`), and
/// once all have acknowledged it, the subject's personal data leaves schema `consent_sync`;
/// a minimal receipt stays (the subject's keyed hash, event types, times, recipients,
/// outcomes), so that the erasure itself can be proven (GDPR Art. 17(2), 19).
public enum ErasureStore {
    /// What `forget` started.
    public struct Request: Sendable, Equatable {
        public var erasureID: Int64
        /// The `subject.erased` change.
        public var changeID: Int64
        /// Rows of the default consent table deleted (each also sent as `consent.deleted`).
        public var deletedConsents: Int
    }

    /// An erasure whose data was removed.
    public struct Completion: Sendable, Equatable {
        public var erasureID: Int64
        public var changes: Int
    }

    /// The keyed hash that stands for a subject after its erasure (HMAC-SHA256 under this
    /// installation's `receipt_hash_key`, hex).
    public static func subjectHash(_ subject: String, on connection: PostgresConnection) async throws -> String {
        let rows = try await connection.query("SELECT value FROM consent_sync.meta WHERE key = 'receipt_hash_key'")
        let hex = try rows.first.orThrow("consent_sync.meta has no receipt_hash_key; run 'consent-sync migrate'").string("value")
        return PseudonymKey(bytes: try Self.bytes(hex: hex)).pseudonym(for: subject)
    }

    /// Deletes the subject's rows from the default consent table (each is sent as
    /// `consent.deleted`), then queues `subject.erased` for every subscriber (whatever its
    /// filters, paused and disabled ones too: it waits for them), in one transaction.
    /// Tables the application watches are its own to erase.
    public static func forget(subject: String, actor: String, on connection: PostgresConnection) async throws -> Request {
        guard !subject.isEmpty, subject.utf8.count <= 2048 else {
            throw ErasureError(message: "the subject id must be 1 to 2048 bytes")
        }
        let hash = try await subjectHash(subject, on: connection)
        return try await connection.withTransaction { connection in
            let deleted = try await connection.query("DELETE FROM consent_sync.consents WHERE subject_id = $1", [subject]).affectedRows
            let rows = try await connection.query(
                """
                WITH erase AS (
                    INSERT INTO consent_sync.changes (table_name, operation, event_type, subject, purpose, source)
                    VALUES ('consent_sync.erasures', 'ERASE', 'subject.erased', $1, '*', 'consent-sync forget')
                    RETURNING id
                )
                INSERT INTO consent_sync.erasures (subject_hash, change_id, actor)
                SELECT $2, id, $3 FROM erase
                RETURNING id, change_id
                """,
                [subject, hash, actor]
            )
            try await connection.query("SELECT pg_notify('consent_sync', '') WHERE EXISTS (SELECT 1 FROM consent_sync.listeners WHERE idle)")
            let row = try rows.first.orThrow("INSERT returned no row")
            return Request(erasureID: try row.int64("id"), changeID: try row.int64("change_id"), deletedConsents: deleted)
        }
    }

    /// Completes every erasure whose `subject.erased` every recipient has acknowledged: the
    /// subject id in the outbox and deliveries becomes its hash, payloads (attributes,
    /// source) and the receivers' answer texts go. Changes after the erasure are left alone.
    /// Safe from several daemons at once.
    @discardableResult
    public static func completeDue(on connection: PostgresConnection) async throws -> [Completion] {
        let due = try await connection.query(
            """
            SELECT e.id, e.change_id, e.subject_hash, c.subject
            FROM consent_sync.erasures e JOIN consent_sync.changes c ON c.id = e.change_id
            WHERE e.completed_at IS NULL AND c.fanned_out
              AND NOT EXISTS (SELECT 1 FROM consent_sync.deliveries d
                              WHERE d.change_id = e.change_id AND d.replay_of IS NULL AND d.state <> 'delivered')
            ORDER BY e.id LIMIT 100
            """
        )
        var done: [Completion] = []
        for row in due {
            let id = try row.int64("id")
            let completed: Int? = try await connection.withTransaction { connection in
                let locked = try await connection.query(
                    "SELECT id FROM consent_sync.erasures WHERE id = $1::bigint AND completed_at IS NULL FOR UPDATE SKIP LOCKED",
                    [String(id)]
                )
                guard !locked.isEmpty else { return nil }
                let parameters = [try row.string("subject"), try row.string("subject_hash"), try row.string("change_id")]
                try await connection.query(
                    """
                    WITH erased AS (SELECT id FROM consent_sync.changes WHERE subject = $1 AND id <= $2::bigint)
                    UPDATE consent_sync.attempts a SET response_excerpt = NULL, applied_reason = NULL
                    WHERE (a.response_excerpt IS NOT NULL OR a.applied_reason IS NOT NULL)
                      AND a.delivery_id IN (SELECT d.id FROM consent_sync.deliveries d WHERE d.change_id = ANY (ARRAY(SELECT id FROM erased)))
                    """,
                    [parameters[0], parameters[2]]
                )
                try await connection.query(
                    """
                    WITH erased AS (SELECT id FROM consent_sync.changes WHERE subject = $1 AND id <= $3::bigint)
                    UPDATE consent_sync.deliveries d SET subject = $2, applied_reason = NULL
                    WHERE d.change_id = ANY (ARRAY(SELECT id FROM erased))
                    """,
                    parameters
                )
                let changes = try await connection.query(
                    """
                    UPDATE consent_sync.changes SET subject = $2, attributes = NULL, source = NULL, erased_at = now()
                    WHERE subject = $1 AND id <= $3::bigint
                    """,
                    parameters
                ).affectedRows
                try await connection.query("DELETE FROM consent_sync.consents WHERE subject_id = $1", [parameters[0]])
                try await connection.query("UPDATE consent_sync.erasures SET completed_at = now() WHERE id = $1::bigint", [String(id)])
                return changes
            }
            if let completed { done.append(Completion(erasureID: id, changes: completed)) }
        }
        return done
    }

    /// Whether erasure `id` is complete; `nil` when there is no such erasure.
    public static func isComplete(_ id: Int64, on connection: PostgresConnection) async throws -> Bool? {
        let rows = try await connection.query("SELECT completed_at IS NOT NULL AS done FROM consent_sync.erasures WHERE id = $1::bigint", [String(id)])
        return try rows.first?.bool("done")
    }

    static func bytes(hex: String) throws -> [UInt8] {
        let digits = Array(hex.utf8)
        guard digits.count.isMultiple(of: 2), !digits.isEmpty else { throw ErasureError(message: "receipt_hash_key is not hex") }
        func value(_ digit: UInt8) throws -> UInt8 {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
            default: throw ErasureError(message: "receipt_hash_key is not hex")
            }
        }
        return try stride(from: 0, to: digits.count, by: 2).map { try value(digits[$0]) << 4 | value(digits[$0 + 1]) }
    }
}

public struct ErasureError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}
