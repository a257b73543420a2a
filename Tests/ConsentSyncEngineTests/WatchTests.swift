import ConsentSyncCore
import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// `watch add`: the application's own consent table, with its own column names and status
/// words, captured with only the columns allowed.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct WatchTests {
    /// An application table unlike the default one: composite key of an integer and a uuid,
    /// yes/no/revoked statuses, personal columns that must not leave the database.
    static let applicationTable = """
        CREATE SCHEMA app;
        CREATE TABLE app.marketing_prefs (
            tenant       integer NOT NULL,
            customer_ref uuid    NOT NULL,
            channel      text    NOT NULL,
            opted        text,
            email        text,
            phone        text,
            internal     text,
            touched_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, customer_ref, channel)
        );
        """

    static let customer = "0b7e1d8a-3c55-4f0e-9a51-6f1c2f0d9e11"

    static func definition(purposeColumn: String = "channel") -> WatchDefinition {
        WatchDefinition(
            schema: "app", table: "marketing_prefs",
            subjectColumns: ["tenant", "customer_ref"], purposeColumn: purposeColumn, statusColumn: "opted",
            columns: ["email"], statusMap: ["yes": "granted", "no": "denied", "revoked": "withdrawn"]
        )
    }

    static func triggerCount(_ connection: PostgresConnection) async throws -> Int {
        let rows = try await connection.query("SELECT count(*) AS n FROM pg_trigger WHERE tgrelid = 'app.marketing_prefs'::regclass AND NOT tgisinternal")
        return try rows.first?.int("n") ?? -1
    }

    /// In both capture modes: the trigger's row, or its WAL message (`capture logical`).
    @Test(arguments: CaptureMode.allCases)
    func anExistingTableIsCapturedWithMappedStatusesAndOnlyAllowedColumns(capture: CaptureMode) async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { try await $0.execute(Self.applicationTable) }

            // A typo is refused, says which column and which exist, and installs nothing.
            let typo = await errorThrown {
                try await database.withConnection { try await WatchStore.add(Self.definition(purposeColumn: "chanel"), on: $0) }
            }
            let message = "\(typo.map { "\($0)" } ?? "no error")"
            #expect(typo is WatchError)
            #expect(message.contains("chanel") && message.contains("does not exist"), "\(message)")
            #expect(message.contains("channel"), "the hint lists the table's columns: \(message)")
            #expect(try await database.withConnection(Self.triggerCount) == 0)
            let before = try await database.withConnection(WatchStore.list(on:))
            #expect(before.count == 1, "only the default table is watched")

            if capture == .logical {
                try await database.withConnection { try await CaptureStore.setMode(.logical, on: $0) }
            }
            let watch = try await database.withConnection { try await WatchStore.add(Self.definition(), on: $0) }
            #expect(try await database.withConnection(Self.triggerCount) == 2, "consent_sync_capture and consent_sync_capture_update")
            let listed = try await database.withConnection(WatchStore.list(on:))
            #expect(listed.map(\.definition.qualifiedName).sorted() == ["app.marketing_prefs", "consent_sync.consents"])
            #expect(listed.first { $0.id == watch.id }?.definition == Self.definition())

            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await database.withConnection { connection in
                    try await connection.execute("""
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted, email, phone, internal)
                        VALUES (7, '\(Self.customer)', 'newsletter', 'yes', 'ada@example.com', '+44 20 7946 0000', 'VIP');
                        UPDATE app.marketing_prefs SET touched_at = now() + interval '1 minute';  -- not captured: nothing sent
                        UPDATE app.marketing_prefs SET phone = '+44 20 7946 0001';               -- not captured either
                        UPDATE app.marketing_prefs SET opted = 'no';
                        UPDATE app.marketing_prefs SET opted = 'revoked';
                        DELETE FROM app.marketing_prefs;
                        """)
                }
                let requests = try await receiver.waitForRequests(count: 4)
                try await Task.sleep(for: .milliseconds(500))
                #expect(receiver.requests.count == 4, "changes of columns that are not captured were sent")
                let events = try requests.map { try #require(try JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any]) }
                #expect(events.map { $0["type"] as? String } == ["consent.granted", "consent.denied", "consent.withdrawn", "consent.deleted"])
                let data = events.compactMap { $0["data"] as? [String: Any] }
                #expect(data.map { $0["status"] as? String } == ["granted", "denied", "withdrawn", nil])
                #expect(data.map { $0["previous_status"] as? String } == [nil, "granted", "denied", "withdrawn"])
                #expect(events.allSatisfy { $0["subject"] as? String == "7:\(Self.customer)" })
                #expect(data.allSatisfy { $0["purpose"] as? String == "newsletter" && $0["table"] as? String == "app.marketing_prefs" })
                #expect(data.allSatisfy { ($0["attributes"] as? [String: String]) == ["email": "ada@example.com"] })
                for request in requests {
                    #expect(!request.bodyString.contains("+44") && !request.bodyString.contains("VIP"), "a column not allowed was sent: \(request.bodyString)")
                }
            }

            // Captured while no daemon runs, then the watch is removed: the change is completed
            // with the watch's status map before the map goes (the fan-out would not know 'no').
            try await database.withConnection { connection in
                try await connection.execute("INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (9, '\(Self.customer)', 'sms', 'no')")
            }

            // Removed: the trigger is gone and later changes are not captured.
            let removed = try await database.withConnection { try await WatchStore.remove(schema: "app", table: "marketing_prefs", on: $0) }
            #expect(removed)
            #expect(try await database.withConnection(Self.triggerCount) == 0)
            let completed = try await database.withConnection { connection in
                try await connection.query("SELECT event_type, status, problem FROM consent_sync.captured")
            }
            #expect(completed.count == 1)
            #expect(completed.first?.optionalString("event_type") == "consent.denied")
            #expect(completed.first?.optionalString("status") == "denied")
            #expect(completed.first?.optionalString("problem") == nil)
            let captured = try await database.withConnection { connection in
                try await connection.execute("INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (8, gen_random_uuid(), 'sms', 'yes')")
                return try await connection.query(
                    """
                    SELECT (SELECT count(*) FROM consent_sync.changes WHERE table_name = 'app.marketing_prefs')
                         + (SELECT count(*) FROM consent_sync.captured WHERE table_name = 'app.marketing_prefs') AS n
                    """
                ).first?.int("n")
            }
            #expect(captured == 5, "the insert after 'watch remove' was captured")
            let removedTwice = try await database.withConnection { try await WatchStore.remove(schema: "app", table: "marketing_prefs", on: $0) }
            #expect(removedTwice == false)
        }
    }

    @Test func rowsThatCannotMakeAnEventAreRecordedDeadWithTheReasonAndOthersFlow() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute(Self.applicationTable.replacingOccurrences(of: "PRIMARY KEY (tenant, customer_ref, channel)", with: "id serial PRIMARY KEY")
                    .replacingOccurrences(of: "integer NOT NULL", with: "integer").replacingOccurrences(of: "uuid    NOT NULL", with: "uuid").replacingOccurrences(of: "text    NOT NULL", with: "text"))
                try await WatchStore.add(Self.definition(), on: connection)
            }
            let receiver = try await WebhookReceiver.start()
            defer { Task { await receiver.stop() } }
            try await RelayFixture.addSubscriber("crm", url: receiver.url, on: database)
            try await RelayFixture.withRelay(on: database) { _ in
                try await database.withConnection { connection in
                    try await connection.execute("""
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (1, '\(Self.customer)', 'email', 'maybe');
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (NULL, '\(Self.customer)', 'email', 'yes');
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (2, '\(Self.customer)', '', 'yes');
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (4, '\(Self.customer)', repeat('x', 200), 'yes');
                        INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted) VALUES (3, '\(Self.customer)', 'email', 'yes');
                        """)
                }
                let requests = try await receiver.waitForRequests(count: 1)
                #expect(requests.first?.bodyString.contains("\"3:\(Self.customer)\"") == true)
                try await waitUntil("the three bad rows are dead") {
                    try await deliveryCounts(database, subscriber: "crm") == ["dead": 4, "delivered": 1]
                }
                let reasons = try await database.withConnection { connection in
                    try await connection.query("SELECT last_error FROM consent_sync.deliveries WHERE state = 'dead' ORDER BY change_id").map { try $0.string("last_error") }
                }
                #expect(reasons.count == 4)
                #expect(reasons.first?.contains("status 'maybe' in column opted is not one of no, revoked, yes") == true, "\(reasons)")
                #expect(reasons.dropFirst().first?.contains("subject id (column tenant, customer_ref) is NULL or empty") == true, "\(reasons)")
                #expect(reasons.dropFirst(2).first?.contains("purpose (column channel) is NULL or empty") == true, "\(reasons)")
                #expect(reasons.last?.contains("the purpose is 200 characters long; at most 128 are accepted") == true, "\(reasons)")
                #expect(receiver.requests.count == 1, "a change that cannot make an event was sent")
            }
        }
    }

    /// The capture function runs with the schema owner's rights (SECURITY DEFINER) but, to stay
    /// cheap, without a `SET search_path`: every name in it is qualified. A writer whose
    /// search_path puts its own `left`, `||` and `text` before pg_catalog changes nothing.
    @Test func aWritersSearchPathCannotRedirectTheCaptureFunction() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute(Self.applicationTable)
                _ = try await WatchStore.add(Self.definition(), on: connection)
                try await connection.execute(
                    """
                    CREATE SCHEMA evil;
                    CREATE FUNCTION evil.left(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked-left' $$;
                    CREATE FUNCTION evil.cat(text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked-cat' $$;
                    CREATE OPERATOR evil.|| (leftarg = text, rightarg = text, function = evil.cat);
                    CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
                    CREATE OPERATOR evil.= (leftarg = text, rightarg = text, function = evil.texteq);
                    CREATE TYPE evil.text AS (hijacked integer);
                    """
                )
            }
            try await database.withConnection { connection in
                try await connection.execute(
                    """
                    BEGIN;
                    SET LOCAL search_path = evil, pg_catalog, public;
                    INSERT INTO app.marketing_prefs (tenant, customer_ref, channel, opted, email) VALUES (3, '\(Self.customer)', 'email', 'yes', 'a@example.org');
                    DELETE FROM app.marketing_prefs;
                    INSERT INTO consent_sync.consents (subject_id, purpose, status) VALUES ('plain', 'sms', 'denied');
                    COMMIT;
                    """
                )
            }
            let rows = try await database.withConnection { connection in
                try await connection.query("SELECT operation, subject, purpose, status, previous_status, attributes::text AS attributes FROM consent_sync.captured ORDER BY id")
            }
            let seen = try rows.map { row in
                [try row.string("operation"), try row.string("subject"), try row.string("purpose"),
                 row.optionalString("status") ?? "-", row.optionalString("previous_status") ?? "-", row.optionalString("attributes") ?? "-"]
            }
            #expect(seen == [
                ["INSERT", "3:\(Self.customer)", "email", "yes", "-", #"{"email": "a@example.org"}"#],
                ["DELETE", "3:\(Self.customer)", "email", "-", "yes", #"{"email": "a@example.org"}"#],
                ["INSERT", "plain", "sms", "denied", "-", "-"],
            ], "\(seen)")
        }
    }

    @Test func hostileNamesAreQuotedOrRefusedClearly() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { connection in
                try await connection.execute(#"CREATE TABLE public."Odd ""Prefs""; --" ("Subject Id" text, "pur;pose" text, "st" text)"#)
            }
            let odd = WatchDefinition(schema: "public", table: #"Odd "Prefs"; --"#, subjectColumns: ["Subject Id"], purposeColumn: "pur;pose", statusColumn: "st")
            try await database.withConnection { try await WatchStore.add(odd, on: $0) }
            let captured = try await database.withConnection { connection in
                try await connection.execute(#"INSERT INTO public."Odd ""Prefs""; --" VALUES ('s1', 'email', 'granted')"#)
                return try await connection.query("SELECT subject, purpose, status FROM consent_sync.captured").map { try $0.string("subject") + "/" + $0.string("purpose") + "/" + $0.string("status") }
            }
            #expect(captured == ["s1/email/granted"])

            for (table, expected) in [
                ("x; DROP TABLE consent_sync.changes", "does not exist"),
                ("consent_sync.changes\" --", "does not exist"),
            ] {
                let definition = WatchDefinition(schema: "public", table: table, subjectColumns: ["a"], purposeColumn: "b", statusColumn: "c")
                let error = await errorThrown { try await database.withConnection { try await WatchStore.add(definition, on: $0) } }
                #expect("\(error.map { "\($0)" } ?? "")".contains(expected), "\(String(describing: error))")
            }
            let wrongType = WatchDefinition(schema: "consent_sync", table: "changes", subjectColumns: ["attributes"], purposeColumn: "purpose", statusColumn: "status")
            let error = await errorThrown { try await database.withConnection { try await WatchStore.add(wrongType, on: $0) } }
            #expect("\(error.map { "\($0)" } ?? "")".contains("has type jsonb, which cannot hold a subject id"), "\(String(describing: error))")
            let outbox = try await database.withConnection { try await $0.query("SELECT count(*) AS n FROM consent_sync.captured").first?.int("n") }
            #expect(outbox == 1, "the outbox is intact")

            #expect(throws: WatchError.self) { try WatchDefinition.parseStatusMap("yes=granted,no=nope") }
            #expect(throws: WatchError.self) { try WatchDefinition.parseStatusMap("yes") }
            #expect(throws: WatchError.self) { try WatchDefinition.parseTableName("a.b.c") }
            let quoted = try WatchDefinition.parseTableName(#""my.schema"."T""#)
            #expect(quoted.schema == "my.schema" && quoted.table == "T")
            let plain = try WatchDefinition.parseTableName("prefs")
            #expect(plain.schema == "public" && plain.table == "prefs")
        }
    }

    @Test func theCommandLineSaysWhatIsWrongAndListsWhatIsWatched() async throws {
        try await RelayFixture.withMigratedDatabase { database in
            try await database.withConnection { try await $0.execute(Self.applicationTable) }
            let environment = database.daemonEnvironment
            let base = ["watch", "add", "app.marketing_prefs", "--subject-column", "tenant,customer_ref", "--purpose-column", "channel", "--status-column", "opted"]

            let typo = try await DaemonProcess.run(base + ["--columns", "emial"], environment: environment)
            #expect(typo.status == 1)
            #expect(typo.stderr.contains("column emial (captured column) does not exist in table app.marketing_prefs"), "\(typo.stderr)")
            #expect(typo.stderr.contains("its columns are: tenant, customer_ref, channel, opted, email, phone, internal, touched_at"), "\(typo.stderr)")
            let badMap = try await DaemonProcess.run(base + ["--status-map", "yes=granted,no=nein"], environment: environment)
            #expect(badMap.status != 0)
            #expect(badMap.stderr.contains("'nein' is not granted, denied or withdrawn"), "\(badMap.stderr)")
            let badName = try await DaemonProcess.run(["watch", "add", "a.b.c", "--subject-column", "x", "--purpose-column", "y", "--status-column", "z"], environment: environment)
            #expect(badName.status != 0)
            #expect(badName.stderr.contains("is not SCHEMA.TABLE"), "\(badName.stderr)")

            let added = try await DaemonProcess.run(base + ["--status-map", "yes=granted,no=denied", "--columns", "email"], environment: environment)
            #expect(added.status == 0, "\(added.stderr)")
            #expect(added.stdout.contains("watching app.marketing_prefs"))
            let again = try await DaemonProcess.run(base, environment: environment)
            #expect(again.status == 1)
            #expect(again.stderr.contains("already watched"), "\(again.stderr)")
            let list = try await DaemonProcess.run(["watch", "list"], environment: environment)
            #expect(list.stdout.contains("app.marketing_prefs") && list.stdout.contains("tenant+customer_ref") && list.stdout.contains("no=denied,yes=granted"), "\(list.stdout)")
            #expect(list.stdout.contains("consent_sync.consents"))
            let removed = try await DaemonProcess.run(["watch", "remove", "app.marketing_prefs"], environment: environment)
            #expect(removed.status == 0 && removed.stdout.contains("no longer watching"), "\(removed.stderr)")
            let twice = try await DaemonProcess.run(["watch", "remove", "app.marketing_prefs"], environment: environment)
            #expect(twice.status == 1 && twice.stderr.contains("is not watched"), "\(twice.stderr)")
        }
    }
}
