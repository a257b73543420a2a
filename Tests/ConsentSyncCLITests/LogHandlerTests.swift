import ConsentSyncLogging
import Logging
import Synchronization
import Testing

/// Collects the lines a handler writes.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])

    var sink: LogSink {
        LogSink { line in self.lines.withLock { $0.append(line) } }
    }

    var all: [String] { lines.withLock { $0 } }
}

@Suite("Log handler")
struct LogHandlerTests {
    func makeLogger(_ control: LogLevelControl, _ captured: CapturedLines, redactor: SubjectRedactor? = nil, format: LogFormat = .logfmt) -> Logger {
        Logger(label: "test") { label in
            ConsentSyncLogHandler(label: label, control: control, formatter: LogLineFormatter(format: format), redactor: redactor, sink: captured.sink)
        }
    }

    @Test func levelChangesAtRuntimeReachExistingLoggers() {
        let control = LogLevelControl(.info)
        let captured = CapturedLines()
        let logger = makeLogger(control, captured)
        let copy = logger

        logger.debug("hidden")
        logger.info("shown 1")
        control.level = .debug  // what a SIGHUP reload does
        logger.debug("shown 2")
        copy.trace("hidden")
        copy.debug("shown 3")
        control.level = .error
        logger.warning("hidden")
        copy.error("shown 4")

        #expect(logger.logLevel == .error)
        #expect(captured.all.count == 4)
        #expect(captured.all.map { $0.contains("msg=\"shown") }.allSatisfy { $0 })
    }

    @Test func aLoggerWithItsOwnLevelKeepsIt() {
        let control = LogLevelControl(.info)
        let captured = CapturedLines()
        var quiet = makeLogger(control, captured)
        quiet.logLevel = .warning
        let shared = makeLogger(control, captured)

        control.level = .trace
        quiet.info("hidden")
        shared.info("shown")
        #expect(quiet.logLevel == .warning)
        #expect(captured.all.count == 1)
    }

    @Test func everyLevelRoundTripsThroughTheControl() {
        let control = LogLevelControl()
        #expect(control.level == .info)
        for level in Logger.Level.allCases {
            control.level = level
            #expect(control.level == level)
        }
    }

    @Test func handlerMetadataProviderAndCallMetadataAreMerged() {
        let control = LogLevelControl(.info)
        let captured = CapturedLines()
        var logger = Logger(label: "test") { label in
            ConsentSyncLogHandler(
                label: label, control: control, formatter: LogLineFormatter(format: .logfmt), sink: captured.sink,
                metadataProvider: Logger.MetadataProvider { ["instance": "i-1", "component": "provider"] }
            )
        }
        logger[metadataKey: "component"] = "relay"
        logger.info("m", metadata: ["subscriber": "crm", "component": "call"])
        #expect(captured.all.count == 1)
        #expect(captured.all.first?.hasSuffix(" level=info msg=m component=call instance=i-1 subscriber=crm\n") == true)
    }

    @Test func subjectMetadataIsHashedBeforeItIsWritten() {
        let control = LogLevelControl(.info)
        let captured = CapturedLines()
        let redactor = SubjectRedactor(key: Array("0123456789abcdef0123456789abcdef".utf8))
        let logger = makeLogger(control, captured, redactor: redactor, format: .json)

        logger.info("change", metadata: ["subject": "customer-1001"])
        logger.info("change", metadata: ["subject_id": "customer-1001"])
        logger.info("change", metadata: ["subject": .string(redactor.hash("customer-1001"))])  // already hashed: kept

        #expect(captured.all.count == 3)
        for line in captured.all {
            #expect(!line.contains("customer-1001"))
            #expect(line.contains(redactor.hash("customer-1001")))
        }
    }

    @Test func withoutARedactorSubjectsAreHiddenNotLeaked() {
        let captured = CapturedLines()
        let logger = makeLogger(LogLevelControl(.info), captured)
        logger.info("change", metadata: ["subject": "customer-1001"])
        #expect(captured.all.first?.contains("subject=[redacted]") == true)
        #expect(captured.all.first?.contains("customer-1001") == false)
    }
}

@Suite("Subject redactor")
struct SubjectRedactorTests {
    let keyA = Array("key-a-0123456789abcdef".utf8)
    let keyB = Array("key-b-0123456789abcdef".utf8)

    @Test func sameKeySameSubjectSamePseudonym() {
        let first = SubjectRedactor(key: keyA).hash("customer-1001")
        let second = SubjectRedactor(key: keyA).hash("customer-1001")
        #expect(first == second)
        #expect(SubjectRedactor.isPseudonym(first))
        #expect(first.count == 20)
        #expect(first.hasPrefix("sub_"))
    }

    @Test func differentKeysOrSubjectsGiveDifferentPseudonyms() {
        let redactor = SubjectRedactor(key: keyA)
        #expect(redactor.hash("customer-1001") != SubjectRedactor(key: keyB).hash("customer-1001"))
        #expect(redactor.hash("customer-1001") != redactor.hash("customer-1002"))
        #expect(SubjectRedactor.random().hash("customer-1001") != SubjectRedactor.random().hash("customer-1001"))
    }

    @Test func knownAnswer() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") = f7bc83f430538424…
        #expect(SubjectRedactor(key: Array("key".utf8)).hash("The quick brown fox jumps over the lazy dog") == "sub_f7bc83f430538424")
    }

    @Test(arguments: ["customer-1001", "a", "", "ab12cd34ef56ab78", "sub_0123456789abcdef", "alice@example.com"])
    func pseudonymNeverContainsTheSubject(subject: String) {
        let pseudonym = SubjectRedactor(key: keyA).hash(subject)
        #expect(SubjectRedactor.isPseudonym(pseudonym))
        if subject.count > 1 {
            #expect(!pseudonym.contains(subject))
        }
    }

    @Test func isPseudonymIsStrict() {
        #expect(!SubjectRedactor.isPseudonym("sub_0123"))
        #expect(!SubjectRedactor.isPseudonym("sub_0123456789ABCDEF"))
        #expect(!SubjectRedactor.isPseudonym("customer-1001"))
    }
}
