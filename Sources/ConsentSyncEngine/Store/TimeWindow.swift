import Foundation

/// A range of capture times, `since` included and `until` excluded, either end open: which
/// changes `deliveries list`, `deliveries retry` and `replay` act on.
///
/// The time is the change's capture time, the `time` of its CloudEvent, so that an operator
/// and a receiving team mean the same thing by "everything since 10:00".
public struct TimeWindow: Sendable, Equatable {
    public var since: Date?
    public var until: Date?

    /// Everything.
    public static let all = TimeWindow(uncheckedSince: nil, until: nil)

    /// - Throws: when both ends are given and `until` is not after `since`.
    public init(since: Date?, until: Date?) throws(TimeWindowError) {
        if let since, let until, until <= since {
            throw TimeWindowError(message: "--until (\(Self.format(until))) must be later than --since (\(Self.format(since)))")
        }
        self.init(uncheckedSince: since, until: until)
    }

    private init(uncheckedSince since: Date?, until: Date?) {
        self.since = since
        self.until = until
    }

    /// Parses `--since`/`--until`: an ISO 8601 time (`2026-11-29T10:15:00Z`, with fractional
    /// seconds or an offset such as `+01:00`; without one it is UTC), a date (`2026-11-29`,
    /// midnight UTC), or an age (`90s`, `15m`, `2h`, `3d`, `1w`: that long before `now`).
    public static func parseTime(_ text: String, option: String = "time", now: Date = Date()) throws(TimeWindowError) -> Date {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let age = parseAge(trimmed) {
            return now.addingTimeInterval(-age)
        }
        if let date = parseISO8601(trimmed) {
            return date
        }
        throw TimeWindowError(
            message: "\(option) '\(text.prefix(60))' is not a time: use ISO 8601 (2026-11-29T10:15:00Z, 2026-11-29) or an age such as 90m, 2h, 3d"
        )
    }

    /// `90s`, `15m`, `2h`, `3d`, `1w` in seconds; `nil` when `text` is not an age.
    static func parseAge(_ text: String) -> TimeInterval? {
        guard let unit = text.last, let count = Int(text.dropLast()), count >= 0, count <= 100_000 else { return nil }
        let seconds: TimeInterval
        switch unit {
        case "s": seconds = 1
        case "m": seconds = 60
        case "h": seconds = 3600
        case "d": seconds = 86_400
        case "w": seconds = 604_800
        default: return nil
        }
        return TimeInterval(count) * seconds
    }

    static func parseISO8601(_ text: String) -> Date? {
        guard text.count >= 10, text.count <= 40 else { return nil }
        // A space between date and time is as common in hand-typed times as a "T".
        var text = text
        if text.count > 10, let index = text.index(text.startIndex, offsetBy: 10, limitedBy: text.endIndex), text[index] == " " {
            text.replaceSubrange(index...index, with: "T")
        }
        let hasZone = text.count > 10 && (text.hasSuffix("Z") || text.hasSuffix("z") || text.dropFirst(11).contains("+") || text.dropFirst(11).contains("-"))
        if text.count > 10 && !hasZone { text += "Z" }
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        let layouts: [ISO8601DateFormatter.Options] = text.count == 10
            ? [[.withFullDate, .withDashSeparatorInDate]]
            : [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime]]
        for layout in layouts {
            formatter.formatOptions = layout
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }

    /// `2026-11-29T10:15:02Z`: how times are shown to operators.
    public static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}

/// A `--since`/`--until` that is not a time, or a window that ends before it starts.
public struct TimeWindowError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    public var description: String { message }
}
