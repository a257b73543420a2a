import Foundation

/// Parses an HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
///
/// Written by hand over ASCII bytes: the value comes from any receiver, and Foundation's
/// `DateFormatter` on Linux stops the process on some non-ASCII input (found by fuzzing).
public enum RetryAfter {
    /// The delay the receiver asked for, or `nil` when the value is not understood.
    /// A date in the past gives zero.
    public static func parse(_ value: String, now: Date = Date()) -> Duration? {
        let bytes = Array(value.utf8.prefix(128))
        guard value.utf8.count <= 128 else { return nil }
        var start = 0
        var end = bytes.count
        while start < end, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
        while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
        let trimmed = Array(bytes[start..<end])
        guard !trimmed.isEmpty else { return nil }
        if trimmed.allSatisfy(isDigit) {
            // Very large values saturate rather than fail; the policy clamps them anyway.
            var seconds: Int64 = 0
            for digit in trimmed.prefix(12) { seconds = seconds * 10 + Int64(digit - 0x30) }
            return .seconds(seconds)
        }
        guard let epoch = parseHTTPDate(trimmed) else { return nil }
        let interval = Double(epoch) - now.timeIntervalSince1970
        return interval <= 0 ? .zero : .milliseconds(Int64((interval * 1000).rounded(.up)))
    }

    /// An HTTP-date (any of the three forms), or `nil`.
    public static func httpDate(_ text: String) -> Date? {
        guard text.utf8.count <= 128 else { return nil }
        return parseHTTPDate(Array(text.utf8)).map { Date(timeIntervalSince1970: TimeInterval($0)) }
    }

    /// Seconds since 1970 of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), or of the
    /// obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
    /// (`Sun Nov  6 08:49:37 1994`) forms that recipients must accept.
    static func parseHTTPDate(_ bytes: [UInt8]) -> Int64? {
        guard bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let fields = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let day: Int
        let month: Int
        var year: Int
        let time: (Int, Int, Int)
        if fields.count == 6, fields[0].hasSuffix(","), fields[5] == "GMT" {
            // IMF-fixdate: day-name, DD Mon YYYY HH:MM:SS GMT
            guard weekdays.contains(String(fields[0].dropLast())), fields[1].count == 2, fields[3].count == 4,
                  let d = number(fields[1]), let m = monthNumber(fields[2]), let y = number(fields[3]),
                  let t = clock(fields[4]) else { return nil }
            (day, month, year, time) = (d, m, y, t)
        } else if fields.count == 4, fields[0].hasSuffix(","), fields[3] == "GMT" {
            // RFC 850: Weekday, DD-Mon-YY HH:MM:SS GMT
            guard longWeekdays.contains(String(fields[0].dropLast())) else { return nil }
            let parts = fields[1].split(separator: "-", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3, parts[0].count == 2, parts[2].count == 2,
                  let d = number(parts[0]), let m = monthNumber(parts[1]), let yy = number(parts[2]),
                  let t = clock(fields[2]) else { return nil }
            // RFC 9110: a two-digit year more than 50 years in the future means the past century.
            year = 2000 + yy
            let current = Calendar(identifier: .gregorian).component(.year, from: Date())
            if year > current + 50 { year -= 100 }
            (day, month, time) = (d, m, t)
        } else if fields.count == 5 {
            // asctime: Wkd Mon D HH:MM:SS YYYY (the day padded with a space)
            guard weekdays.contains(fields[0]), fields[4].count == 4, (1...2).contains(fields[2].count),
                  let m = monthNumber(fields[1]), let d = number(fields[2]), let y = number(fields[4]),
                  let t = clock(fields[3]) else { return nil }
            (day, month, year, time) = (d, m, y, t)
        } else {
            return nil
        }
        guard (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day), (1...9999).contains(year),
              (0...23).contains(time.0), (0...59).contains(time.1), (0...60).contains(time.2) else { return nil }
        return daysFromCivil(year: year, month: month, day: day) * 86_400 + Int64(time.0 * 3600 + time.1 * 60 + time.2)
    }

    private static let weekdays: Set<String> = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    private static let longWeekdays: Set<String> = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    private static func number(_ text: String) -> Int? {
        guard !text.isEmpty, text.count <= 4, text.utf8.allSatisfy(isDigit) else { return nil }
        return Int(text)
    }

    private static func monthNumber(_ text: String) -> Int? {
        months.firstIndex(of: text).map { $0 + 1 }
    }

    private static func clock(_ text: String) -> (Int, Int, Int)? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, parts.allSatisfy({ $0.count == 2 }),
              let h = number(parts[0]), let m = number(parts[1]), let s = number(parts[2]) else { return nil }
        return (h, m, s)
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    private static func daysFromCivil(year: Int, month: Int, day: Int) -> Int64 {
        let y = Int64(month <= 2 ? year - 1 : year)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = Int64((month + 9) % 12)
        let doy = (153 * mp + 2) / 5 + Int64(day) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}
