import Crypto
import Foundation

/// Signs and verifies webhooks the Standard Webhooks way:
/// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
/// one space-separated signature per active secret.
public enum WebhookSigner {
    /// The value of the `webhook-signature` header for a message.
    public static func signature(id: String, timestamp: Int64, body: [UInt8], secrets: [SigningSecret]) -> String {
        secrets.map { "v1," + sign(id: id, timestamp: timestamp, body: body, secret: $0) }.joined(separator: " ")
    }

    static func sign(id: String, timestamp: Int64, body: [UInt8], secret: SigningSecret) -> String {
        var mac = secret.keyed
        var prefix = id
        prefix += "."
        prefix += String(timestamp)
        prefix += "."
        prefix.withUTF8 { mac.update(data: UnsafeRawBufferPointer($0)) }
        mac.update(data: body)
        return Data(mac.finalize()).base64EncodedString()
    }

    /// Verifies a received message; throws a ``WebhookVerificationError`` saying why it was refused.
    ///
    /// - Parameters:
    ///   - tolerance: how far `webhook-timestamp` may be from `now`, against replays (the spec suggests 5 minutes).
    public static func verify(
        id: String?,
        timestamp: String?,
        signatureHeader: String?,
        body: [UInt8],
        secrets: [SigningSecret],
        now: Date = Date(),
        tolerance: Duration = .seconds(300)
    ) throws(WebhookVerificationError) {
        guard let id, !id.isEmpty else { throw .missingHeader("webhook-id") }
        guard let timestamp else { throw .missingHeader("webhook-timestamp") }
        guard let signatureHeader, !signatureHeader.isEmpty else { throw .missingHeader("webhook-signature") }
        guard let seconds = Int64(timestamp) else { throw .invalidTimestamp }
        let skew = abs(now.timeIntervalSince1970 - Double(seconds))
        guard skew <= Double(tolerance.components.seconds) else { throw .timestampOutOfTolerance }

        for secret in secrets {
            let expected = Array(sign(id: id, timestamp: seconds, body: body, secret: secret).utf8)
            // Split on the bytes, not on Characters: a space followed by a combining mark is
            // one Character, and must not hide the signature before it (found by fuzzing).
            for candidate in signatureHeader.utf8.split(separator: UInt8(ascii: " ")) {
                let parts = candidate.split(separator: UInt8(ascii: ","), maxSplits: 1)
                guard parts.count == 2, Array(parts[0]) == Array("v1".utf8) else { continue }
                if constantTimeEquals(Array(parts[1]), expected) { return }
            }
        }
        throw .noMatchingSignature
    }

    private static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

public enum WebhookVerificationError: Error, Equatable, CustomStringConvertible, Sendable {
    case missingHeader(String)
    case invalidTimestamp
    case timestampOutOfTolerance
    case noMatchingSignature

    public var description: String {
        switch self {
        case .missingHeader(let name): "missing header \(name)"
        case .invalidTimestamp: "webhook-timestamp is not an integer"
        case .timestampOutOfTolerance: "webhook-timestamp is too far from the current time"
        case .noMatchingSignature: "no signature matches"
        }
    }
}
