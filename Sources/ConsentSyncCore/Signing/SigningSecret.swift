import Crypto
import Foundation

/// A Standard Webhooks signing secret: `whsec_` followed by base64 of the key bytes.
///
/// The description never shows the key, so a secret can be passed around and logged
/// by mistake without leaking.
public struct SigningSecret: Sendable, Hashable, CustomStringConvertible {
    public static let prefix = "whsec_"

    /// The raw HMAC key.
    public let key: [UInt8]
    /// HMAC-SHA256 already keyed with `key`, copied for each message: keying it per message
    /// (two SHA-256 blocks of padded key) was 2 % of the daemon's CPU in a drain.
    let keyed: HMAC<SHA256>

    public init(key: [UInt8]) {
        self.key = key
        self.keyed = HMAC(key: SymmetricKey(data: key))
    }

    public static func == (lhs: SigningSecret, rhs: SigningSecret) -> Bool { lhs.key == rhs.key }

    public func hash(into hasher: inout Hasher) { hasher.combine(key) }

    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    public init(parsing text: String) throws(SigningSecretError) {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let encoded = trimmed.hasPrefix(Self.prefix) ? String(trimmed.dropFirst(Self.prefix.count)) : trimmed
        guard let data = Data(base64Encoded: encoded), !data.isEmpty else {
            throw SigningSecretError(reason: "a signing secret must be 'whsec_' followed by base64 (as printed by 'consent-sync subscriber add')")
        }
        guard data.count >= 16 else {
            throw SigningSecretError(reason: "a signing secret must hold at least 16 bytes of key material (got \(data.count))")
        }
        self.init(key: Array(data))
    }

    /// A new secret of 32 random bytes from the system's CSPRNG.
    public static func generate() -> SigningSecret {
        let key = SymmetricKey(size: .bits256)
        return SigningSecret(key: key.withUnsafeBytes { Array($0) })
    }

    /// The `whsec_…` text to hand to the receiver. Shown once, stored in the database.
    public var encoded: String {
        Self.prefix + Data(key).base64EncodedString()
    }

    public var description: String { "whsec_<redacted>" }
}

public struct SigningSecretError: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public var description: String { "invalid signing secret: \(reason)" }
}
