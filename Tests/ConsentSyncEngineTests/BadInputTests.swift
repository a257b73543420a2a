import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// Bad input gets a clear error and changes nothing: subscriber URLs, consent rows, CLI
/// arguments. (Bad configuration has its own suite in ConsentSyncCLITests.)
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct BadInputTests {
    struct BadURL: Sendable, CustomTestStringConvertible {
        var label: String
        var url: String
        /// A fragment of the reason given.
        var reason: String
        var testDescription: String { label }
    }

    static let refusedURLs: [BadURL] = [
        BadURL(label: "empty", url: "", reason: "not an absolute URL"),
        BadURL(label: "words", url: "not a url", reason: "white space"),
        BadURL(label: "relative path", url: "/hooks/consent", reason: "not an absolute URL"),
        BadURL(label: "host without scheme", url: "hooks.example.com/consent", reason: "not an absolute URL"),
        BadURL(label: "scheme-relative", url: "//hooks.example.com/consent", reason: "not an absolute URL"),
        BadURL(label: "ftp", url: "ftp://hooks.example.com/consent", reason: "scheme 'ftp' is not allowed"),
        BadURL(label: "file", url: "file:///etc/passwd", reason: "scheme 'file' is not allowed"),
        BadURL(label: "javascript", url: "javascript:alert(1)", reason: "scheme 'javascript' is not allowed"),
        BadURL(label: "mailto", url: "mailto:privacy@example.com", reason: "scheme 'mailto' is not allowed"),
        BadURL(label: "no host", url: "https://", reason: "has no host"),
        BadURL(label: "port without host", url: "https://:443/hook", reason: "has no host"),
        BadURL(label: "user and password", url: "https://user:secret@hooks.example.com/consent", reason: "must not carry credentials"),
        BadURL(label: "user only", url: "https://token@hooks.example.com/consent", reason: "must not carry credentials"),
        BadURL(label: "overlong", url: "https://hooks.example.com/" + String(repeating: "a", count: 2100), reason: "longer than 2048 bytes"),
        BadURL(label: "space in host", url: "https://hooks example.com/", reason: "white space"),
        BadURL(label: "header injection", url: "https://hooks.example.com/x\r\nHost: evil.example", reason: "white space or control characters"),
        BadURL(label: "NUL byte", url: "https://hooks.example.com/\u{0}", reason: "control characters"),
        BadURL(label: "unicode white space", url: "https://hooks.example.com/\u{2003}x", reason: "white space"),
        BadURL(label: "fragment", url: "https://hooks.example.com/consent#top", reason: "#fragment"),
    ]

    @Test(arguments: refusedURLs)
    func subscriberURLsAreRefusedAndNothingIsInserted(_ bad: BadURL) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let error = await Self.addSubscriber(url: bad.url, on: database)
            let refusal = try #require(error as? SubscriberValidationError, "expected a refusal, got \(String(describing: error))")
            #expect(refusal.field == "url")
            #expect(refusal.reason.contains(bad.reason), "\(refusal)")
            #expect(refusal.description.hasPrefix("invalid subscriber url: "))
            let count = try await Self.subscriberCount(database)
            #expect(count == 0)
        }
    }

    /// Non-ASCII URLs (look-alike hosts, right-to-left overrides) and an out-of-range port.
    @Test(arguments: [
        "https://例え.jp/hook",
        "https://hooks.example.com/ünïcode",
        "https://hooks.exa\u{301}mple.com/consent",
        "https://hooks.example.com/\u{202E}gnp.exe",
        "https://hooks.example.com:99999/consent",
    ])
    func unicodeAndOutOfRangePortURLsAreRefused(_ url: String) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let error = await Self.addSubscriber(url: url, on: database)
            let count = try await Self.subscriberCount(database)
            #expect((error as? SubscriberValidationError)?.field == "url", "accepted: \(url)")
            #expect(count == 0)
        }
    }

    struct BadRow: Sendable, CustomTestStringConvertible {
        var label: String
        var subject: String?
        var purpose: String?
        var status: String?
        var sqlState: String
        /// The column the error must name.
        var column: String
        var testDescription: String { label }
    }

    static let refusedRows: [BadRow] = [
        BadRow(label: "NULL subject", subject: nil, purpose: "email", status: "granted", sqlState: "23502", column: "subject_id"),
        BadRow(label: "NULL purpose", subject: "s", purpose: nil, status: "granted", sqlState: "23502", column: "purpose"),
        BadRow(label: "NULL status", subject: "s", purpose: "email", status: nil, sqlState: "23502", column: "status"),
        BadRow(label: "empty subject", subject: "", purpose: "email", status: "granted", sqlState: "23514", column: "subject_id"),
        BadRow(label: "empty purpose", subject: "s", purpose: "", status: "granted", sqlState: "23514", column: "purpose"),
        BadRow(label: "empty status", subject: "s", purpose: "email", status: "", sqlState: "23514", column: "status"),
        BadRow(label: "unknown status", subject: "s", purpose: "email", status: "maybe", sqlState: "23514", column: "status"),
        BadRow(label: "upper-case status", subject: "s", purpose: "email", status: "GRANTED", sqlState: "23514", column: "status"),
        BadRow(label: "status with a trailing space", subject: "s", purpose: "email", status: "granted ", sqlState: "23514", column: "status"),
        BadRow(label: "status with SQL in it", subject: "s", purpose: "email", status: "granted'); DROP TABLE consent_sync.changes; --", sqlState: "23514", column: "status"),
    ]

    @Test(arguments: refusedRows)
    func badConsentRowsAreRefusedNamingTheColumn(_ bad: BadRow) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let error = await errorThrown {
                try await database.withConnection { connection in
                    try await connection.query(
                        "INSERT INTO consent_sync.consents (subject_id, purpose, status) VALUES ($1, $2, $3)",
                        [bad.subject, bad.purpose, bad.status]
                    )
                }
            }
            let refusal = try #require(error as? PostgresError, "expected a refusal, got \(String(describing: error))")
            #expect(refusal.sqlState == bad.sqlState, "\(refusal)")
            #expect(refusal.description.contains(bad.column), "\(refusal)")
            let changes = try await Self.count("consent_sync.changes", database)
            #expect(changes == 0)
        }
    }

    @Test func invalidUTF8IsRefused() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let error = await errorThrown {
                try await database.withConnection { connection in
                    try await connection.query(
                        "INSERT INTO consent_sync.consents (subject_id, purpose, status) VALUES (convert_from('\\xc3283f'::bytea, 'UTF8'), 'email', 'granted')"
                    )
                }
            }
            #expect((error as? PostgresError)?.sqlState == "22021", "\(String(describing: error))")
            let changes = try await Self.count("consent_sync.changes", database)
            #expect(changes == 0)
        }
    }

    /// Absurdly long values are refused with the column named (schema v5's length limits).
    @Test(arguments: [("subject_id", 20_000), ("purpose", 100_000), ("source", 2 << 20)])
    func veryLongValuesAreRefusedNamingTheColumn(column: String, length: Int) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let value = String(repeating: "x", count: length)
            var row = ["subject_id": "long", "purpose": "email", "status": "granted", "source": "test"]
            row[column] = value
            let error = await errorThrown {
                try await database.withConnection { connection in
                    try await connection.query(
                        "INSERT INTO consent_sync.consents (subject_id, purpose, status, source) VALUES ($1, $2, $3, $4)",
                        [row["subject_id"], row["purpose"], row["status"], row["source"]]
                    )
                }
            }
            #expect((error as? PostgresError)?.description.contains(column) == true, "stored a \(value.count)-character \(column)")
        }
    }

    /// Refused rows leave the relay alone: changes around them are delivered, in order, and
    /// nothing else reaches the receiver.
    @Test func refusedRowsLeaveTheRelayUnaffected() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                let writer = ConsentWriter(database: database)
                for (index, bad) in Self.refusedRows.enumerated() {
                    try await writer.set("good", "email", index.isMultiple(of: 2) ? .granted : .denied)
                    let error = await errorThrown {
                        try await database.withConnection { connection in
                            try await connection.query(
                                "INSERT INTO consent_sync.consents (subject_id, purpose, status) VALUES ($1, $2, $3)",
                                [bad.subject, bad.purpose, bad.status]
                            )
                        }
                    }
                    #expect(error != nil, "\(bad.label) was stored")
                }
                let requests = try await receiver.waitForRequests(count: Self.refusedRows.count, timeout: .seconds(20))
                try await Task.sleep(for: .milliseconds(300))
                #expect(receiver.requests.count == Self.refusedRows.count)
                let subjects = Set(requests.compactMap { try? eventSubject($0) })
                #expect(subjects == ["good"])
                let sequences = try arrivedEvents(requests).map(\.sequence)
                #expect(sequences == sequences.sorted())
            }
        }
    }

    /// A row whose webhook is larger than the HTTP client sends (a 2 MB source) must not hold
    /// up anything else, and must end with a recorded reason.
    @Test func anOversizedChangeDoesNotHoldUpOthers() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            // The default table refuses such a source (schema v5); an application's own table
            // may not, so lift the limit to make one.
            try await database.withConnection { connection in
                try await connection.query("ALTER TABLE consent_sync.consents DROP CONSTRAINT consents_source_length")
            }
            try await RelayFixture.withRelay(on: database) { _ in
                try await ConsentWriter(database: database).set("huge", "email", .granted, source: String(repeating: "x", count: 2 << 20))
                try await ConsentWriter(database: database).set("other", "email", .granted)
                let requests = try await receiver.waitForRequests(count: 1, timeout: .seconds(20))
                #expect(try eventSubject(requests[0]) == "other")
                try await waitUntil("the oversized delivery is dead") {
                    try await deliveryStates(database).contains("dead")
                }
                let rows = try await database.withConnection { connection in
                    try await connection.query(
                        "SELECT d.state, d.last_error FROM consent_sync.deliveries d WHERE d.subject = 'huge'"
                    )
                }
                #expect(rows.first?["state"] == "dead")
                #expect(rows.first?["last_error"]?.isEmpty == false, "\(rows.map { $0["last_error"] ?? "" })")
            }
        }
    }

    static func addSubscriber(url: String, on database: TestDatabase) async -> (any Error)? {
        await errorThrown {
            try await database.withConnection { connection in
                try await SubscriberStore.add(.init(name: "bad-url", url: url, secret: .generate()), on: connection)
            }
        }
    }

    static func subscriberCount(_ database: TestDatabase) async throws -> Int {
        try await count("consent_sync.subscribers", database)
    }

    static func count(_ table: String, _ database: TestDatabase) async throws -> Int {
        try await database.withConnection { connection in
            try await connection.query("SELECT count(*) AS n FROM \(table)").first?.int("n") ?? -1
        }
    }
}

/// Command-line arguments out of range: a usage error (exit 64) before anything is touched.
@Suite struct BadInputCLITests {
    static let add = ["subscriber", "add", "crm", "--url", "https://hooks.example.com/consent"]

    @Test(arguments: [
        add + ["--max-in-flight", "0"],
        add + ["--max-in-flight", "10001"],
        add + ["--max-in-flight", "many"],
        add + ["--timeout-ms", "-1"],
        add + ["--timeout-ms", "0"],
        add + ["--timeout-ms", "3600001"],
        add + ["--timeout-ms", "99999999999999999999"],
        ["subscriber", "add", "crm"],
        ["receive", "--port", "70000", "--secret-file", "/nonexistent"],
        ["receive", "--port", "-1", "--secret-file", "/nonexistent"],
        ["receive", "--port", "8080", "--secret-file", "/nonexistent", "--tolerance-seconds", "0"],
        ["deliveries", "list", "--limit", "0"],
        ["deliveries", "list", "--state", "lost"],
        ["deliveries", "retry"],
        ["no-such-command"],
    ])
    func outOfRangeArgumentsAreAUsageError(_ arguments: [String]) async throws {
        // No database in the environment: a usage error must come before any connection.
        let result = try await DaemonProcess.run(arguments, environment: ["CONSENT_SYNC_LOG_LEVEL": "info"], timeout: .seconds(30))
        #expect(result.status == 64, "\(arguments): status \(result.status), stderr: \(result.stderr)")
        #expect(result.stderr.contains("Error:") || result.stderr.contains("Usage:"), "\(result.stderr)")
    }
}
