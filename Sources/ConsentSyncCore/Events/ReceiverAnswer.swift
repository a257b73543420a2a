import Foundation

/// What a receiver said about a webhook beyond its status code: when the body is a JSON
/// object with a boolean `applied` (and optionally a string `reason`), that verdict becomes
/// part of the delivery's receipt. Anything else (no body, not JSON, other shapes) says nothing.
public struct ReceiverAnswer: Sendable, Equatable {
    public var applied: Bool
    /// At most ``maxReasonLength`` characters.
    public var reason: String?

    public static let maxReasonLength = 500

    public init(applied: Bool, reason: String? = nil) {
        self.applied = applied
        self.reason = reason
    }

    /// Reads `{"applied": true|false, "reason": "…"}`; `nil` for any other body. Never throws.
    public static func parse(_ body: [UInt8]) -> ReceiverAnswer? {
        guard let first = body.first(where: { !($0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D) }), first == UInt8(ascii: "{") else {
            return nil
        }
        guard let decoded = try? JSONDecoder().decode(Wire.self, from: Data(body)) else { return nil }
        return ReceiverAnswer(applied: decoded.applied, reason: decoded.reason.map { String($0.prefix(maxReasonLength)) })
    }

    /// The shape read: a JSON boolean `applied` (numbers and strings do not count), and a
    /// `reason` kept only when it is a string.
    private struct Wire: Decodable {
        var applied: Bool
        var reason: String?

        enum CodingKeys: String, CodingKey { case applied, reason }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            applied = try container.decode(Bool.self, forKey: .applied)
            reason = try? container.decodeIfPresent(String.self, forKey: .reason)
        }
    }
}
