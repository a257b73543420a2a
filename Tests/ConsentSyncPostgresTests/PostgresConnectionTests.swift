import ConsentSyncPostgres
import ConsentSyncTestKit
import Logging
import Synchronization
import Testing

@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG*"), .timeLimit(.minutes(2)))
struct PostgresConnectionTests {
    @Test func parametersRoundTrip() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let tricky = #"it's "quoted" \ $1 -- ; DROP TABLE x"#
                let unicode = "Grüße, 世界 🌍 \u{301}e"
                let rows = try await connection.query(
                    "SELECT $1::text AS tricky, $2::text AS nothing, $3::text AS unicode, $4::bigint AS big, $5::int AS small, $6::float8 AS ratio, $7::bool AS flag, $8::int AS missing",
                    [tricky, nil, unicode, "9007199254740993", "-42", "0.25", "true", nil]
                )
                #expect(rows.count == 1)
                #expect(rows.columns == ["tricky", "nothing", "unicode", "big", "small", "ratio", "flag", "missing"])
                let row = try #require(rows.first)
                #expect(try row.string("tricky") == tricky)
                #expect(row["nothing"] == nil)
                #expect(row.optionalString("nothing") == nil)
                #expect(row[2] == unicode)
                #expect(try row.int64("big") == 9_007_199_254_740_993)
                #expect(try row.int("small") == -42)
                #expect(try row.double("ratio") == 0.25)
                #expect(try row.bool("flag"))
                #expect(try row.optionalInt("missing") == nil)
                #expect(try row.optionalInt("small") == -42)
                #expect(rows.affectedRows == 1)
            }
        }
    }

    @Test func typedHelpersNameTheColumnNotTheValue() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let row = try #require(try await connection.query("SELECT 'secret@example.com'::text AS email, NULL::int AS n").first)
                let notInt = #expect(throws: PostgresError.self) { try row.int("email") }
                #expect(notInt?.code == .invalidResult)
                #expect(notInt?.message.contains("email") == true)
                #expect(notInt?.message.contains("secret@example.com") == false)
                #expect(throws: PostgresError.self) { try row.string("n") }
                #expect(throws: PostgresError.self) { try row.string("no_such_column") }
                #expect(throws: PostgresError.self) { try row.optionalInt("no_such_column") }
                #expect(throws: PostgresError.self) { try row.bool("email") }
                // By position, as the relay reads its claims: the same errors, naming the column.
                let rows = try await connection.query("SELECT 'secret@example.com'::text AS email, NULL::int AS n")
                #expect(try rows.index(of: "n") == 1)
                #expect(throws: PostgresError.self) { try rows.index(of: "no_such_column") }
                let notIntAt = #expect(throws: PostgresError.self) { try row.int(at: 0) }
                #expect(notIntAt?.message == #"column "email" is not an integer"#)
                let nullAt = #expect(throws: PostgresError.self) { try row.string(at: 1) }
                #expect(nullAt?.message == #"column "n" is NULL"#)
                #expect(row.optionalString(at: 1) == nil)
            }
        }
    }

    @Test func sqlErrorsCarrySQLStateAndMessage() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let missing = await #expect(throws: PostgresError.self) {
                    try await connection.query("SELECT * FROM no_such_table WHERE id = $1::int", ["1"])
                }
                #expect(missing?.code == .queryFailed)
                #expect(missing?.sqlState == "42P01")
                #expect(missing?.message == #"relation "no_such_table" does not exist"#)
                #expect(missing?.query == "SELECT * FROM no_such_table WHERE id = $1::int")
                #expect(missing?.isConnectionError == false)
                #expect(missing?.description == #"query failed: relation "no_such_table" does not exist (SQLSTATE 42P01)"#)

                try await connection.execute("CREATE TABLE people (email text PRIMARY KEY)")
                try await connection.query("INSERT INTO people VALUES ($1)", ["ann@example.com"])
                let duplicate = await #expect(throws: PostgresError.self) {
                    try await connection.query("INSERT INTO people VALUES ($1)", ["ann@example.com"])
                }
                #expect(duplicate?.sqlState == "23505")
                #expect(duplicate?.message.contains("people_pkey") == true)
                #expect(duplicate?.detail?.contains("ann@example.com") == true)
                // Row data stays out of the description.
                #expect(duplicate?.description.contains("ann@example.com") == false)

                // Still usable afterwards.
                #expect(try await connection.query("SELECT count(*) AS n FROM people").first?.int("n") == 1)
                #expect(connection.isConnected)
            }
        }
    }

    @Test func nulBytesAreRejectedBeforeReachingLibpq() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let error = await #expect(throws: PostgresError.self) {
                    try await connection.query("SELECT $1::text", ["a\u{0}b"])
                }
                #expect(error?.code == .invalidArgument)
                #expect(throws: PostgresError.self) { _ = try connection.escapeIdentifier("a\u{0}b") }
                let one = try await connection.query("SELECT 1 AS one").first?.int("one")
                #expect(one == 1)
            }
        }
    }

    @Test func executeRunsAMultiStatementScript() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.execute(
                    """
                    CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
                    INSERT INTO items (name) VALUES ('a'), ('b');
                    INSERT INTO items (name) VALUES ('c');
                    DO $$ BEGIN RAISE NOTICE 'script done'; END $$;
                    """
                )
                let rows = try await connection.query("SELECT name FROM items ORDER BY id")
                #expect(rows.map { $0["name"] } == ["a", "b", "c"])
                let updated = try await connection.query("UPDATE items SET name = upper(name) WHERE name <> $1", ["b"])
                #expect(updated.affectedRows == 2)
                #expect(updated.commandTag == "UPDATE 2")

                let failing = await #expect(throws: PostgresError.self) {
                    try await connection.execute("INSERT INTO items (name) VALUES ('d'); SELECT 1/0;")
                }
                #expect(failing?.sqlState == "22012")
                // The script ran as one implicit transaction, so 'd' is gone too.
                #expect(try await connection.query("SELECT count(*) AS n FROM items").first?.int("n") == 3)
            }
        }
    }

    @Test func copyIsRefusedAndTheConnectionSurvives() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.execute("CREATE TABLE t (x int)")
                let copyIn = await #expect(throws: PostgresError.self) { try await connection.execute("COPY t FROM STDIN") }
                #expect(copyIn?.code == .invalidResult)
                let copyOut = await #expect(throws: PostgresError.self) { try await connection.query("COPY (SELECT 1) TO STDOUT") }
                #expect(copyOut?.code == .invalidResult)
                #expect(try await connection.query("SELECT 2 AS two").first?.int("two") == 2)
            }
        }
    }

    @Test func transactionsCommitAndRollBack() async throws {
        struct Oops: Error {}
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.execute("CREATE TABLE ledger (entry text)")
                let value = try await connection.withTransaction { transaction in
                    try await transaction.query("INSERT INTO ledger VALUES ($1)", ["kept"])
                    return 7
                }
                #expect(value == 7)

                await #expect(throws: Oops.self) {
                    try await connection.withTransaction { transaction in
                        try await transaction.query("INSERT INTO ledger VALUES ($1)", ["dropped"])
                        throw Oops()
                    }
                }
                await #expect(throws: PostgresError.self) {
                    try await connection.withTransaction { transaction in
                        try await transaction.query("INSERT INTO ledger VALUES ($1)", ["dropped too"])
                        try await transaction.query("SELECT 1/0")
                    }
                }
                // Another connection sees exactly the committed row; this one is out of any transaction.
                try await database.withOpenConnection { other in
                    let rows = try await other.query("SELECT entry FROM ledger")
                    #expect(rows.map { $0["entry"] } == ["kept"])
                }
                #expect(try await connection.query("SELECT pg_current_xact_id_if_assigned() IS NULL AS idle").first?.bool("idle") == true)
            }
        }
    }

    @Test func escapeIdentifierQuotesQuotesAndSpaces() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                let name = #"weird "table" name"#
                let quoted = try connection.escapeIdentifier(name)
                #expect(quoted == #""weird ""table"" name""#)
                #expect(try connection.escapeIdentifier("Ünïcode") == #""Ünïcode""#)
                try await connection.execute("CREATE TABLE \(quoted) (\(try connection.escapeIdentifier("a b")) int)")
                try await connection.query("INSERT INTO \(quoted) VALUES (1)")
                let rows = try await connection.query("SELECT relname FROM pg_class WHERE relname = $1", [name])
                #expect(rows.first?["relname"] == name)
                // The server's own quoting agrees wherever quoting is needed.
                for identifier in [name, "Upper", "with space", "select", "a\"b\"\"c", "ünï"] {
                    let server = try await connection.query("SELECT quote_ident($1) AS q", [identifier]).first?["q"]
                    #expect(try connection.escapeIdentifier(identifier) == server)
                }
            }
        }
    }

    @Test func noticesGoToTheLoggerNotStderr() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let store = RecordingLogHandler.Store()
            let logger = Logger(label: "test") { _ in RecordingLogHandler(store: store) }
            let connection = try await PostgresConnection.connect(database.configuration, logger: logger)
            try await connection.execute("DO $$ BEGIN RAISE WARNING 'careful: %', 42; END $$")
            await connection.close()
            #expect(store.all.contains { $0.level == .debug && $0.message.contains("careful: 42") })
        }
    }

    @Test func connectFailureDoesNotRevealThePassword() async throws {
        for connectionString in [
            "host=127.0.0.1 port=1 user=postgres password=sekrit123 connect_timeout=5",
            "postgresql://postgres:sekrit123@127.0.0.1:1/postgres?connect_timeout=5",
            "postgresql://postgres:sekrit123%zz@127.0.0.1:1/postgres",
        ] {
            let error = await #expect(throws: PostgresError.self) {
                try await PostgresConnection.connect(PostgresConfiguration(connectionString: connectionString), logger: testLogger)
            }
            #expect(error?.code == .connectionFailed)
            #expect(error?.message.isEmpty == false)
            #expect(error?.message.contains("sekrit123") == false)
            #expect(error?.description.contains("sekrit123") == false)
        }
        // A password given as an override, and a server that rejects it.
        let wrongPassword = await #expect(throws: PostgresError.self) {
            try await PostgresConnection.connect(
                PostgresConfiguration(connectionString: "host=127.0.0.1 port=1").with("password", "sekrit123"),
                logger: testLogger
            )
        }
        #expect(wrongPassword?.message.contains("127.0.0.1") == true)
        #expect(wrongPassword?.message.contains("sekrit123") == false)
    }

    @Test func cancellingAQueryIsPromptAndLeavesTheConnectionUsable() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await database.withOpenConnection { observer in
                    let sleeper = Task { try await connection.query("SELECT pg_sleep(30)") }
                    // Wait until the statement really runs, so that the cancel request is what stops it.
                    let running = try await eventually {
                        try await observer.query(
                            "SELECT 1 FROM pg_stat_activity WHERE pid = $1::int AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                            [String(connection.backendPID)]
                        ).count == 1
                    }
                    #expect(running)
                    let cancelledAt = ContinuousClock.now
                    sleeper.cancel()
                    let result = await sleeper.result
                    #expect(ContinuousClock.now - cancelledAt < .seconds(15))  // not the 30 s sleep
                    #expect(throws: PostgresError.self) { try result.get() }
                    if case .failure(let error as PostgresError) = result {
                        #expect(error.code == .cancelled)
                        #expect(error.sqlState == "57014")
                        #expect(!error.isConnectionError)
                    }
                }
                #expect(connection.isConnected)
                #expect(try await connection.query("SELECT 41 + 1 AS answer").first?.int("answer") == 42)
            }
        }
    }

    @Test func queryInACancelledTaskDoesNotRun() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { connection in
                try await connection.execute("CREATE TABLE marks (x int)")
                let task = Task {
                    withUnsafeCurrentTask { $0?.cancel() }
                    return try await connection.query("INSERT INTO marks VALUES (1)")
                }
                let result = await task.result
                #expect(throws: PostgresError.self) { try result.get() }
                #expect(try await connection.query("SELECT count(*) AS n FROM marks").first?.int("n") == 0)
            }
        }
    }

    @Test func connectionsDoNotBlockEachOther() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let tag = "overlap-" + randomSuffix()
            let count = 4
            var opened: [PostgresConnection] = []
            for _ in 0..<count {
                let connection = try await database.connect(applicationName: tag)
                // Should the statements not overlap, the one sent would wait for the lock below
                // until this ends it: the test then fails instead of hanging.
                try await connection.execute("SET lock_timeout = '45s'")
                opened.append(connection)
            }
            let connections = opened
            let observer = try await database.connect()
            // Every statement waits for a lock the observer holds: all of them waiting at once
            // proves they run at the same time, however late a loaded machine starts each one.
            let key = Int64.random(in: 1...Int64.max)
            try await observer.query("SELECT pg_advisory_lock(\(key))")
            async let waits: Void = withThrowingTaskGroup(of: Void.self) { group in
                for connection in connections {
                    group.addTask { try await connection.query("SELECT pg_advisory_xact_lock_shared(\(key))") }
                }
                try await group.waitForAll()
            }
            var peak = 0
            let sawAll = try await eventually(timeout: .seconds(30), every: .milliseconds(25)) {
                let waiting = try await observer.query(
                    """
                    SELECT count(*) AS n FROM pg_stat_activity
                    WHERE application_name = $1 AND state = 'active' AND wait_event_type = 'Lock' AND wait_event = 'advisory'
                    """,
                    [tag]
                ).first?.int("n") ?? 0
                peak = max(peak, waiting)
                return waiting == count
            }
            try await observer.query("SELECT pg_advisory_unlock(\(key))")
            #expect(sawAll, "at most \(peak) of \(count) statements ran at once")
            try await waits
            for connection in connections {
                await connection.close()
            }
            await observer.close()
        }
    }

    @Test func closeIsIdempotentAndLaterQueriesFail() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let connection = try await database.connect()
            #expect(connection.isConnected)
            #expect(connection.backendPID > 0)
            #expect(connection.serverVersion >= 130_000)
            await connection.close()
            await connection.close()
            #expect(!connection.isConnected)
            let error = await #expect(throws: PostgresError.self) { try await connection.query("SELECT 1") }
            #expect(error?.code == .connectionClosed)
        }
    }

    @Test func closingCancelsARunningStatement() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let connection = try await database.connect()
            let sleeper = Task { try await connection.query("SELECT pg_sleep(30)") }
            let running = try await database.withOpenConnection { observer in
                try await eventually {
                    try await observer.query(
                        "SELECT 1 FROM pg_stat_activity WHERE pid = $1::int AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                        [String(connection.backendPID)]
                    ).count == 1
                }
            }
            #expect(running)
            let closing = ContinuousClock.now
            await connection.close()
            let result = await sleeper.result
            #expect(ContinuousClock.now - closing < .seconds(15))  // not the 30 s sleep
            #expect(throws: PostgresError.self) { try result.get() }
            #expect(!connection.isConnected)
        }
    }

    @Test func droppingAConnectionClosesIt() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            try await database.withOpenConnection { observer in
                var connection: PostgresConnection? = try await database.connect(applicationName: "dropped")
                let pid = try #require(connection?.backendPID)
                try await connection?.query("SELECT 1")
                connection = nil
                let gone = try await eventually {
                    try await observer.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1::int", [String(pid)]).isEmpty
                }
                #expect(gone)
            }
        }
    }

    @Test func aTerminatedBackendIsReportedAsAConnectionError() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let connection = try await database.connect(applicationName: "victim")
            #expect(try await database.terminateBackends(applicationName: "victim") == 1)
            let error = await #expect(throws: PostgresError.self) { try await connection.query("SELECT 1") }
            #expect(error?.isConnectionError == true)
            #expect(!connection.isConnected)
            await connection.close()
        }
    }

    @Test func overridesWinOverTheConnectionString() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let configuration = database.configuration.with("application_name", "first").with("application_name", "second")
            let connection = try await PostgresConnection.connect(configuration, logger: testLogger)
            let row = try #require(try await connection.query("SELECT current_database() AS db, current_setting('application_name') AS app, current_setting('client_encoding') AS enc").first)
            #expect(row["db"] == database.name)
            #expect(row["app"] == "second")
            #expect(row["enc"] == "UTF8")
            await connection.close()
        }
    }
}
