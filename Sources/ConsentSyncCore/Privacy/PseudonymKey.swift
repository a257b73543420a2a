import Crypto
import Foundation

/// A subscriber's key for pseudonymous subject ids: the subscriber receives
/// `HMAC-SHA256(key, subject id)` in hex instead of the id, the same for every event of one
/// subject, different from what any other subscriber receives, and not reversible without
/// the key (which never leaves consent-sync).
public struct PseudonymKey: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// 32 random bytes from the system's CSPRNG.
    public static func generate() -> PseudonymKey {
        PseudonymKey(bytes: SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })
    }

    /// The subject id as this subscriber sees it: 64 lower-case hex digits.
    public func pseudonym(for subject: String) -> String {
        Self.hex(HMAC<SHA256>.authenticationCode(for: Array(subject.utf8), using: SymmetricKey(data: bytes)))
    }

    static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { "PseudonymKey(<redacted>)" }
}
