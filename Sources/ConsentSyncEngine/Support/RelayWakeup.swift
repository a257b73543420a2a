import ConsentSyncPostgres

/// What a command tells running relays when it changed something they should act on now
/// rather than at their next poll: a NOTIFY on the channel every relay listens to, sent when
/// the command's transaction commits.
enum RelayWakeup: String {
    /// Deliveries became due (re-queued dead letters, replays): look for work.
    case deliveries
    /// A subscriber changed (state, secrets): read the subscribers again, then look for work.
    case subscribers

    /// The channel the relays LISTEN on.
    static let channel = "consent_sync"

    func send(on connection: PostgresConnection) async throws {
        try await connection.query("SELECT pg_notify($1, $2)", [Self.channel, rawValue])
    }
}
