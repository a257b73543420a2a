@testable import ConsentSyncEngine
import ConsentSyncPostgres
import ConsentSyncTestKit
import Foundation
import Testing

/// The `text[]` literals the relay binds for a round's results: whatever a receiver answered,
/// PostgreSQL must read back exactly the strings that went in (NUL, which text cannot hold,
/// as U+FFFD).
@Suite(.enabled(if: TestDatabase.isConfigured, "needs DATABASE_URL or PG* (run 'make test')"))
struct ArrayLiteralTests {
    static let awkward: [String?] = [
        "", "plain", "with space", "comma,inside", "{braces}", "quote \" inside", "back\\slash", "\\\"", "NULL", nil,
        "\"\u{301} quote before a combining mark", "\\\u{301}", "trailing backslash \\", "ünïcödé 🦄 \u{0604}:",
        "line\nbreak\ttab\r", "nul\u{0}inside", "\u{0}", "nul before a combining mark \u{0}\u{301}",
    ]

    /// NUL scalars as U+FFFD. Scalar by scalar: a `String` replacement compares Characters, and
    /// misses a NUL that a combining mark follows (a random string in CI had one).
    static func nulReplaced(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0 == "\u{0}" ? "\u{FFFD}" : $0 }))
    }

    @Test func postgresReadsBackEveryStringAsItWent() async throws {
        try await TestDatabase.withTemporaryDatabase { database in
            let connection = try await database.connect()
            let rows = try await connection.query(
                "SELECT ordinality, value FROM unnest($1::text[]) WITH ORDINALITY AS a(value, ordinality) ORDER BY ordinality",
                [postgresArrayOfOptionals(Self.awkward)]
            )
            let readBack = rows.map { $0.optionalString("value") }
            let expected = Self.awkward.map { $0.map(Self.nulReplaced) }
            #expect(readBack == expected)
            // Random bytes decoded as UTF-8, as a receiver's answer would be.
            var generator = SystemRandomNumberGenerator()
            let random: [String?] = (0..<200).map { _ in
                String(decoding: (0..<Int.random(in: 0...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }, as: UTF8.self)
            }
            let randomRows = try await connection.query(
                "SELECT value FROM unnest($1::text[]) WITH ORDINALITY AS a(value, ordinality) ORDER BY ordinality",
                [postgresArrayOfOptionals(random)]
            )
            #expect(randomRows.map { $0.optionalString("value") } == random.map { $0.map(Self.nulReplaced) })
            await connection.close()
        }
    }
}
