import ConsentSyncPostgres
import ConsentSyncTestKit
import Logging
import Testing

/// The replication protocol against a real server (`wal_level = logical`, as
/// scripts/with-postgres.sh starts it).
@Suite struct ReplicationStreamTests {
    static let logger = Logger(label: "replication-test")

    @Test func lsnsReadAndWriteAsPostgreSQLDoes() {
        #expect(PostgresReplicationStream.format(0x1_0F1F_A0E0) == "1/F1FA0E0")
        #expect(PostgresReplicationStream.parse("1/F1FA0E0") == 0x1_0F1F_A0E0)
        #expect(PostgresReplicationStream.parse("0/0") == 0)
        for bad in ["", "1", "1/2/3", "G/0", "100000000/0", "-1/0"] {
            #expect(PostgresReplicationStream.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func messagesOfCommittedTransactionsArriveAndAConfirmationMovesTheSlot() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let slot = "test_stream_\(database.name.suffix(12).filter { $0.isLetter || $0.isNumber })".lowercased()
            let start = try await database.withConnection { connection in
                try await connection.query("CREATE PUBLICATION stream_test")
                let row = try await connection.query("SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')", [slot])
                return try #require(PostgresReplicationStream.parse(try row.first?.string("lsn") ?? ""))
            }
            let options = [("proto_version", "1"), ("publication_names", "stream_test"), ("messages", "true")]
            let stream = try await PostgresReplicationStream.start(database.configuration, slot: slot, from: start, options: options, logger: Self.logger)

            // One process at a time: a second stream of the slot is refused as "in use".
            var refused: PostgresError?
            do {
                let second = try await PostgresReplicationStream.start(database.configuration, slot: slot, from: start, options: options, logger: Self.logger)
                await second.close()
            } catch let error as PostgresError {
                refused = error
            }
            #expect(refused?.sqlState == "55006", "\(String(describing: refused))")

            try await database.withConnection { connection in
                try await connection.query("BEGIN")
                try await connection.query("SELECT pg_logical_emit_message(true, 'stream_test', 'one')")
                try await connection.query("SELECT pg_logical_emit_message(true, 'stream_test', 'two')")
                try await connection.query("COMMIT")
                try await connection.query("BEGIN")
                try await connection.query("SELECT pg_logical_emit_message(true, 'stream_test', 'rolled back')")
                try await connection.query("ROLLBACK")
            }
            var kinds: [Character] = []
            var commitEnd: UInt64 = 0
            let deadline = ContinuousClock.now + .seconds(20)
            while !kinds.contains("C"), ContinuousClock.now < deadline {
                for message in try await stream.read(timeout: .milliseconds(500)) {
                    let kind = Character(Unicode.Scalar(message[0]))
                    kinds.append(kind)
                    if kind == "C" { commitEnd = message[10..<18].reduce(0) { $0 << 8 | UInt64($1) } }
                    if kind == "M" { #expect(String(decoding: message, as: UTF8.self).contains("rolled back") == false) }
                }
            }
            #expect(kinds == ["B", "M", "M", "C"], "\(kinds)")

            try await stream.confirm(commitEnd)
            #expect(try await eventually {
                try await database.withConnection { connection in
                    try await connection.query(
                        "SELECT confirmed_flush_lsn >= $2::pg_lsn AS moved FROM pg_replication_slots WHERE slot_name = $1",
                        [slot, PostgresReplicationStream.format(commitEnd)]
                    ).first?.bool("moved") == true
                }
            })
            await stream.close()
            // The slot is free again once the stream is closed.
            #expect(try await eventually {
                try await database.withConnection { connection in
                    try await connection.query("SELECT NOT active AS free FROM pg_replication_slots WHERE slot_name = $1", [slot]).first?.bool("free") == true
                }
            })
        }
    }
}
