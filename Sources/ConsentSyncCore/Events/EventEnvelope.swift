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
        let time = Self.timestamp(change.changedAt)
        var json = JSONWriter()
        json.beginObject()
        json.field("specversion", "1.0")
        json.field("id", change.eventID)
        json.field("source", source)
        json.field("type", change.eventType)
        json.field("subject", change.subject)
        json.field("time", time)
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
        json.field("changed_at", time)
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
        let seconds = totalMicros.floorDiv(1_000_000)
        return UTCTimestamp.format(seconds: seconds, fraction: totalMicros - seconds * 1_000_000, digits: 6)
    }
}

extension Int64 {
    fileprivate func floorDiv(_ divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}
