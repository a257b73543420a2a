import Logging
import Synchronization

/// A log handler that keeps each line (level, message and metadata as text), for checking
/// what reached the logger.
public struct RecordingLogHandler: LogHandler {
    public final class Store: Sendable {
        private let lines = Mutex<[Line]>([])

        public init() {}

        /// The lines kept so far.
        public var all: [Line] { lines.withLock { $0 } }

        func append(_ line: Line) {
            lines.withLock { $0.append(line) }
        }
    }

    public struct Line: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: [String: String]
    }

    public let store: Store
    public var logLevel: Logger.Level = .trace
    public var metadata: Logger.Metadata = [:]

    public init(store: Store) {
        self.store = store
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { _, new in new }
        self.store.append(Line(level: event.level, message: event.message.description, metadata: merged.mapValues { $0.description }))
    }
}
