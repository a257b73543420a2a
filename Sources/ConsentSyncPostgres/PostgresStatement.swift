/// One statement with `$1`, `$2`, ... parameters in text format (`nil` is NULL), for
/// ``PostgresConnection/pipeline(_:)``.
public struct PostgresStatement: Sendable {
    public var sql: String
    public var parameters: [String?]

    public init(_ sql: String, _ parameters: [String?] = []) {
        self.sql = sql
        self.parameters = parameters
    }
}
