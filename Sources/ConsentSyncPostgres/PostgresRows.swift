/// The column names of a result, shared by its rows.
final class PostgresColumns: Sendable {
    let names: [String]
    /// Name to index; the first column wins when a name repeats.
    let indexByName: [String: Int]

    init(_ names: [String]) {
        self.names = names
        var index: [String: Int] = [:]
        for (position, name) in names.enumerated() where index[name] == nil {
            index[name] = position
        }
        self.indexByName = index
    }
}

/// One row of a result, values in PostgreSQL's text format.
public struct PostgresRow: Sendable {
    let columns: PostgresColumns
    let values: [String?]

    init(columns: PostgresColumns, values: [String?]) {
        self.columns = columns
        self.values = values
    }

    /// The column names, in order.
    public var columnNames: [String] { self.columns.names }

    /// The text-format value at `index`; `nil` for NULL or an index out of range.
    public subscript(_ index: Int) -> String? {
        self.values.indices.contains(index) ? self.values[index] : nil
    }

    /// The text-format value of `column`; `nil` for NULL or an unknown column.
    public subscript(_ column: String) -> String? {
        guard let index = self.columns.indexByName[column] else { return nil }
        return self.values[index]
    }

    /// The value of `column`; throws when the column is missing or NULL.
    public func string(_ column: String) throws -> String {
        try self.string(at: try self.columns.index(of: column))
    }

    public func int(_ column: String) throws -> Int {
        try self.int(at: try self.columns.index(of: column))
    }

    public func int64(_ column: String) throws -> Int64 {
        try self.int64(at: try self.columns.index(of: column))
    }

    public func double(_ column: String) throws -> Double {
        try self.double(at: try self.columns.index(of: column))
    }

    /// A `boolean` column (`t`/`f` in text format).
    public func bool(_ column: String) throws -> Bool {
        try self.bool(at: try self.columns.index(of: column))
    }

    /// The value of `column`, `nil` for NULL or an unknown column.
    public func optionalString(_ column: String) -> String? {
        self[column]
    }

    // By position: for callers that read many rows of one result, with the positions found
    // once by ``PostgresRows/index(of:)`` (a name is hashed for every lookup). Errors name
    // the column, as above.

    /// The value at `index`; throws when it is NULL.
    public func string(at index: Int) throws -> String {
        guard let value = self.values[index] else {
            throw Self.error("column \"\(self.columns.names[index])\" is NULL")
        }
        return value
    }

    /// The value at `index`, `nil` for NULL.
    public func optionalString(at index: Int) -> String? {
        self.values[index]
    }

    public func int(at index: Int) throws -> Int {
        try self.parse(index, as: "an integer", Int.init)
    }

    public func int64(at index: Int) throws -> Int64 {
        try self.parse(index, as: "a 64-bit integer", Int64.init)
    }

    public func double(at index: Int) throws -> Double {
        try self.parse(index, as: "a floating-point number", Double.init)
    }

    public func bool(at index: Int) throws -> Bool {
        try self.parse(index, as: "a boolean") { text in
            switch text {
            case "t", "true": true
            case "f", "false": false
            default: nil
            }
        }
    }

    /// The value of `column` as an integer, `nil` for NULL; throws when it does not parse.
    public func optionalInt(_ column: String) throws -> Int? {
        let index = try self.columns.index(of: column)
        return self.values[index] == nil ? nil : try self.int(at: index)
    }

    private func parse<T>(_ index: Int, as what: String, _ convert: (String) -> T?) throws -> T {
        let text = try self.string(at: index)
        guard let value = convert(text) else {
            // The value itself stays out of the message: it may be personal data.
            throw Self.error("column \"\(self.columns.names[index])\" is not \(what)")
        }
        return value
    }

    static func error(_ message: String) -> PostgresError {
        PostgresError(code: .invalidResult, message: message)
    }
}

extension PostgresColumns {
    /// The position of `column`; throws, listing the columns there are, when it is missing.
    func index(of column: String) throws -> Int {
        guard let index = self.indexByName[column] else {
            throw PostgresRow.error("no column \"\(column)\" in the result (columns: \(self.names.joined(separator: ", ")))")
        }
        return index
    }
}

/// The rows of a result and the number of rows a command affected.
public struct PostgresRows: Sendable, RandomAccessCollection {
    private let columnSet: PostgresColumns
    private let rows: [[String?]]

    /// The column names, in order.
    public var columns: [String] { self.columnSet.names }
    /// Rows affected by INSERT/UPDATE/DELETE/SELECT/MOVE/FETCH/COPY (`PQcmdTuples`), 0 otherwise.
    public var affectedRows: Int
    /// The command tag, e.g. `INSERT 0 1`.
    public var commandTag: String

    init(columns: [String], rows: [[String?]], affectedRows: Int, commandTag: String) {
        self.columnSet = PostgresColumns(columns)
        self.rows = rows
        self.affectedRows = affectedRows
        self.commandTag = commandTag
    }

    public var startIndex: Int { self.rows.startIndex }
    public var endIndex: Int { self.rows.endIndex }

    /// The position of `column` in every row (for the `at:` accessors of ``PostgresRow``);
    /// throws when the result has no such column.
    public func index(of column: String) throws -> Int {
        try self.columnSet.index(of: column)
    }

    public subscript(position: Int) -> PostgresRow {
        PostgresRow(columns: self.columnSet, values: self.rows[position])
    }
}
