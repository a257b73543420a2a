/// One statement with `$1`, `$2`, ... parameters in text format (`nil` is NULL), for
/// ``PostgresConnection/pipeline(_:)``.
public struct PostgresStatement: Sendable {
    public var sql: String
    public var parameters: [String?]
    /// Parsed and planned once per connection (a named prepared statement created on first
    /// use) even when the pipeline as a whole is not prepared.
    public var prepared: Bool

    public init(_ sql: String, _ parameters: [String?] = [], prepared: Bool = false) {
        self.sql = sql
        self.parameters = parameters
        self.prepared = prepared
    }
}
