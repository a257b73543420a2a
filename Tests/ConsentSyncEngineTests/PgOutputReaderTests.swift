@testable import ConsentSyncEngine
import Testing

/// The pgoutput messages the capture reader understands, built byte by byte as PostgreSQL 15
/// sends them (protocol version 1).
@Suite struct PgOutputReaderTests {
    static func be64(_ value: UInt64) -> [UInt8] { (0..<8).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }
    static func be32(_ value: UInt32) -> [UInt8] { (0..<4).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) } }

    static func begin(time: Int64) -> [UInt8] { [UInt8(ascii: "B")] + be64(0x100) + be64(UInt64(bitPattern: time)) + be32(42) }
    static func commit(end: UInt64) -> [UInt8] { [UInt8(ascii: "C"), 0] + be64(end &- 0x10) + be64(end) + be64(0) }
    static func message(_ prefix: String, _ content: String, transactional: Bool = true) -> [UInt8] {
        [UInt8(ascii: "M"), transactional ? 1 : 0] + be64(0x200) + Array(prefix.utf8) + [0] + be32(UInt32(content.utf8.count)) + Array(content.utf8)
    }

    @Test func takesOurMessagesPerCommittedTransactionAndSkipsTheRest() {
        var reader = PgOutputReader()
        let first = reader.feed([
            Self.begin(time: 1_000),
            Self.message("consent_sync", "(1,a)"),
            Self.message("consent_sync.mark", ""),                 // our mark: no change
            Self.message("other_app", "(9,z)"),                    // someone else's prefix
            Self.message("consent_sync", "(2,b)"),
            Self.message("consent_sync", "(3,c)", transactional: false),
            [UInt8(ascii: "R"), 0, 0, 0, 1],                         // a relation: skipped
        ])
        #expect(first.isEmpty, "nothing is complete before its commit")
        // The commit arrives in the next read; an empty transaction follows.
        let second = reader.feed([Self.commit(end: 0x1000), Self.begin(time: 2_000), Self.commit(end: 0x2000)])
        #expect(second == [
            .init(end: 0x1000, commitTime: 1_000, payloads: ["(1,a)", "(2,b)"]),
            .init(end: 0x2000, commitTime: 2_000, payloads: []),
        ])
    }

    @Test func truncatedMessagesAreSkippedNotTrusted() {
        var reader = PgOutputReader()
        var cut = Self.message("consent_sync", "(1,a)")
        cut.removeLast(3)                                            // shorter than its length says
        let done = reader.feed([Self.begin(time: 5), cut, [UInt8(ascii: "M"), 1], Self.commit(end: 0x10)])
        #expect(done == [.init(end: 0x10, commitTime: 5, payloads: [])])
    }
}
