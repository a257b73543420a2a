import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The daemon's `LogHandler`: one line per event on standard error, logfmt or JSON, with the
/// syslog priority prefix under journald, at the level held by a shared ``LogLevelControl``.
///
/// Metadata under the keys in ``subjectKeys`` (`subject`, `subject_id`) is replaced by its
/// ``SubjectRedactor`` pseudonym unless it already is one, so a subject id never reaches the log
/// in clear even when a caller forgets to hash it.
public struct ConsentSyncLogHandler: LogHandler {
    /// Metadata keys whose values are subject ids.
    public static let subjectKeys: Set<String> = ["subject", "subject_id"]

    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    private let control: LogLevelControl
    private let formatter: LogLineFormatter
    private let redactor: SubjectRedactor?
    private let sink: LogSink
    private var levelOverride: Logger.Level?

    public init(
        label: String,
        control: LogLevelControl,
        formatter: LogLineFormatter,
        redactor: SubjectRedactor? = nil,
        sink: LogSink = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        self.label = label
        self.control = control
        self.formatter = formatter
        self.redactor = redactor
        self.sink = sink
        self.metadataProvider = metadataProvider
    }

    /// The shared level of the ``LogLevelControl``, unless this one logger was given its own
    /// (`logger.logLevel = .warning`): that one then stays fixed, also across reloads.
    public var logLevel: Logger.Level {
        get { self.levelOverride ?? self.control.level }
        set { self.levelOverride = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = self.metadata
        if let provided = self.metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let metadata = event.metadata {
            merged.merge(metadata) { _, new in new }
        }
        for key in Self.subjectKeys {
            guard let value = merged[key] else { continue }
            merged[key] = self.pseudonym(for: value)
        }
        let line = self.formatter.line(
            level: event.level,
            message: event.message.description,
            metadata: merged,
            error: event.error,
            timestamp: .now()
        )
        self.sink.write(line)
    }

    private func pseudonym(for value: Logger.MetadataValue) -> Logger.MetadataValue {
        let text = LogLineFormatter.plainText(value)
        if SubjectRedactor.isPseudonym(text) {
            return .string(text)
        }
        // Without a redactor there is no key to hash with: hide the value rather than leak it.
        return .string(self.redactor?.hash(text) ?? "[redacted]")
    }
}

extension ConsentSyncLogHandler {
    /// Installs this handler for the whole process (`LoggingSystem.bootstrap`, so call it once).
    ///
    /// Under journald (``isJournald(environment:)``) lines get the `<N>` priority prefix and no
    /// timestamp. The level follows `control`; change `control.level` to change it everywhere.
    public static func bootstrap(
        format: LogFormat,
        control: LogLevelControl,
        redactor: SubjectRedactor? = nil,
        environment: [String: String]? = nil
    ) {
        let formatter = LogLineFormatter(format: format, journald: Self.isJournald(environment: environment))
        LoggingSystem.bootstrap { label in
            ConsentSyncLogHandler(label: label, control: control, formatter: formatter, redactor: redactor)
        }
    }

    /// True when standard error is the journald stream named by `JOURNAL_STREAM` (`device:inode`).
    ///
    /// systemd sets the variable for the service; a child whose stderr was redirected elsewhere
    /// inherits it, which is why the device and inode are compared with those of fd 2.
    /// `environment` nil means the process environment.
    public static func isJournald(environment: [String: String]? = nil) -> Bool {
        let value: String?
        if let environment {
            value = environment["JOURNAL_STREAM"]
        } else {
            value = getenv("JOURNAL_STREAM").map { String(cString: $0) }
        }
        guard let value, let stream = JournalStream(value) else { return false }
        var status = stat()
        guard fstat(2, &status) == 0 else { return false }
        return stream.matches(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
    }
}

/// The value of `JOURNAL_STREAM`: `<device>:<inode>` of the stream journald gave the service.
public struct JournalStream: Sendable, Equatable {
    public var device: UInt64
    public var inode: UInt64

    /// Nil unless `text` is two decimal numbers separated by `:`.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return nil }
        self.device = device
        self.inode = inode
    }

    public func matches(device: UInt64, inode: UInt64) -> Bool {
        self.device == device && self.inode == inode
    }
}
