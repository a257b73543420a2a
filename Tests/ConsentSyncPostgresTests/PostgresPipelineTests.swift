import ConsentSyncPostgres
import ConsentSyncTestKit
import Testing

@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG*"), .timeLimit(.minutes(2)))
struct PostgresPipelineTests {
    /// The relay's rounds rely on this: an advisory lock taken by the first statement of a group
    /// is still held by the next one (one transaction per group), and released after the group.
    @Test(arguments: [false, true])
    func eachGroupIsOneTransaction(prepared: Bool) async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let heldLocks = "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                let results = try await connection.pipeline([
                    [PostgresStatement("SELECT pg_advisory_xact_lock($1::bigint)", ["42"]), PostgresStatement(heldLocks)],
                    [PostgresStatement(heldLocks)],
                ], prepared: prepared)
                #expect(results.count == 3)
                #expect(try results[1].get().first?.int("n") == 1)
                #expect(try results[2].get().first?.int("n") == 0)
            }
        }
    }

    @Test(arguments: [false, true])
    func aFailedStatementRollsBackItsGroupOnly(prepared: Bool) async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.query("CREATE TABLE t (id int PRIMARY KEY)")
                let insert = "INSERT INTO t (id) VALUES ($1::int)"
                let results = try await connection.pipeline([
                    [PostgresStatement(insert, ["1"]), PostgresStatement(insert, ["1"]), PostgresStatement(insert, ["2"])],
                    [PostgresStatement(insert, ["3"])],
                    [PostgresStatement("SELECT * FROM no_such_table")],
                    [PostgresStatement("SELECT count(*) AS n, coalesce(sum(id), 0) AS s FROM t")],
                ], prepared: prepared)
                #expect(results.count == 6)
                #expect((try? results[0].get()) != nil)
                let duplicate = try #require(results[1].failureValue)
                #expect(duplicate.sqlState == "23505")
                #expect(results[2].failureValue != nil)  // skipped: its group had failed
                #expect((try? results[3].get()) != nil)
                #expect(results[4].failureValue?.sqlState == "42P01")
                let row = try #require(try results[5].get().first)
                #expect(try row.int("n") == 1)  // the first group rolled back; the second committed
                #expect(try row.int("s") == 3)
                // The connection is usable afterwards, in and out of pipeline mode.
                #expect(try await connection.query("SELECT 1 AS one").first?.int("one") == 1)
                let again = try await connection.pipeline([[PostgresStatement(insert, ["4"])]], prepared: prepared)
                #expect((try? again[0].get()) != nil)
            }
        }
    }

    /// The server ends the session in the middle of a round (here the backend terminates
    /// itself; in the database-fault scenario PostgreSQL was restarted): the connection must
    /// come out of the round as lost, whatever state libpq leaves it in, so the caller
    /// connects anew. Once, the relay kept such a connection and every later statement failed
    /// with "synchronous command execution functions are not allowed in pipeline mode".
    @Test(arguments: [false, true])
    func aSessionEndedInTheMiddleOfARoundIsALostConnection(prepared: Bool) async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let results = try await connection.pipeline([
                    [PostgresStatement("SELECT 1 AS one")],
                    [PostgresStatement("SELECT pg_terminate_backend(pg_backend_pid())")],
                    [PostgresStatement("SELECT 2 AS two")],
                ], prepared: prepared)
                #expect(results.count == 3)
                let failures = results.compactMap(\.failureValue)
                #expect(!failures.isEmpty)
                let lost = failures.filter(\.isConnectionError).count
                #expect(lost == failures.count, "\(failures)")
                var next: PostgresError?
                do {
                    try await connection.query("SELECT 3")
                } catch let error as PostgresError {
                    next = error
                }
                #expect(next?.isConnectionError == true, "\(String(describing: next))")
            }
        }
    }

    @Test func preparedStatementsAreReusedAndSeeNewParameters() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let echo = PostgresStatement("SELECT $1::text AS v, $2::bigint[] AS a", ["x", "{1,2}"])
                for round in 0..<3 {
                    var statement = echo
                    statement.parameters = ["round \(round)", nil]
                    let results = try await connection.pipeline([[statement], [echo]], prepared: true)
                    #expect(try results[0].get().first?.string("v") == "round \(round)")
                    #expect(try results[0].get().first?.optionalString("a") == nil)
                    #expect(try results[1].get().first?.string("v") == "x")
                }
                let count = try await connection.query("SELECT count(*) AS n FROM pg_prepared_statements")
                #expect(try count.first?.int("n") == 1)
                // A statement that does not parse fails with its own error, every time.
                for _ in 0..<2 {
                    let bad = try await connection.pipeline([[PostgresStatement("SELEC 1")]], prepared: true)
                    #expect(bad[0].failureValue?.sqlState == "42601")
                }
            }
        }
    }

    /// Prepared statements are found by a hash of a text's length and ends: texts as long as a
    /// round's, alike but for their middle, must still each run as themselves.
    @Test func longTextsThatDifferOnlyInTheMiddleArePreparedApart() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let padding = String(repeating: "-- the same comment on every line of both texts\n", count: 40)
                let one = PostgresStatement(padding + "SELECT $1::int + 1 AS n\n" + padding, ["1"], prepared: true)
                let two = PostgresStatement(padding + "SELECT $1::int + 2 AS n\n" + padding, ["1"], prepared: true)
                #expect(one.sql.utf8.count == two.sql.utf8.count)
                for _ in 0..<3 {
                    let results = try await connection.pipeline([[one, two], [two]])
                    #expect(try results.map { try $0.get().first?.int("n") } == [2, 3, 3])
                }
                let count = try await connection.query("SELECT count(*) AS n FROM pg_prepared_statements")
                #expect(try count.first?.int("n") == 2)
            }
        }
    }

    @Test func aNULByteInAParameterFailsThePipelineAndSendsNothing() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.execute("CREATE TABLE items (name text)")
                let insert = PostgresStatement("INSERT INTO items VALUES ($1::text)", ["fine"], prepared: true)
                var bad = insert
                bad.parameters = [String(repeating: "x", count: 5_000) + "\u{0}"]
                let results = try await connection.pipeline([[insert], [bad]])
                #expect(results.count == 2)
                for result in results {
                    #expect(result.failureValue?.code == .invalidArgument)
                }
                #expect(try await connection.query("SELECT count(*) AS n FROM items").first?.int("n") == 0)
            }
        }
    }

    @Test func onlyStatementsMarkedPreparedArePreparedInAnUnpreparedPipeline() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let marked = PostgresStatement("SELECT $1::int + 1 AS n", ["1"], prepared: true)
                let plain = PostgresStatement("SELECT $1::int + 2 AS n", ["1"])
                for _ in 0..<3 {
                    let results = try await connection.pipeline([[marked, plain]])
                    #expect(try results[0].get().first?.int("n") == 2)
                    #expect(try results[1].get().first?.int("n") == 3)
                }
                let prepared = try await connection.query("SELECT statement FROM pg_prepared_statements")
                #expect(prepared.map { $0.optionalString("statement") } == [marked.sql])
            }
        }
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
