/// Where and how to connect to PostgreSQL.
///
/// The connection string is handed to libpq unchanged, so everything `psql` understands works here
/// too: URIs, `key=value` strings, `PG*` environment variables, `.pgpass`, service files, `sslmode`
/// and multi-host lists.
public struct PostgresConfiguration: Sendable {
    /// One keyword/value pair that overrides the connection string.
    public struct Override: Sendable, Hashable {
        public var keyword: String
        public var value: String

        public init(_ keyword: String, _ value: String) {
            self.keyword = keyword
            self.value = value
        }
    }

    /// Any libpq connection string or URI; `""` means "use the `PG*` environment variables".
    public var connectionString: String

    /// Keyword/value pairs that override the connection string, later ones winning
    /// (e.g. `("dbname", "x")`, `("application_name", "consent-sync")`).
    ///
    /// A `dbname` here is a plain database name; only ``connectionString`` is expanded.
    public var overrides: [(String, String)] {
        get { self.overrideList.map { ($0.keyword, $0.value) } }
        set { self.overrideList = newValue.map { Override($0.0, $0.1) } }
    }

    /// ``overrides`` as values.
    public var overrideList: [Override]

    public init(connectionString: String = "", overrides: [(String, String)] = []) {
        self.connectionString = connectionString
        self.overrideList = overrides.map { Override($0.0, $0.1) }
    }

    public init(connectionString: String = "", overrideList: [Override]) {
        self.connectionString = connectionString
        self.overrideList = overrideList
    }

    /// A copy with one more override.
    public func with(_ keyword: String, _ value: String) -> PostgresConfiguration {
        var copy = self
        copy.overrideList.append(Override(keyword, value))
        return copy
    }
}

extension PostgresConfiguration: CustomStringConvertible {
    /// Says where the configuration comes from, without any of its values (they may hold a password).
    public var description: String {
        let source = self.connectionString.isEmpty ? "PG* environment" : "connection string"
        let keywords = self.overrideList.map(\.keyword)
        return keywords.isEmpty
            ? "PostgresConfiguration(\(source))"
            : "PostgresConfiguration(\(source), overrides: \(keywords.joined(separator: ", ")))"
    }
}
