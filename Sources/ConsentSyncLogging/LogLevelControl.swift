import Logging
import Synchronization

/// The process-wide log level, shared by every ``ConsentSyncLogHandler`` and changeable while
/// the daemon runs (a SIGHUP reload sets ``level``; the next log call sees it).
public final class LogLevelControl: Sendable {
    private let code: Atomic<UInt8>

    public init(_ level: Logger.Level = .info) {
        self.code = Atomic(Self.code(of: level))
    }

    /// The level below which events are dropped.
    public var level: Logger.Level {
        get { Self.level(for: self.code.load(ordering: .relaxed)) }
        set { self.code.store(Self.code(of: newValue), ordering: .relaxed) }
    }

    private static func code(of level: Logger.Level) -> UInt8 {
        UInt8(Logger.Level.allCases.firstIndex(of: level) ?? 0)
    }

    private static func level(for code: UInt8) -> Logger.Level {
        let levels = Logger.Level.allCases
        return levels[min(Int(code), levels.count - 1)]
    }
}
