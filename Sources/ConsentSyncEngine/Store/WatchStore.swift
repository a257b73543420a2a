import ConsentSyncCore
import ConsentSyncPostgres
import Foundation

/// A table whose changes are captured: which columns hold the subject, purpose and status,
/// and which others are sent.
public struct Watch: Sendable, Equatable {
    public var id: Int64
    public var definition: WatchDefinition
    public var createdAt: Date

    public init(id: Int64, definition: WatchDefinition, createdAt: Date) {
        self.id = id
        self.definition = definition
        self.createdAt = createdAt
    }
}

/// What `consent-sync watch add` takes.
public struct WatchDefinition: Sendable, Equatable {
    public var schema: String
    public var table: String
    /// One column, or several for a composite subject id (values joined with `:`).
    public var subjectColumns: [String]
    public var purposeColumn: String
    public var statusColumn: String
    public var sourceColumn: String?
    /// The only other columns captured and sent, as `attributes` (data minimisation).
    public var columns: [String]
    /// The table's status values mapped to `granted`, `denied` or `withdrawn`; `nil` when the
    /// table already uses those words.
    public var statusMap: [String: String]?

    public init(
        schema: String,
        table: String,
        subjectColumns: [String],
        purposeColumn: String,
        statusColumn: String,
        sourceColumn: String? = nil,
        columns: [String] = [],
        statusMap: [String: String]? = nil
    ) {
        self.schema = schema
        self.table = table
        self.subjectColumns = subjectColumns
        self.purposeColumn = purposeColumn
        self.statusColumn = statusColumn
        self.sourceColumn = sourceColumn
        self.columns = columns
        self.statusMap = statusMap
    }

    /// `schema.table` as given (unquoted).
    public var qualifiedName: String { "\(schema).\(table)" }

    /// Splits `SCHEMA.TABLE` (or `TABLE`, in schema `public`); either part may be written in
    /// double quotes to contain dots (`"my.schema"."Prefs"`). Names are taken exactly as
    /// written: no case folding.
    public static func parseTableName(_ text: String) throws(WatchError) -> (schema: String, table: String) {
        var parts: [String] = []
        var current = ""
        var quoted = false
        var wasQuoted = false
        var iterator = Array(text).makeIterator()
        var pending: Character? = iterator.next()
        while let character = pending {
            pending = iterator.next()
            if quoted {
                if character == "\"" {
                    if pending == "\"" { current.append("\""); pending = iterator.next() } else { quoted = false }
                } else {
                    current.append(character)
                }
            } else if character == "\"" && current.isEmpty && !wasQuoted {
                quoted = true
                wasQuoted = true
            } else if character == "." {
                parts.append(current)
                current = ""
                wasQuoted = false
            } else {
                current.append(character)
            }
        }
        guard !quoted else { throw WatchError(field: "table", message: "'\(text.prefix(200))' has an unclosed double quote") }
        parts.append(current)
        switch parts.count {
        case 1: parts.insert("public", at: 0)
        case 2: break
        default: throw WatchError(field: "table", message: "'\(text.prefix(200))' is not SCHEMA.TABLE (quote a name that contains a dot: \"my.schema\".table)")
        }
        guard parts.allSatisfy({ !$0.isEmpty }) else {
            throw WatchError(field: "table", message: "'\(text.prefix(200))' is not SCHEMA.TABLE: a name is empty")
        }
        return (parts[0], parts[1])
    }

    /// Parses `yes=granted,no=denied`.
    public static func parseStatusMap(_ text: String) throws(WatchError) -> [String: String] {
        var map: [String: String] = [:]
        for entry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pair = entry.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else {
                throw WatchError(field: "status-map", message: "'\(entry.prefix(100))' is not VALUE=STATUS (for example 'yes=granted,no=denied')")
            }
            let value = String(pair[0]).trimmingCharacters(in: .whitespaces)
            let status = String(pair[1]).trimmingCharacters(in: .whitespaces)
            guard !value.isEmpty else { throw WatchError(field: "status-map", message: "'\(entry.prefix(100))' maps an empty value") }
            guard ConsentStatus(rawValue: status) != nil else {
                throw WatchError(field: "status-map", message: "'\(status.prefix(100))' is not granted, denied or withdrawn (in '\(entry.prefix(100))')")
            }
            guard map[value] == nil else { throw WatchError(field: "status-map", message: "'\(value.prefix(100))' is mapped twice") }
            map[value] = status
        }
        return map
    }

    /// Checks what can be checked without the database (the database checks the rest).
    public func validate() throws(WatchError) {
        func check(_ name: String, _ field: String) throws(WatchError) {
            guard !name.isEmpty else { throw WatchError(field: field, message: "a column name is empty") }
            guard name.utf8.count <= 63 else {
                throw WatchError(field: field, message: "'\(name.prefix(80))…' is longer than PostgreSQL's 63-byte names")
            }
            guard !name.unicodeScalars.contains(where: { $0.value == 0 }) else {
                throw WatchError(field: field, message: "a column name contains a NUL character")
            }
        }
        guard !subjectColumns.isEmpty, subjectColumns.count <= 8 else {
            throw WatchError(field: "subject-column", message: "give one to eight subject columns")
        }
        for column in subjectColumns { try check(column, "subject-column") }
        try check(purposeColumn, "purpose-column")
        try check(statusColumn, "status-column")
        if let sourceColumn { try check(sourceColumn, "source-column") }
        for column in columns { try check(column, "columns") }
        guard Set(columns).count == columns.count else { throw WatchError(field: "columns", message: "a column is listed twice") }
        if let statusMap, statusMap.isEmpty { throw WatchError(field: "status-map", message: "the map is empty") }
    }
}

/// A watched table that cannot be added or removed, and why.
public struct WatchError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The option at fault (`table`, `subject-column`, …), when one is.
    public var field: String?
    public var message: String
    public var hint: String?

    public init(field: String? = nil, message: String, hint: String? = nil) {
        self.field = field
        self.message = message
        self.hint = hint
    }

    public var description: String {
        let head = field.map { "--\($0): " } ?? ""
        return head + message + (hint.map { " (\($0))" } ?? "")
    }
}

/// Reads and writes `consent_sync.watches`; the triggers themselves are generated by the
/// database (`consent_sync.install_watch`), which quotes every name.
public enum WatchStore {
    /// Records the watch and installs its capture trigger, in one transaction: on any error
    /// nothing is installed.
    @discardableResult
    public static func add(_ definition: WatchDefinition, on connection: PostgresConnection) async throws -> Watch {
        try definition.validate()
        do {
            return try await connection.withTransaction { connection in
                let rows = try await connection.query(
                    """
                    INSERT INTO consent_sync.watches
                        (table_schema, table_name, subject_columns, purpose_column, status_column, source_column, columns, status_map)
                    VALUES ($1, $2, $3::text[], $4, $5, $6, $7::text[], $8::jsonb)
                    RETURNING id, extract(epoch FROM created_at)::double precision AS created_at
                    """,
                    [
                        definition.schema, definition.table, postgresArray(definition.subjectColumns),
                        definition.purposeColumn, definition.statusColumn, definition.sourceColumn,
                        postgresArray(definition.columns), try definition.statusMap.map(jsonObject),
                    ]
                )
                let row = try rows.first.orThrow("INSERT returned no row")
                let id = try row.int64("id")
                try await connection.query("SELECT consent_sync.install_watch($1::bigint)", [String(id)])
                return Watch(id: id, definition: definition, createdAt: Date(timeIntervalSince1970: try row.double("created_at")))
            }
        } catch let error as PostgresError {
            throw translate(error, definition)
        }
    }

    /// Every watch, by table name.
    public static func list(on connection: PostgresConnection) async throws -> [Watch] {
        let rows = try await connection.query(
            """
            SELECT id, table_schema, table_name, array_to_json(subject_columns)::text AS subject_columns,
                   purpose_column, status_column, source_column, array_to_json(columns)::text AS columns,
                   status_map::text AS status_map, extract(epoch FROM created_at)::double precision AS created_at
            FROM consent_sync.watches ORDER BY table_schema, table_name
            """
        )
        return try rows.map { row in
            let map = try row.optionalString("status_map").map { text in
                try JSONDecoder().decode([String: String].self, from: Data(text.utf8))
            }
            return Watch(
                id: try row.int64("id"),
                definition: WatchDefinition(
                    schema: try row.string("table_schema"),
                    table: try row.string("table_name"),
                    subjectColumns: try SubscriberStore.decodeArray(row.optionalString("subject_columns")) ?? [],
                    purposeColumn: try row.string("purpose_column"),
                    statusColumn: try row.string("status_column"),
                    sourceColumn: row.optionalString("source_column"),
                    columns: try SubscriberStore.decodeArray(row.optionalString("columns")) ?? [],
                    statusMap: map
                ),
                createdAt: Date(timeIntervalSince1970: try row.double("created_at"))
            )
        }
    }

    /// Drops the table's capture trigger and forgets the watch. Changes already captured are
    /// still delivered.
    /// - Returns: false when the table was not watched.
    @discardableResult
    public static func remove(schema: String, table: String, on connection: PostgresConnection) async throws -> Bool {
        if try await CaptureStore.state(on: connection).slotName != nil {
            // Logical capture: the table's last changes may still be in the replication slot.
            // Stop capturing first, then read the slot up to now, so that they are queued
            // while the watch's status map is still here. (Run again after a failure: both
            // steps can be repeated.)
            try await connection.withTransaction { connection in
                let rows = try await connection.query(
                    "SELECT id FROM consent_sync.watches WHERE table_schema = $1 AND table_name = $2 FOR UPDATE", [schema, table]
                )
                if let id = try rows.first?.int64("id") {
                    try await connection.query("SELECT consent_sync.uninstall_watch($1::bigint)", [String(id)])
                }
            }
            try await CaptureStore.readUpToNow(on: connection)
        }
        return try await connection.withTransaction { connection in
            let rows = try await connection.query(
                "SELECT id FROM consent_sync.watches WHERE table_schema = $1 AND table_name = $2 FOR UPDATE",
                [schema, table]
            )
            guard let id = try rows.first?.int64("id") else { return false }
            // Dropping the trigger waited for every transaction that captured a change of the
            // table; complete their rows now, while the watch's status map is still here.
            try await connection.query("SELECT consent_sync.uninstall_watch($1::bigint)", [String(id)])
            try await connection.query(
                """
                WITH queued AS (
                    SELECT \(DeliveryStore.queueColumns("q")) FROM consent_sync.captured q
                    WHERE q.watch_id = $1::bigint AND q.event_type IS NULL
                ), \(DeliveryStore.completion(of: "queued"))
                UPDATE consent_sync.captured c SET \(DeliveryStore.completedColumns)
                FROM batch b WHERE c.id = b.id
                """,
                [String(id)]
            )
            try await connection.query("DELETE FROM consent_sync.watches WHERE id = $1::bigint", [String(id)])
            return true
        }
    }

    static func translate(_ error: PostgresError, _ definition: WatchDefinition) -> any Error {
        switch error.sqlState {
        case "23505":
            return WatchError(field: "table", message: "\(definition.qualifiedName) is already watched; 'watch remove' it first to change its columns")
        case "42P01", "42703", "42804", "42809", "42704":
            return WatchError(message: error.message, hint: error.hint)
        case "42501":
            return WatchError(message: "not allowed: \(error.message)", hint: "run 'watch add' as the table's owner (a capture trigger needs it)")
        default:
            return error
        }
    }

    private static func jsonObject(_ map: [String: String]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: map, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}
