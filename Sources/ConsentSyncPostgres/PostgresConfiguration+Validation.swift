extension PostgresConfiguration {
    /// Checks the connection string with libpq's own parser, without connecting.
    /// - Returns: the problem (never containing a password), or `nil` when libpq accepts it.
    public func validationError() -> PostgresError? {
        ConnectionParameters.validate(self)
    }
}
