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
        return pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2)
            + "T" + pad(secondOfDay / 3600, 2) + ":" + pad(secondOfDay % 3600 / 60, 2) + ":" + pad(secondOfDay % 60, 2)
            + "." + pad(fraction, digits) + "Z"
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

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }
}
