import Foundation

/// Builds the webhook body: a CloudEvents 1.0 event in structured JSON mode.
public struct EventEnvelope: Sendable {
    public static let contentType = "application/cloudevents+json"

    /// The CloudEvents `source` attribute, the same for every event of one installation.
    public var source: String

    public init(source: String) {
        self.source = source
    }

    /// The JSON body for a change. The same bytes go to every subscriber.
    public func body(for change: ConsentChange) -> [UInt8] {
        var json = JSONWriter()
        json.beginObject()
        json.field("specversion", "1.0")
        json.field("id", change.eventID)
        json.field("source", source)
        json.field("type", change.eventType)
        json.field("subject", change.subject)
        json.field("time", Self.timestamp(change.changedAt))
        json.field("datacontenttype", "application/json")
        json.field("sequence", change.sequence)
        json.field("partitionkey", change.subject)
        json.key("data")
        json.beginObject()
        json.field("subject", change.subject)
        json.field("purpose", change.purpose)
        json.field("status", change.status)
        json.field("previous_status", change.previousStatus)
        json.field("source", change.source)
        json.field("changed_at", Self.timestamp(change.changedAt))
        json.field("sequence", change.sequence)
        json.field("operation", change.operation.rawValue)
        json.field("table", change.table)
        if let attributes = change.attributesJSON {
            json.field("attributes", rawJSON: attributes)
        }
        json.endObject()
        json.endObject()
        return json.bytes
    }

    /// RFC 3339 in UTC with microseconds, as PostgreSQL keeps them.
    public static func timestamp(_ date: Date) -> String {
        let totalMicros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        let seconds = Int(totalMicros.floorDiv(1_000_000))
        let micros = Int(totalMicros - Int64(seconds) * 1_000_000)
        // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days):
        // once per change, so no Calendar.
        let days = Int(Int64(seconds).floorDiv(86_400))
        let secondOfDay = seconds - days * 86_400
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3_600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(micros, 6))Z"
    }
}

extension Int64 {
    fileprivate func floorDiv(_ divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}
