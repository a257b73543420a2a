import ConsentSyncCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A wall-clock instant, printed as RFC 3339 UTC with milliseconds: `2026-11-29T10:15:02.123Z`.
public struct LogTimestamp: Sendable, Equatable, CustomStringConvertible {
    /// Seconds since 1970-01-01T00:00:00Z.
    public var seconds: Int64
    /// 0 ..< 1_000_000_000.
    public var nanoseconds: Int32

    public init(seconds: Int64, nanoseconds: Int32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// The current time (`CLOCK_REALTIME`).
    public static func now() -> LogTimestamp {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return LogTimestamp(seconds: Int64(time.tv_sec), nanoseconds: Int32(time.tv_nsec))
    }

    public var description: String {
        let millisecond = Int64(max(0, min(999_999_999, self.nanoseconds)) / 1_000_000)
        return UTCTimestamp.format(seconds: self.seconds, fraction: millisecond, digits: 3)
    }
}
