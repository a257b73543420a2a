/// RFC 3339 text in UTC (`2026-11-29T10:15:02.123456Z`) from seconds since 1970, without
/// `Calendar` or a time zone database: event times are formatted once per change and log
/// timestamps once per line.
public enum UTCTimestamp {
    /// - Parameters:
    ///   - seconds: seconds since 1970-01-01T00:00:00Z (negative before it).
    ///   - fraction: the fraction of the second in units of 10^-`digits` s (0 ..< 10^`digits`).
    ///   - digits: fractional digits printed (3 for milliseconds, 6 for microseconds).
    public static func format(seconds: Int64, fraction: Int64, digits: Int) -> String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = civilDate(daysSinceEpoch: days)
        // Written into the string's own storage: one allocation, where joining the parts as
        // strings made a dozen (this runs once per change and once per log line). A field
        // takes at most max(width, 20) bytes (Int64 with its sign), and one separator.
        return String(unsafeUninitializedCapacity: 6 * 21 + max(digits, 20) + 1) { buffer in
            var count = 0
            func put(_ value: Int64, _ width: Int, _ separator: Unicode.Scalar) {
                count = pad(value, width, into: buffer, at: count)
                buffer[count] = UInt8(ascii: separator)
                count += 1
            }
            put(year, 4, "-")
            put(month, 2, "-")
            put(day, 2, "T")
            put(secondOfDay / 3600, 2, ":")
            put(secondOfDay % 3600 / 60, 2, ":")
            put(secondOfDay % 60, 2, ".")
            put(fraction, digits, "Z")
            return count
        }
    }

    /// Writes `value` in decimal, left-padded with zeros to `width` (before any minus sign,
    /// as the format always did), at `start`; returns the index after it.
    private static func pad(_ value: Int64, _ width: Int, into buffer: UnsafeMutableBufferPointer<UInt8>, at start: Int) -> Int {
        var digitCount = 1
        var rest = value.magnitude / 10
        while rest > 0 {
            digitCount += 1
            rest /= 10
        }
        let textCount = digitCount + (value < 0 ? 1 : 0)
        var index = start
        for _ in textCount..<max(width, textCount) {
            buffer[index] = UInt8(ascii: "0")
            index += 1
        }
        if value < 0 {
            buffer[index] = UInt8(ascii: "-")
            index += 1
        }
        var magnitude = value.magnitude
        for position in stride(from: index + digitCount - 1, through: index, by: -1) {
            buffer[position] = UInt8(ascii: "0") + UInt8(magnitude % 10)
            magnitude /= 10
        }
        return index + digitCount
    }

    /// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day since 1970.
    static func civilDate(daysSinceEpoch: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = daysSinceEpoch + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthPrime = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthPrime + 2) / 5 + 1
        let month = monthPrime < 10 ? monthPrime + 3 : monthPrime - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
