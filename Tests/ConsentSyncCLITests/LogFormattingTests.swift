import ConsentSyncLogging
import Foundation
import Logging
import Testing

@Suite("Log line formatting")
struct LogFormattingTests {
    let time = LogTimestamp(seconds: 1_795_947_302, nanoseconds: 123_456_789)  // 2026-11-29T10:15:02.123Z

    @Test func timestampIsRFC3339UTCWithMilliseconds() {
        #expect(time.description == "2026-11-29T10:15:02.123Z")
        #expect(LogTimestamp(seconds: 0).description == "1970-01-01T00:00:00.000Z")
        #expect(LogTimestamp(seconds: 951_782_400).description == "2000-02-29T00:00:00.000Z")
        #expect(LogTimestamp(seconds: -1, nanoseconds: 999_000_000).description == "1969-12-31T23:59:59.999Z")
    }

    @Test func logfmtPutsFixedFieldsFirstAndSortsMetadata() {
        let line = LogLineFormatter(format: .logfmt).line(
            level: .info,
            message: "delivery failed; will retry",
            metadata: ["subscriber": "crm", "status": .stringConvertible(503), "delivery": "42"],
            timestamp: time
        )
        #expect(line == "ts=2026-11-29T10:15:02.123Z level=info msg=\"delivery failed; will retry\" delivery=42 status=503 subscriber=crm\n")
    }

    @Test(arguments: [
        ("plain", "plain"),
        ("", "\"\""),
        ("two words", "\"two words\""),
        ("a=b", "\"a=b\""),
        ("say \"hi\"", "\"say \\\"hi\\\"\""),
        ("back\\slash", "\"back\\\\slash\""),
        ("line1\nline2", "\"line1\\nline2\""),
        ("cr\rlf", "\"cr\\rlf\""),
        ("tab\there", "\"tab\\there\""),
        ("bell\u{07}", "\"bell\\u0007\""),
        ("sep\u{2028}x", "\"sep\\u2028x\""),
        ("grüße", "grüße"),
    ])
    func logfmtQuotesAndEscapes(value: String, expected: String) {
        let line = LogLineFormatter(format: .logfmt).line(level: .info, message: "m", metadata: ["k": .string(value)], timestamp: time)
        #expect(line == "ts=2026-11-29T10:15:02.123Z level=info msg=m k=\(expected)\n")
    }

    @Test func everyEventIsExactlyOneLine() {
        let nasty = "a\nb\r\nc\u{0B}d\u{0C}e\u{85}f\u{2028}g\u{2029}h"
        for format in LogFormat.allCases {
            for journald in [false, true] {
                let line = LogLineFormatter(format: format, journald: journald).line(
                    level: .error,
                    message: nasty,
                    metadata: [nasty: .string(nasty), "nested": .dictionary(["x": .array([.string(nasty)])])],
                    error: Failure(text: nasty),
                    timestamp: time
                )
                #expect(line.hasSuffix("\n"))
                let body = line.dropLast()
                #expect(!body.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0.value == 0x2028 || $0.value == 0x2029 }, "\(format) \(journald): \(line)")
            }
        }
    }

    @Test func logfmtKeysAreSanitisedAndNestedDictionariesFlattened() {
        let line = LogLineFormatter(format: .logfmt).line(
            level: .debug,
            message: "m",
            metadata: ["bad key=x": "v", "http": .dictionary(["status": "503", "url": "https://x/y z"]), "list": .array(["a", "b c"])],
            timestamp: time
        )
        #expect(line == "ts=2026-11-29T10:15:02.123Z level=debug msg=m bad_key_x=v http.status=503 http.url=\"https://x/y z\" list=\"[a,b c]\"\n")
    }

    @Test func reservedKeysInMetadataDoNotOverwriteTheFixedFields() {
        let line = LogLineFormatter(format: .logfmt).line(level: .info, message: "real", metadata: ["msg": "fake", "level": "critical"], timestamp: time)
        #expect(line == "ts=2026-11-29T10:15:02.123Z level=info msg=real _level=critical _msg=fake\n")
    }

    @Test func errorOfTheEventIsAField() {
        let line = LogLineFormatter(format: .logfmt).line(level: .error, message: "m", metadata: [:], error: Failure(text: "boom"), timestamp: time)
        #expect(line == "ts=2026-11-29T10:15:02.123Z level=error msg=m error=boom\n")
    }

    @Test func jsonIsOneParseableObjectPerLine() throws {
        let line = LogLineFormatter(format: .json).line(
            level: .warning,
            message: "quote \" backslash \\ newline \n end",
            metadata: ["subscriber": "crm", "status": .stringConvertible(503), "nested": .dictionary(["a": .array(["1", "2"])])],
            timestamp: time
        )
        #expect(line.hasPrefix("{\"ts\":\"2026-11-29T10:15:02.123Z\",\"level\":\"warning\",\"msg\":"))
        #expect(line.filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["msg"] as? String == "quote \" backslash \\ newline \n end")
        #expect(object["status"] as? String == "503")
        #expect(object["subscriber"] as? String == "crm")
        #expect((object["nested"] as? [String: Any])?["a"] as? [String] == ["1", "2"])
    }

    @Test(arguments: [
        (Logger.Level.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
    ])
    func journaldLinesStartWithThePriorityAndHaveNoTimestamp(level: Logger.Level, priority: Int) throws {
        let logfmt = LogLineFormatter(format: .logfmt, journald: true).line(level: level, message: "m", metadata: ["k": "v"], timestamp: time)
        #expect(logfmt == "<\(priority)>level=\(level.rawValue) msg=m k=v\n")
        let json = LogLineFormatter(format: .json, journald: true).line(level: level, message: "m", metadata: [:], timestamp: time)
        #expect(json == "<\(priority)>{\"level\":\"\(level.rawValue)\",\"msg\":\"m\"}\n")
    }

    @Test func journalStreamIsDeviceColonInode() {
        #expect(JournalStream("8:12345") == JournalStream("8:12345"))
        #expect(JournalStream("8:12345")?.matches(device: 8, inode: 12345) == true)
        #expect(JournalStream("8:12345")?.matches(device: 8, inode: 1) == false)
        #expect(JournalStream("") == nil)
        #expect(JournalStream("8") == nil)
        #expect(JournalStream("a:b") == nil)
        // Set, but naming a stream that is not our stderr (a child with redirected output).
        #expect(!ConsentSyncLogHandler.isJournald(environment: ["JOURNAL_STREAM": "0:0"]))
        #expect(!ConsentSyncLogHandler.isJournald(environment: [:]))
    }
}

struct Failure: Error, CustomStringConvertible {
    var text: String
    var description: String { text }
}
